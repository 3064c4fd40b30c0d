"""Tests of kavier_opendc.workload.trace: real traces, layouts, validation, round trips."""

from __future__ import annotations

import csv
import json
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SHARED_DATA
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.workload.trace import TRACE_FORMATS, Trace, detect_format, load_trace, write_trace

DATA = SHARED_DATA / "traces"


def shared(name: str) -> Path:
    p = DATA / name
    if not p.is_file():
        pytest.skip(f"shared data file {p} is absent")
    return p


def row_re(i: int) -> str:
    """Regex for 1-based data row i, not matching row 12 when i is 1."""
    return rf"row {i}\b"


# --------------------------------------------------------------------------- real traces


def _azure_reference(path: Path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    tokens = sum(int(r["ContextTokens"]) + int(r["GeneratedTokens"]) for r in rows)
    t0 = datetime.fromisoformat(rows[0]["TIMESTAMP"])
    t1 = datetime.fromisoformat(rows[-1]["TIMESTAMP"])
    return len(rows), tokens, (t1 - t0).total_seconds()


def _mooncake_reference(path: Path):
    with open(path) as fh:
        recs = [json.loads(line) for line in fh if line.strip()]
    tokens = sum(r["input_length"] + r["output_length"] for r in recs)
    span = (recs[-1]["timestamp"] - recs[0]["timestamp"]) / 1000.0
    return len(recs), tokens, span, recs


@pytest.mark.parametrize("name,count", [("azure_llm_2023_conv.csv", 19_366), ("azure_llm_2023_code.csv", 8_819)])
def test_azure_real_trace(name, count):
    path = shared(name)
    t = time.perf_counter()
    tr = load_trace(path)
    elapsed = time.perf_counter() - t
    n, tokens, span = _azure_reference(path)
    assert n == count
    assert tr.format == "azure"
    assert len(tr) == count
    assert tr.arrival_s.dtype == np.float64 and tr.num_input_tokens.dtype == np.int64
    assert tr.arrival_s[0] == 0.0
    assert np.all(np.diff(tr.arrival_s) >= 0)
    assert tr.total_tokens() == tokens
    assert tr.arrival_s[-1] == pytest.approx(span, abs=1e-6)
    assert tr.session_id is None and tr.hash_ids is None
    print(f"\nload_trace({name}): {elapsed * 1000:.1f} ms")
    assert elapsed < 2.0, f"loading {name} took {elapsed:.2f} s"


@pytest.mark.parametrize("name,count", [("mooncake_conversation.jsonl", 12_031), ("mooncake_synthetic.jsonl", 3_993)])
def test_mooncake_real_trace(name, count):
    path = shared(name)
    t = time.perf_counter()
    tr = load_trace(path)
    elapsed = time.perf_counter() - t
    n, tokens, span, recs = _mooncake_reference(path)
    assert n == count
    assert tr.format == "mooncake"
    assert len(tr) == count
    assert tr.arrival_s[0] == 0.0
    assert np.all(np.diff(tr.arrival_s) >= 0)
    assert tr.total_tokens() == tokens
    assert tr.arrival_s[-1] == pytest.approx(span)
    assert tr.hash_block_size == 512
    assert len(tr.hash_ids) == count
    assert tr.hash_ids[0] == recs[0]["hash_ids"]
    assert tr.hash_ids[-1] == recs[-1]["hash_ids"]
    assert sum(map(len, tr.hash_ids)) == sum(len(r["hash_ids"]) for r in recs)
    print(f"\nload_trace({name}): {elapsed * 1000:.1f} ms")
    assert elapsed < 3.0, f"loading {name} took {elapsed:.2f} s"


def test_sharegpt_lengths_load_as_vidur_batch():
    path = shared("sharegpt_lengths_llama2.csv")
    tr = load_trace(path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tr.format == "vidur"
    assert len(tr) == len(rows) == 30_731
    assert np.all(tr.arrival_s == 0.0)
    assert tr.total_tokens() == sum(int(r["num_prefill_tokens"]) + int(r["num_decode_tokens"]) for r in rows)


# --------------------------------------------------------------------------- layouts


def _write(path: Path, df: pd.DataFrame) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        df = df.copy()
        for c in df.columns:
            if df[c].map(lambda v: isinstance(v, list)).any():
                df[c] = [json.dumps(v) for v in df[c]]
        df.to_csv(path, index=False)
    elif suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        with open(path, "w") as fh:
            for rec in df.to_dict(orient="records"):
                fh.write(json.dumps({k: _plain(v) for k, v in rec.items()}) + "\n")
    return path


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


LAYOUT_FRAMES = {
    "kavier": pd.DataFrame(
        {
            "arrival_time_s": [10.0, 10.5, 12.0],
            "num_input_tokens": [5, 6, 7],
            "num_output_tokens": [1, 2, 3],
            "session_id": ["a", "b", "a"],
            "n": [1, 2, 1],
        }
    ),
    "azure": pd.DataFrame(
        {
            "TIMESTAMP": ["2023-11-16 18:15:46.6805900", "2023-11-16 18:15:47.1805900", "2023-11-16 18:15:49"],
            "ContextTokens": [5, 6, 7],
            "GeneratedTokens": [1, 2, 3],
        }
    ),
    "mooncake": pd.DataFrame(
        {
            "timestamp": [1000, 1500, 3000],
            "input_length": [5, 6, 7],
            "output_length": [1, 2, 3],
            "hash_ids": [[0], [0], [1]],
        }
    ),
    "vidur": pd.DataFrame(
        {"arrived_at": [10.0, 10.5, 12.0], "num_prefill_tokens": [5, 6, 7], "num_decode_tokens": [1, 2, 3]}
    ),
}


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".jsonl"])
@pytest.mark.parametrize("fmt", TRACE_FORMATS)
def test_autodetect_each_layout(tmp_path, fmt, ext):
    path = _write(tmp_path / f"t{ext}", LAYOUT_FRAMES[fmt])
    tr = load_trace(path)
    assert tr.format == fmt
    assert tr.source == str(path)
    np.testing.assert_array_equal(tr.num_input_tokens, [5, 6, 7])
    np.testing.assert_array_equal(tr.num_output_tokens, [1, 2, 3])
    np.testing.assert_allclose(tr.arrival_s, [0.0, 0.5, 2.0] if fmt != "azure" else [0.0, 0.5, 2.31941])
    assert tr.total_tokens() == 24
    if fmt == "kavier":
        np.testing.assert_array_equal(tr.session_id, [0, 1, 0])
        np.testing.assert_array_equal(tr.n, [1, 2, 1])
    if fmt == "mooncake":
        assert tr.hash_ids == [[0], [0], [1]]


def test_detect_format_by_columns():
    assert detect_format(["num_input_tokens", "num_output_tokens"]) == "kavier"
    assert detect_format(["TIMESTAMP", "ContextTokens", "GeneratedTokens"]) == "azure"
    assert detect_format(["timestamp", "input_length", "output_length", "hash_ids"]) == "mooncake"
    assert detect_format(["num_prefill_tokens", "num_decode_tokens", "pd_ratio"]) == "vidur"
    assert detect_format(["a", "b"]) is None


def test_offline_batch_without_times(tmp_path):
    path = _write(tmp_path / "t.csv", pd.DataFrame({"num_input_tokens": [3, 4], "num_output_tokens": [1, 1]}))
    tr = load_trace(path)
    assert tr.format == "kavier"
    np.testing.assert_array_equal(tr.arrival_s, [0.0, 0.0])
    assert tr.session_id is None and tr.n is None and tr.input_tokens is None


def test_kavier_prototype_input_layout(tmp_path):
    # Column layout of the Kavier prototype's inference input (values made up here).
    path = tmp_path / "proto.csv"
    path.write_text(
        "session_id,turn_id,ts,num_input_tokens,num_output_tokens,input_tokens,output_tokens\n"
        '7,0,0.0,3,2,"[1, 5, 2]","[9, 2]"\n'
        '7,1,1.0,5,1,"[1, 5, 2, 9, 2]","[3]"\n'
        '4,0,0.0,2,2,"[1, 8]","[4, 2]"\n'
    )
    tr = load_trace(path)
    assert tr.format == "kavier"
    np.testing.assert_array_equal(tr.session_id, [0, 0, 1])
    assert tr.input_tokens == [[1, 5, 2], [1, 5, 2, 9, 2], [1, 8]]
    np.testing.assert_array_equal(tr.arrival_s, [0.0, 0.0, 0.0])  # ts is ignored, like the prototype


def test_explicit_override(tmp_path):
    df = pd.DataFrame(
        {
            "num_input_tokens": [5, 6],
            "num_output_tokens": [1, 2],
            "num_prefill_tokens": [50, 60],
            "num_decode_tokens": [10, 20],
        }
    )
    path = _write(tmp_path / "both.csv", df)
    assert load_trace(path).format == "kavier"
    tr = load_trace(path, fmt="vidur")
    assert tr.format == "vidur"
    np.testing.assert_array_equal(tr.num_input_tokens, [50, 60])
    assert load_trace(path, fmt="Splitwise").format == "vidur"
    with pytest.raises(KavierInputError) as ei:
        load_trace(path, fmt="azure")
    msg = str(ei.value)
    assert "both.csv" in msg and "TIMESTAMP" in msg and "ContextTokens" in msg and "num_prefill_tokens" in msg


def test_unknown_format_name_lists_formats(tmp_path):
    path = _write(tmp_path / "t.csv", LAYOUT_FRAMES["kavier"])
    with pytest.raises(KavierInputError) as ei:
        load_trace(path, fmt="sharegpt")
    msg = str(ei.value)
    assert "sharegpt" in msg and "t.csv" in msg
    for f in TRACE_FORMATS:
        assert f in msg


def test_unrecognised_columns(tmp_path):
    path = _write(tmp_path / "odd.csv", pd.DataFrame({"prompt": [1], "answer": [2]}))
    with pytest.raises(KavierInputError) as ei:
        load_trace(path)
    msg = str(ei.value)
    assert "odd.csv" in msg and "prompt, answer" in msg
    for col in ("num_input_tokens", "ContextTokens", "input_length", "num_prefill_tokens"):
        assert col in msg


def test_azure_missing_timestamp_column(tmp_path):
    path = _write(tmp_path / "az.csv", pd.DataFrame({"ContextTokens": [1], "GeneratedTokens": [2]}))
    with pytest.raises(KavierInputError, match="TIMESTAMP") as ei:
        load_trace(path)
    assert "az.csv" in str(ei.value) and "ContextTokens, GeneratedTokens" in str(ei.value)


# --------------------------------------------------------------------------- bad inputs

K = "num_input_tokens,num_output_tokens,arrival_time_s\n"
BAD_CSV = [
    ("negative", K + "5,1,0\n6,-3,1\n", 2, ["-3", "num_output_tokens", "negative"]),
    ("non_integer", K + "5,1,0\n6,2,1\n3.5,2,2\n", 3, ["3.5", "num_input_tokens", "whole number"]),
    ("nan", K + "5,1,0\n,2,1\n", 2, ["num_input_tokens", "missing"]),
    ("nan_literal", K + "5,1,0\n4,NaN,1\n", 2, ["num_output_tokens", "missing"]),
    ("non_numeric", K + "5,1,0\n6,2,1\n7,abc,2\n", 3, ["'abc'", "num_output_tokens", "not a number"]),
    ("zero_input", K + "0,1,0\n", 1, ["num_input_tokens", ">= 1"]),
    ("zero_output", K + "5,1,0\n5,1,1\n5,0,2\n", 3, ["num_output_tokens", "at least one output token"]),
    ("time_text", K + "5,1,0\n5,1,soon\n", 2, ["'soon'", "arrival_time_s", "not a number"]),
    ("time_nan", K + "5,1,0\n5,1,\n", 2, ["arrival_time_s", "missing"]),
    ("unsorted", K + "5,1,0\n5,1,2\n5,1,3\n5,1,2.5\n5,1,4\n", 4, ["arrival_time_s", "backwards", "2.5"]),
    ("session_missing", "num_input_tokens,num_output_tokens,session_id\n5,1,a\n5,1,\n", 2, ["session_id"]),
    ("n_zero", "num_input_tokens,num_output_tokens,n\n5,1,1\n5,1,0\n", 2, ["n ", ">= 1"]),
    ("hash_not_list", 'num_input_tokens,num_output_tokens,hash_ids\n5,1,"[1, 2]"\n5,1,"7"\n', 2, ["hash_ids"]),
    (
        "hash_not_ints",
        'num_input_tokens,num_output_tokens,hash_ids\n5,1,"[1, 2]"\n5,1,"[1, ""a""]"\n',
        2,
        ["hash_ids", "'a'", "list of integers"],
    ),
    ("hash_floats", 'num_input_tokens,num_output_tokens,hash_ids\n5,1,"[1.5]"\n', 1, ["hash_ids", "1.5"]),
    (
        "hash_bad_json",
        'num_input_tokens,num_output_tokens,hash_ids\n5,1,"[1, 2]"\n5,1,"[1, 2"\n',
        2,
        ["hash_ids", "not a JSON list"],
    ),
    (
        "tokens_len",
        'num_input_tokens,num_output_tokens,input_tokens\n2,1,"[1, 2]"\n3,1,"[1, 2]"\n',
        2,
        ["input_tokens", "num_input_tokens is 3"],
    ),
    (
        "azure_time",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,5,1\nyesterday,5,1\n",
        2,
        ["'yesterday'", "TIMESTAMP", "date-time"],
    ),
    (
        "azure_unsorted",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,5,1\n"
        "2023-11-16 18:15:47.0000000,5,1\n2023-11-16 18:15:46.9000000,5,1\n",
        3,
        ["TIMESTAMP", "backwards"],
    ),
    (
        "azure_zero_out",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,5,0\n",
        1,
        ["GeneratedTokens", "at least one output token"],
    ),
    ("vidur_neg", "num_prefill_tokens,num_decode_tokens\n4,4\n-4,4\n", 2, ["num_prefill_tokens", "-4"]),
]


@pytest.mark.parametrize("name,text,row,needles", BAD_CSV, ids=[c[0] for c in BAD_CSV])
def test_bad_csv_rows(tmp_path, name, text, row, needles):
    path = tmp_path / f"bad_{name}.csv"
    path.write_text(text)
    with pytest.raises(KavierInputError) as ei:
        load_trace(path)
    msg = str(ei.value)
    assert f"bad_{name}.csv" in msg
    assert re.search(row_re(row), msg), msg
    for needle in needles:
        assert needle in msg, msg
    assert "\n" not in msg


BAD_JSONL = [
    (
        "invalid_json",
        [
            '{"timestamp": 0, "input_length": 5, "output_length": 1}',
            '{"timestamp": 1, "input_length": 5, "output_length": 1',
            '{"timestamp": 2, "input_length": 5, "output_length": 1}',
        ],
        "line 2",
        ["invalid JSON"],
    ),
    ("not_object", ['{"timestamp": 0, "input_length": 5, "output_length": 1}', "[1, 2]"], "line 2", ["JSON object"]),
    (
        "hash_str",
        [
            '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}',
            '{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": "0,1"}',
        ],
        "line 2",
        ["hash_ids"],
    ),
    (
        "hash_mixed",
        ['{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0, true]}'],
        "line 1",
        ["hash_ids", "True"],
    ),
    (
        "float_len",
        [
            '{"timestamp": 0, "input_length": 5, "output_length": 1}',
            '{"timestamp": 0, "input_length": 5.5, "output_length": 1}',
        ],
        "line 2",
        ["5.5", "input_length"],
    ),
    (
        "null_len",
        ['{"timestamp": 0, "input_length": 5, "output_length": 1}', '{"timestamp": 0, "input_length": 5}'],
        "line 2",
        ["output_length", "missing"],
    ),
    (
        "string_time",
        [
            '{"timestamp": 0, "input_length": 5, "output_length": 1}',
            '{"timestamp": "late", "input_length": 5, "output_length": 1}',
        ],
        "line 2",
        ["'late'"],
    ),
    (
        "unsorted_ms",
        [
            '{"timestamp": 0, "input_length": 5, "output_length": 1}',
            '{"timestamp": 10, "input_length": 5, "output_length": 1}',
            '{"timestamp": 5, "input_length": 5, "output_length": 1}',
        ],
        "line 3",
        ["backwards"],
    ),
    (
        "hash_float_later",
        [
            '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0, 1]}',
            '{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": [0, 2]}',
            '{"timestamp": 2, "input_length": 5, "output_length": 1, "hash_ids": [0, 2.5]}',
        ],
        "line 3",
        ["hash_ids", "2.5"],
    ),
    ("bool_len", ['{"timestamp": 0, "input_length": true, "output_length": 1}'], "line 1", ["input_length"]),
]


@pytest.mark.parametrize("name,lines,where,needles", BAD_JSONL, ids=[c[0] for c in BAD_JSONL])
def test_bad_jsonl_rows(tmp_path, name, lines, where, needles):
    path = tmp_path / f"bad_{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(KavierInputError) as ei:
        load_trace(path)
    msg = str(ei.value)
    assert f"bad_{name}.jsonl" in msg and where in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_jsonl_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 5, "output_length": 1}\n\n'
        '{"timestamp": 0, "input_length": 5, "output_length": 0}\n'
    )
    with pytest.raises(KavierInputError) as ei:
        load_trace(path)
    assert "row 2 (line 3)" in str(ei.value)


def test_empty_traces(tmp_path):
    cases = {
        "header_only.csv": "num_input_tokens,num_output_tokens\n",
        "nothing.csv": "",
        "nothing.jsonl": "\n\n",
    }
    for name, text in cases.items():
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(KavierInputError) as ei:
            load_trace(p)
        assert name in str(ei.value) and ("empty" in str(ei.value) or "no requests" in str(ei.value))
    p = tmp_path / "empty.parquet"
    pd.DataFrame(
        {"num_input_tokens": pd.Series([], dtype="int64"), "num_output_tokens": pd.Series([], dtype="int64")}
    ).to_parquet(p)
    with pytest.raises(KavierInputError, match="no requests"):
        load_trace(p)


def test_file_problems(tmp_path):
    with pytest.raises(KavierInputError, match="not found") as ei:
        load_trace(tmp_path / "missing.csv")
    assert "missing.csv" in str(ei.value)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(KavierInputError, match="directory"):
        load_trace(tmp_path / "dir.csv")
    (tmp_path / "trace.txt").write_text("num_input_tokens,num_output_tokens\n1,1\n")
    with pytest.raises(KavierInputError, match="extension") as ei:
        load_trace(tmp_path / "trace.txt")
    assert ".csv" in str(ei.value) and ".parquet" in str(ei.value) and ".jsonl" in str(ei.value)
    (tmp_path / "junk.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(KavierInputError, match="Parquet") as ei:
        load_trace(tmp_path / "junk.parquet")
    assert "junk.parquet" in str(ei.value)
    (tmp_path / "latin.jsonl").write_bytes(
        b'{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
        b'{"timestamp": 0, "input_length": "\xff", "output_length": 1}\n'
    )
    with pytest.raises(KavierInputError, match="UTF-8") as ei:
        load_trace(tmp_path / "latin.jsonl")
    assert "line 2" in str(ei.value)
    (tmp_path / "ragged.csv").write_text("num_input_tokens,num_output_tokens\n1,1\n1,1,1,1\n")
    with pytest.raises(KavierInputError, match="ragged.csv") as ei:
        load_trace(tmp_path / "ragged.csv")
    assert re.search(row_re(2), str(ei.value))
    (tmp_path / "unquoted.csv").write_text("num_input_tokens,num_output_tokens,hash_ids\n2,1,[1, 2]\n")
    with pytest.raises(KavierInputError, match="unquoted.csv") as ei:
        load_trace(tmp_path / "unquoted.csv")
    assert re.search(row_re(1), str(ei.value))


def test_gzip_and_json_array(tmp_path):
    import gzip

    with gzip.open(tmp_path / "t.jsonl.gz", "wt") as fh:
        fh.write('{"timestamp": 5, "input_length": 5, "output_length": 1}\n')
    assert len(load_trace(tmp_path / "t.jsonl.gz")) == 1
    (tmp_path / "arr.json").write_text('[{"num_input_tokens": 2, "num_output_tokens": 3}]')
    tr = load_trace(tmp_path / "arr.json")
    assert tr.format == "kavier" and tr.total_tokens() == 5


def test_write_trace_round_trip(tmp_path):
    tr = Trace(
        arrival_s=np.array([0.0, 0.25, 1.5]),
        num_input_tokens=np.array([3, 4, 600]),
        num_output_tokens=np.array([1, 2, 3]),
        session_id=np.array([0, 1, 0]),
        hash_ids=[[1], [1], [1, 2]],
        input_tokens=[[1, 2, 3], [], [7] * 600],
        n=np.array([1, 1, 4]),
    )
    for ext in (".csv", ".parquet", ".jsonl"):
        back = load_trace(write_trace(tr, tmp_path / f"w{ext}"))
        np.testing.assert_array_equal(back.arrival_s, tr.arrival_s)
        np.testing.assert_array_equal(back.num_input_tokens, tr.num_input_tokens)
        np.testing.assert_array_equal(back.session_id, tr.session_id)
        np.testing.assert_array_equal(back.n, tr.n)
        assert back.hash_ids == tr.hash_ids and back.input_tokens == tr.input_tokens


# --------------------------------------------------------------------------- property tests


@st.composite
def kavier_tables(draw):
    n = draw(st.integers(1, 25))
    with_tokens = draw(st.booleans())
    max_in = 12 if with_tokens else 9 * 10**6  # prompt + output stays within the 10M-token context limit
    cols: dict = {
        "num_input_tokens": draw(st.lists(st.integers(1, max_in), min_size=n, max_size=n)),
        "num_output_tokens": draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n)),
    }
    if draw(st.booleans()):
        t = sorted(draw(st.lists(st.floats(-1e6, 1e7, allow_nan=False, allow_infinity=False), min_size=n, max_size=n)))
        cols["arrival_time_s"] = t
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["int", "str"]))
        ids = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
        cols["session_id"] = ids if kind == "int" else [f"s-{i}" for i in ids]
    if draw(st.booleans()):
        cols["n"] = draw(st.lists(st.integers(1, 8), min_size=n, max_size=n))
    if draw(st.booleans()):
        # one id per 512 prompt tokens (the last partial), or none for the row
        base = draw(st.integers(0, 2**62 - 2 * 10**5))
        cols["hash_ids"] = [
            list(range(base + i, base + i - (-k // 512))) if draw(st.booleans()) else []
            for i, k in enumerate(cols["num_input_tokens"])
        ]
    if with_tokens:
        cols["input_tokens"] = [
            draw(st.lists(st.integers(0, 200_000), min_size=k, max_size=k)) for k in cols["num_input_tokens"]
        ]
    return pd.DataFrame(cols)


def _write_any(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".jsonl":
        with open(path, "w") as fh:
            for rec in df.to_dict(orient="records"):
                fh.write(json.dumps({k: _plain(v) for k, v in rec.items()}) + "\n")
    else:
        _write(path, df)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=kavier_tables(), ext=st.sampled_from([".csv", ".parquet", ".jsonl"]))
def test_round_trip_property(df, ext):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"trace{ext}"
        _write_any(df, path)
        tr = load_trace(path)
    assert tr.format == "kavier"
    np.testing.assert_array_equal(tr.num_input_tokens, np.asarray(df["num_input_tokens"], dtype=np.int64))
    np.testing.assert_array_equal(tr.num_output_tokens, np.asarray(df["num_output_tokens"], dtype=np.int64))
    if "arrival_time_s" in df:
        t = np.asarray(df["arrival_time_s"], dtype=np.float64)
        np.testing.assert_array_equal(tr.arrival_s, t - t[0])
    else:
        assert np.all(tr.arrival_s == 0)
    if "session_id" in df:
        expected, _ = pd.factorize(pd.Series(list(df["session_id"])), sort=False)
        np.testing.assert_array_equal(tr.session_id, expected)
    else:
        assert tr.session_id is None
    if "n" in df:
        np.testing.assert_array_equal(tr.n, np.asarray(df["n"]))
    if "hash_ids" in df:
        assert tr.hash_ids == [list(v) for v in df["hash_ids"]]
    if "input_tokens" in df:
        assert tr.input_tokens == [list(v) for v in df["input_tokens"]]
    assert tr.total_tokens() == int(df["num_input_tokens"].sum() + df["num_output_tokens"].sum())


@st.composite
def corrupted_tables(draw):
    n = draw(st.integers(1, 30))
    df = pd.DataFrame(
        {
            "arrival_time_s": np.arange(n, dtype=np.float64) * 0.5,
            "num_input_tokens": draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n)),
            "num_output_tokens": draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n)),
        }
    )
    row = draw(st.integers(0, n - 1))
    col = draw(st.sampled_from(["num_input_tokens", "num_output_tokens", "arrival_time_s"]))
    kinds = ["nan", "string"] if col == "arrival_time_s" else ["negative", "nan", "float", "string", "zero"]
    kind = draw(st.sampled_from(kinds))
    return df, row, col, kind


def _corrupt_and_write(df: pd.DataFrame, row: int, col: str, kind: str, path: Path) -> None:
    ext = path.suffix
    if ext == ".jsonl":
        recs = df.to_dict(orient="records")
        value = {"negative": -7, "nan": None, "float": 3.5, "string": "abc", "zero": 0}[kind]
        recs[row][col] = value
        with open(path, "w") as fh:
            for rec in recs:
                fh.write(json.dumps({k: _plain(v) for k, v in rec.items()}) + "\n")
        return
    df = df.copy()
    if kind == "string":
        df[col] = df[col].astype(str)
        df.loc[row, col] = "abc"
    else:
        value = {"negative": -7, "nan": np.nan, "float": 3.5, "zero": 0}[kind]
        if kind in ("nan", "float"):
            df[col] = df[col].astype(np.float64)
        df.loc[row, col] = value
    if ext == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=corrupted_tables(), ext=st.sampled_from([".csv", ".parquet", ".jsonl"]))
def test_corruption_reported_at_right_row(case, ext):
    df, row, col, kind = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"corrupt{ext}"
        _corrupt_and_write(df, row, col, kind, path)
        with pytest.raises(KavierInputError) as ei:
            load_trace(path)
    msg = str(ei.value)
    assert f"corrupt{ext}" in msg
    assert re.search(row_re(row + 1), msg), msg
    assert col in msg, msg
