"""The simulation output as a typed contract (engine/outputs.py): declared columns, in memory or read back."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.outputs import (
    REQUESTS_COLUMNS,
    REQUESTS_OPTIONAL,
    TIMELINE_COLUMNS,
    SimulationOutput,
    write_simulation,
)
from kavier_opendc.engine.simulator import simulate
from kavier_opendc.experiments.experiment import load_experiment
from kavier_opendc.experiments.pipeline import run_experiment
from kavier_opendc.opendc.simulation_view import read_simulation
from kavier_opendc.workload.trace import Trace
from test_engine import toy
from test_pipeline import FakeOpenDC, tiny_experiment


def _result(sessions: bool = False):
    import numpy as np

    tr = Trace(
        np.array([0.0, 0.5, 1.0]),
        np.array([100, 200, 50]),
        np.array([10, 5, 20]),
        session_id=np.array([1, 1, 2]) if sessions else None,
    )
    return simulate(tr, toy(), progress=False)


@pytest.mark.parametrize("sessions", [False, True])
def test_tables_have_the_declared_columns_and_types(sessions):
    out = SimulationOutput.from_result(_result(sessions))
    declared = [c for c in REQUESTS_COLUMNS if c not in REQUESTS_OPTIONAL or (sessions and c == "session_id")]
    assert out.requests.column_names == declared
    for name in declared:
        assert out.requests.schema.field(name).type == REQUESTS_COLUMNS[name][0], name
    assert out.timeline.column_names == list(TIMELINE_COLUMNS)
    for name, (kind, _) in TIMELINE_COLUMNS.items():
        assert out.timeline.schema.field(name).type == kind, name


def test_a_folder_reads_back_as_the_same_output(tmp_path):
    result = _result(True)
    summary = write_simulation(result, tmp_path / "sim")
    back = SimulationOutput.read(tmp_path / "sim")
    mem = SimulationOutput.from_result(result)
    assert back.requests.equals(mem.requests) and back.timeline.equals(mem.timeline)
    assert back.summary == json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert (back.summary["num_finished"], back.summary["makespan_s"]) == (
        summary["num_finished"],
        summary["makespan_s"],
    )
    assert back.folder == tmp_path / "sim"
    # the export's view is the same whether it reads the folder or gets the output in memory
    a, b = read_simulation(tmp_path / "sim"), read_simulation(back)
    assert (a.replicas, a.gpu, a.tp, a.makespan_s, a.source) == (b.replicas, b.gpu, b.tp, b.makespan_s, b.source)
    assert a.timeline.equals(b.timeline)


def test_a_missing_or_broken_output_is_a_clear_error(tmp_path):
    with pytest.raises(KavierInputError, match="timeline.parquet: timeline not found"):
        SimulationOutput.read(tmp_path)
    (tmp_path / "timeline.parquet").write_text("not parquet")
    with pytest.raises(KavierInputError, match="cannot read Parquet"):
        SimulationOutput.read(tmp_path)
    pq.write_table(
        pa.table({"replica": [0], "start_s": [0.0], "end_s": [1.0], "gpu_utilization": [0.5]}),
        tmp_path / "timeline.parquet",
    )
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(KavierInputError, match="summary.json: the document is list, not an object"):
        SimulationOutput.read(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    out = SimulationOutput.read(tmp_path)
    assert out.requests is None
    with pytest.raises(KavierInputError, match="requests.parquet: requests not found"):
        out.requests_frame()


def test_kavier_run_reads_nothing_back_from_its_simulation_folder(tmp_path, monkeypatch):
    exp = load_experiment(tiny_experiment(tmp_path))
    reads = []
    real_read_table, real_read_parquet = pq.read_table, __import__("pandas").read_parquet
    monkeypatch.setattr(pq, "read_table", lambda p, *a, **k: (reads.append(str(p)), real_read_table(p, *a, **k))[1])
    import pandas as pd

    monkeypatch.setattr(pd, "read_parquet", lambda p, *a, **k: (reads.append(str(p)), real_read_parquet(p, *a, **k))[1])
    run_experiment(exp, tmp_path / "out", bridge=FakeOpenDC(), quiet=True, command="test")
    assert (tmp_path / "out" / "simulation" / "timeline.parquet").is_file()
    assert not [p for p in reads if "simulation" in p], reads
