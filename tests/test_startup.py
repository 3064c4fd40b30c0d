"""Start-up of `kavier simulate`: what its help and a small run import (issue 20, item 1).

`kavier simulate --help` needs only the parser (no numpy, no pandas, no engine); a run reads its trace with
pyarrow and writes its outputs with pyarrow, so pandas, matplotlib, jsonschema, py4j and dask stay unloaded,
and the built-in catalogue and frameworks come from the snapshot, so no YAML parser (nor packaging, which only
a framework picked by version needs) either.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kavier_opendc.base import arrow

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "matplotlib", "jsonschema", "py4j", "distributed", "dask", "yaml", "packaging")


def _top_modules_after(argv: list[str]) -> tuple[int, set[str], str]:
    """(exit status, top-level modules loaded, stdout) of ``kavier ARGV`` run in a fresh interpreter."""
    code = (
        "import json, sys\n"
        "from kavier_opendc.cli import main\n"
        f"rc = main({argv!r})\n"
        "print(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules})]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    rc, mods = json.loads(r.stdout.strip().splitlines()[-1])
    return rc, set(mods), r.stdout


def test_simulate_help_imports_no_numpy_pandas_or_engine():
    code = (
        "import json, sys\nfrom kavier_opendc.cli import main\n"
        "try:\n    main(['simulate', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    tops = {m.split(".")[0] for m in loaded}
    assert not tops & {"numpy", "pandas", "pyarrow", "yaml", *HEAVY}, tops & {"numpy", "pandas", "pyarrow", "yaml"}
    assert "kavier_opendc.engine.simulator" not in loaded and "kavier_opendc.workload.trace" not in loaded
    assert "--keep-overlong-requests" in r.stdout and "--router" in r.stdout  # the help was printed


def test_simulate_help_is_the_parser_the_command_runs():
    """The help comes from the same add_simulate_args that parses a run: they cannot drift apart."""
    from kavier_opendc.cli import build_parser

    light = build_parser(["simulate", "--help"])._subparsers._group_actions[0].choices["simulate"]
    full = build_parser()._subparsers._group_actions[0].choices["simulate"]
    assert light.format_help() == full.format_help()
    args = light.parse_args(["--model", "m", "--gpu", "g", "--trace", "t.csv", "--out", "o"])
    assert args.func.__name__ == "cmd_simulate" and args.kv_cache == "on"


@pytest.mark.parametrize(
    "trace",
    [
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        + "".join(f"2023-11-16 18:15:{10 + i:02d}.5,{100 + i},{10 + i}\n" for i in range(10)),
        "num_input_tokens,num_output_tokens,arrival_time_s,session_id\n"
        + "".join(f"{50 + i},{5 + i},{i * 0.25},s{i % 3}\n" for i in range(10)),
    ],
    ids=["azure", "kavier_sessions"],
)
def test_a_ten_request_run_loads_no_pandas_plotting_schema_jvm_or_dask(tmp_path, trace):
    path = tmp_path / "t.csv"
    path.write_text(trace)
    out = tmp_path / "out"
    argv = ["simulate", "--model", "llama-3-8b", "--gpu", "a100-80gb", "--trace", str(path), "--out", str(out)]
    rc, tops, stdout = _top_modules_after(argv)
    assert rc == 0 and "10 finished, 0 rejected" in stdout
    assert not tops & set(HEAVY), tops & set(HEAVY)
    assert {"numpy", "pyarrow"} <= tops
    assert (out / "requests.parquet").is_file() and (out / "timeline.parquet").is_file()


_NUMERIC = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.float32, np.float64])


@settings(max_examples=60, deadline=None)
@given(
    dtype=_NUMERIC,
    values=st.lists(st.floats() | st.integers(-100, 100), max_size=40),
    step=st.integers(1, 3),
)
def test_arrow_array_equals_pyarrows(dtype, values, step):
    """base/arrow.array builds exactly pyarrow.array's array (NaN a value, no nulls), strided input too."""
    with np.errstate(invalid="ignore", over="ignore"):
        data = np.array(values, dtype=np.float64)
        if np.dtype(dtype).kind == "i":
            data = np.nan_to_num(data, nan=0, posinf=0, neginf=0).clip(-100, 100)
        data = data.astype(dtype)[::step]
    got, want = arrow.array(data), pa.array(data)
    assert got.type == want.type and len(got) == len(want) == len(data)
    assert got.null_count == want.null_count == 0 and got.buffers()[0] is None
    n = len(data)
    same = np.frombuffer(got.buffers()[1], dtype=dtype, count=n), np.frombuffer(want.buffers()[1], dtype=dtype, count=n)
    assert same[0].tobytes() == same[1].tobytes() == np.ascontiguousarray(data).tobytes()  # bit for bit, NaNs too
    assert arrow.array(data, type=want.type).type == want.type


@given(st.lists(st.text(), max_size=30))
def test_arrow_strings_equal_pyarrows(texts):
    try:
        want = pa.array(texts, type=pa.string())
    except (pa.ArrowException, UnicodeEncodeError):
        with pytest.raises((pa.ArrowException, UnicodeEncodeError)):
            arrow.array(texts, type=pa.string())
        return
    got = arrow.array(texts, type=pa.string())
    assert got.type == pa.string() and got.equals(want)


def test_arrow_hands_other_values_to_pyarrow():
    assert arrow.array([1, None], type=pa.int64()).null_count == 1
    assert arrow.array(np.array([True, False])).type == pa.bool_()
    assert arrow.array(np.array([1, 2], dtype=np.int64), type=pa.int32()).type == pa.int32()
