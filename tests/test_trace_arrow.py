"""The pyarrow trace reader (workload/trace.py: arrow_trace) returns what the pandas reader returns, or None.

Each case is read both ways: the fast reader must give the pandas reader's trace field for field (arrays
equal bit for bit, dtypes too), or None, and None whenever the pandas reader refuses the file (its error
message is then the one the user sees, unchanged). The well-formed cases must take the fast path.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.workload import trace as tr
from kavier_opendc.workload.trace import arrow_trace
from test_trace import BAD_CSV, BAD_JSONL

SHARED = Path(__file__).resolve().parents[1] / "traces"


def _pandas_trace(path: Path, fmt: str | None = None, keep: bool = False) -> tr.Trace:
    df, lay, src = tr._read_table(path, fmt)
    return tr._build(df, lay, src, keep)


def _assert_same(fast: tr.Trace, slow: tr.Trace) -> None:
    for f in ("arrival_s", "num_input_tokens", "num_output_tokens", "session_id", "n"):
        a, b = getattr(fast, f), getattr(slow, f)
        assert (a is None) == (b is None), f
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, f
            assert np.array_equal(a, b), f  # exact: no tolerance
    for f in ("hash_ids", "input_tokens", "hash_block_size", "source", "format", "timed"):
        assert getattr(fast, f) == getattr(slow, f), f


def _agree(path: Path, fmt: str | None = None, keep: bool = False) -> tr.Trace | None:
    """The fast reader's result after checking it against the pandas reader's."""
    fast = arrow_trace(path, fmt, keep)
    try:
        slow = _pandas_trace(path, fmt, keep)
    except KavierInputError:
        assert fast is None, f"the pandas reader refuses {path.name} but the fast one read it"
        return None
    if fast is not None:
        _assert_same(fast, slow)
    return fast


AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
KV = "num_input_tokens,num_output_tokens,arrival_time_s\n"
#: (name, CSV text, whether the fast reader must read it)
CSV_CASES = [
    ("azure", AZ + "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n", True),
    (
        "azure_mixed_precision",
        AZ + "2023-11-16 18:15:46,5,1\n2023-11-16T18:15:46.5,5,1\n2023-11-16 18:15:47.123456789,5,1\n",
        True,
    ),
    ("azure_zone", AZ + "2023-11-16 18:15:46+01:00,5,1\n2023-11-16 18:15:47+01:00,5,1\n", False),
    ("azure_date_only", AZ + "2023-11-16,5,1\n2023-11-17,5,1\n", False),
    ("azure_spaces", AZ + " 2023-11-16 18:15:46,5,1\n", False),
    ("azure_feb30", AZ + "2023-02-30 18:15:46,5,1\n", False),
    ("azure_long_span", AZ + "2023-01-01 00:00:00.5,5,1\n2023-09-01 00:00:00.25,5,1\n", False),
    ("kavier_floats", KV + "5,1,0.1\n6,2,0.30000000000000004\n7,3,1e3\n", True),
    ("kavier_int_times", KV + "5,1,0\n6,2,7\n", True),
    ("kavier_float_counts", KV + "5.0,1,0\n6,2,1\n", False),
    ("kavier_quoted", KV + '"5",1,0\n6,"2",1\n', True),
    ("kavier_blank_lines", KV + "5,1,0\n\n6,2,1\n\n", True),
    ("kavier_crlf", KV.replace("\n", "\r\n") + "5,1,0\r\n6,2,1\r\n", True),
    ("kavier_header_spaces", " num_input_tokens , num_output_tokens,arrival_time_s\n5,1,0\n", True),
    ("kavier_extra_column", "num_input_tokens,num_output_tokens,turn_id,ts\n5,1,x,3\n6,1,y,1\n", True),
    ("kavier_short_row_unused_column", "num_input_tokens,num_output_tokens,ts\n5,1,3\n6,1\n", False),
    ("kavier_bom", "\ufeff" + KV + "5,1,0\n", False),
    ("kavier_trailing_comma", "num_input_tokens,num_output_tokens,,\n5,1,,\n", False),
    ("kavier_value_spaces", KV + "5, 1,0\n", True),
    ("kavier_inf_time", KV + "5,1,0\n5,1,inf\n", False),
    ("kavier_plus", KV + "+5,1,0\n", False),
    ("sessions_int", "num_input_tokens,num_output_tokens,session_id\n5,1,7\n5,1,01\n5,1,1\n5,1,+7\n", True),
    ("sessions_text", "num_input_tokens,num_output_tokens,session_id\n5,1,a\n5,1,01\n5,1,1\n5,1,a\n", True),
    ("sessions_floats", "num_input_tokens,num_output_tokens,session_id\n5,1,1.5\n5,1,2\n", False),
    ("sessions_bools", "num_input_tokens,num_output_tokens,session_id\n5,1,True\n5,1,false\n", False),
    ("sessions_na", "num_input_tokens,num_output_tokens,session_id\n5,1,a\n5,1,NA\n", False),
    ("sessions_na_only", "num_input_tokens,num_output_tokens,session_id\n5,1,None\n5,1,null\n", False),
    ("n", "num_input_tokens,num_output_tokens,n\n5,1,2\n5,1,1\n", True),
    ("hash_ids", 'num_input_tokens,num_output_tokens,hash_ids\n600,1,"[1, 2]"\n5,1,\n5,1,"[]"\n5,1,"  "\n', True),
    ("hash_ids_na", 'num_input_tokens,num_output_tokens,hash_ids\n600,1,"[1, 2]"\n5,1,NA\n', False),
    ("hash_ids_all_empty", "num_input_tokens,num_output_tokens,hash_ids\n5,1,\n5,1,\n", True),
    ("hash_ids_count", 'num_input_tokens,num_output_tokens,hash_ids\n5,1,"[1, 2]"\n', False),
    ("tokens", 'num_input_tokens,num_output_tokens,input_tokens\n2,1,"[4, 5]"\n1,1,\n', True),
    ("mooncake_csv", "timestamp,input_length,output_length\n0,5,1\n1500,6,1\n", True),
    ("vidur", "num_prefill_tokens,num_decode_tokens\n4,4\n8,2\n", True),
    ("overlong", KV + "9000000,2000000,0\n", False),
    ("only_header", KV, False),
    ("empty", "", False),
]


@pytest.mark.parametrize("name,text,fast", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_csv_cases_agree(tmp_path, name, text, fast):
    path = tmp_path / f"{name}.csv"
    path.write_text(text, encoding="utf-8", newline="")
    got = _agree(path)
    assert (got is not None) == fast


@pytest.mark.parametrize("name,text,row,needles", BAD_CSV, ids=[c[0] for c in BAD_CSV])
def test_every_bad_csv_goes_to_the_pandas_reader(tmp_path, name, text, row, needles):
    path = tmp_path / f"bad_{name}.csv"
    path.write_text(text)
    assert arrow_trace(path, None, False) is None


@pytest.mark.parametrize("name,lines,where,needles", BAD_JSONL, ids=[c[0] for c in BAD_JSONL])
def test_every_bad_jsonl_goes_to_the_pandas_reader(tmp_path, name, lines, where, needles):
    path = tmp_path / f"bad_{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert arrow_trace(path, None, False) is None


def test_overlong_rows_kept_when_asked(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text(KV + "9000000,2000000,0\n5,1,1\n")
    got = _agree(path, keep=True)
    assert got is not None and got.num_input_tokens.tolist() == [9_000_000, 5]


def test_forced_format_and_gzip(tmp_path):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("num_prefill_tokens,num_decode_tokens,arrived_at\n4,4,0.5\n8,2,1.25\n")
    got = _agree(path, fmt="splitwise")
    assert got is not None and got.arrival_s.tolist() == [0.0, 0.75] and got.format == "vidur"
    assert _agree(path, fmt="azure") is None  # missing columns: the pandas reader's message


def test_jsonl_cases_agree(tmp_path):
    cases = {
        "mooncake": [
            '{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1, 2]}',
            '{"timestamp": 27, "input_length": 5, "output_length": 3, "hash_ids": []}',
        ],
        "float_counts": ['{"input_length": 5.0, "output_length": 1, "timestamp": 0}'],
        "fractional_count": ['{"input_length": 5.5, "output_length": 1, "timestamp": 0}'],
        "null_count": [
            '{"input_length": 5, "output_length": 1, "timestamp": 0}',
            '{"input_length": null, "output_length": 1, "timestamp": 1}',
        ],
        "bool_count": ['{"input_length": true, "output_length": 1, "timestamp": 0}'],
        "string_hashes": ['{"input_length": 5, "output_length": 1, "timestamp": 0, "hash_ids": "[3]"}'],
        "sessions": [
            '{"num_input_tokens": 5, "num_output_tokens": 1, "session_id": "b"}',
            '{"num_input_tokens": 5, "num_output_tokens": 1, "session_id": "a"}',
            '{"num_input_tokens": 5, "num_output_tokens": 1, "session_id": "b"}',
        ],
    }
    fast = {}
    for name, lines in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        fast[name] = _agree(path) is not None
    assert fast == {
        "mooncake": True,
        "float_counts": True,
        "fractional_count": False,
        "null_count": False,
        "bool_count": False,
        "string_hashes": True,
        "sessions": True,
    }
    sessions = arrow_trace(tmp_path / "sessions.jsonl", None, False)
    assert sessions is not None and sessions.session_id.tolist() == [0, 1, 0]


def test_parquet_cases_agree(tmp_path):
    ts = pa.array([1_700_000_000_000_000, 1_700_000_000_500_001, 1_700_000_003_000_000], pa.timestamp("us", "UTC"))
    tables = {
        "azure_timestamps": pa.table(
            {
                "TIMESTAMP": ts,
                "ContextTokens": pa.array([5, 6, 7], pa.int32()),
                "GeneratedTokens": pa.array([1, 2, 3], pa.uint16()),
            }
        ),
        "azure_strings": pa.table(
            {
                "TIMESTAMP": ["2023-11-16 18:15:46.6805900", "2023-11-16 18:15:50.9951690"],
                "ContextTokens": [5, 6],
                "GeneratedTokens": [1, 2],
            }
        ),
        "float_times": pa.table(
            {
                "num_input_tokens": [5, 6],
                "num_output_tokens": [1.0, 2.0],
                "arrival_s": pa.array([0.25, 0.5], pa.float32()),
                "session_id": [3, 1],
            }
        ),
        "lists": pa.table(
            {
                "input_length": [600, 5],
                "output_length": [1, 1],
                "timestamp": [0, 10],
                "hash_ids": pa.array([[1, 2], None], pa.list_(pa.int8())),
            }
        ),
        "null_count": pa.table({"input_length": [600, None], "output_length": [1, 1], "timestamp": [0, 10]}),
        "nan_time": pa.table(
            {"num_input_tokens": [5, 6], "num_output_tokens": [1, 2], "arrival_time_s": [0.0, np.nan]}
        ),
        "dates": pa.table(
            {"TIMESTAMP": pa.array([0, 1], pa.date32()), "ContextTokens": [5, 6], "GeneratedTokens": [1, 2]}
        ),
    }
    fast = {}
    for name, table in tables.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path)
        fast[name] = _agree(path) is not None
    assert fast == {
        "azure_timestamps": True,
        "azure_strings": True,
        "float_times": True,
        "lists": True,
        "null_count": False,
        "nan_time": False,
        "dates": False,
    }
    got = arrow_trace(tmp_path / "azure_timestamps.parquet", None, False)
    assert got is not None and got.arrival_s.tolist() == [0.0, 0.500001, 3.0]


@pytest.mark.parametrize("name", ["demo_chat.csv", "offline_batch.csv", "sessions_prefix.jsonl"])
def test_shipped_traces_take_the_fast_path(name):
    assert _agree(SHARED / name) is not None


# --------------------------------------------------------------------------- property test

#: cells of every kind a hand-written CSV may hold, well-formed and not
_CELLS = st.one_of(
    st.integers(-3, 2_000).map(str),
    st.integers(0, 10**6).map(lambda i: f"{i:07d}"),
    st.floats(-1e4, 1e7, allow_nan=False).map(repr),
    st.floats(0, 1e4, allow_nan=False).map(lambda f: f"{f:.3f}"),
    st.sampled_from(
        [
            "",
            "NA",
            "nan",
            "null",
            "None",
            "inf",
            "-inf",
            "True",
            "false",
            " 7",
            "7 ",
            '"8"',
            "x",
            "1e3",
            "+4",
            "0x10",
            "1_000",
            '"[1, 2]"',
            '"[]"',
            "2023-11-16 18:15:46.5",
            "2023-11-16T18:15:47",
        ]
    ),
)
_LAYOUT_COLUMNS = {
    "kavier": ("num_input_tokens", "num_output_tokens", ["arrival_time_s", "session_id", "n", "hash_ids", "turn_id"]),
    "azure": ("ContextTokens", "GeneratedTokens", ["TIMESTAMP"]),
    "mooncake": ("input_length", "output_length", ["timestamp", "hash_ids"]),
    "vidur": ("num_prefill_tokens", "num_decode_tokens", ["arrived_at"]),
}


@st.composite
def hand_written_csv(draw):
    """A CSV of one layout whose cells are mostly well-formed (so the fast path is taken) and sometimes any
    cell at all (so both readers meet hostile input)."""
    layout = draw(st.sampled_from(sorted(_LAYOUT_COLUMNS)))
    n_in, n_out, optional = _LAYOUT_COLUMNS[layout]
    columns = draw(st.permutations([n_in, n_out, *draw(st.lists(st.sampled_from(optional), unique=True))]))
    rows = draw(st.integers(1, 6))
    hostile = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    sessions_as_text = draw(st.booleans())
    lines = [",".join(columns)]
    clock = 0.0
    for _ in range(rows):
        clock += draw(st.sampled_from([0.0, 0.5, 1.0, 0.1, 12.25]))
        tokens = draw(st.integers(1, 2000))
        sec, tick = int(clock), round(clock * 1e7) % 10**7
        good = {
            n_in: str(tokens),
            n_out: draw(st.integers(1, 300).map(str)),
            "arrival_time_s": repr(clock),
            "arrived_at": f"{clock:.3f}",
            "timestamp": str(int(clock * 1000)),
            "TIMESTAMP": f"2023-11-16 18:{10 + sec // 60:02d}:{sec % 60:02d}.{tick:07d}",
            "session_id": draw(st.sampled_from(["1", "01", "2", "17"] + (["a", "b"] if sessions_as_text else []))),
            "n": draw(st.sampled_from(["1", "2", "4"])),
            "hash_ids": draw(st.sampled_from(["", '"' + str(list(range(-(-tokens // 512)))) + '"'])),
            "turn_id": "x",
        }
        cells = [draw(_CELLS) if draw(st.floats(0, 1)) < hostile else good[c] for c in columns]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def test_a_hexadecimal_count_is_refused_as_pandas_refuses_it(tmp_path):
    # Arrow's CSV reader reads 0x10 as 16; the fast path leaves such a file to pandas, which names the cell
    # (hypothesis found it only some of the time in the property test below)
    path = tmp_path / "t.csv"
    path.write_text("num_input_tokens,num_output_tokens,arrival_time_s\n0x10,5,0\n")
    assert _agree(path) is None
    with pytest.raises(KavierInputError, match="0x10"):
        tr.load_trace(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=hand_written_csv())
def test_any_csv_read_alike_or_left_to_pandas(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.csv"
        path.write_text(text)
        _agree(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.lists(st.tuples(st.integers(1, 4000), st.integers(1, 500)), min_size=1, max_size=20),
    gaps=st.lists(st.floats(0, 1e5, allow_nan=False), min_size=20, max_size=20),
    ext=st.sampled_from([".csv", ".parquet", ".jsonl", ".csv.gz", ".jsonl.gz"]),
    sessions=st.booleans(),
)
def test_written_traces_read_alike_and_fast(counts, gaps, ext, sessions):
    n = len(counts)
    trace = tr.Trace(
        arrival_s=np.cumsum(np.asarray(gaps[:n])),
        num_input_tokens=np.asarray([c[0] for c in counts], dtype=np.int64),
        num_output_tokens=np.asarray([c[1] for c in counts], dtype=np.int64),
        hash_ids=[list(range(-(-c[0] // 512))) for c in counts],
    )
    if sessions:
        trace.session_id = np.asarray([i % 3 for i in range(n)], dtype=np.int64)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"trace{ext}"
        tr.write_trace(trace, path)
        got = _agree(path)
    assert got is not None


def test_load_trace_takes_the_fast_path_and_falls_back(tmp_path):
    """The entry point uses the fast reader and falls back: both kinds of file load, errors unchanged."""
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"input_length": 5, "output_length": 1, "timestamp": 0}) + "\n")
    assert tr.load_trace(ok).num_input_tokens.tolist() == [5]
    bad = tmp_path / "bad.csv"
    bad.write_text(KV + "5,1,0\n6,2,1\n7,abc,2\n")
    with pytest.raises(KavierInputError, match="row 3.*'abc'"):
        tr.load_trace(bad)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_arrival_s_is_read_by_every_reader(tmp_path, suffix):
    # requests.parquet's own arrival column (a run's output, or a table made from it, read back as a trace):
    # the pyarrow path and the pandas fallback both take it, and report it when wrong (the pyarrow CSV
    # reader used to drop it, so such a file loaded silently as an offline batch)
    import pandas as pd

    df = pd.DataFrame({"arrival_s": [0.0, 0.25, 0.5], "num_input_tokens": [5, 6, 7], "num_output_tokens": [1, 2, 3]})
    path = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    got = tr.load_trace(path)
    assert got.timed and got.arrival_s.tolist() == [0.0, 0.25, 0.5]
    unsorted = df.assign(arrival_s=[0.0, 0.5, 0.25])
    if suffix == ".csv":
        unsorted.to_csv(path, index=False)
    elif suffix == ".jsonl":
        unsorted.to_json(path, orient="records", lines=True)
    else:
        unsorted.to_parquet(path)
    with pytest.raises(KavierInputError, match="arrival_s goes backwards"):
        tr.load_trace(path)
