"""`kavier run`: trace -> simulation -> OpenDC export -> OpenDC -> reports.

Output folder layout (``--out DIR``)::

    DIR/experiment.json          the experiment as run (paths made absolute)
    DIR/simulation/              requests.parquet, summary.json, timeline.parquet
    DIR/opendc/                  workload/{tasks,fragments}.parquet, topology.json,
                                 experiment.json, export.json, carbon/ (the carbon
                                 trace: generated, aligned or copied), output/
                                 (OpenDC's raw output), sustainability.json; its
                                 paths are relative to it (portable)
    DIR/plots/*.png
    DIR/report.html, DIR/report.md, DIR/report.json   (report.json is written last)

All or nothing: while a run is in progress, and after it failed, ``DIR``
holds a file ``INCOMPLETE`` (with the stage and the error); ``report.json``
exists only in a complete run, and a complete run has no ``INCOMPLETE``.
Re-running into a folder that holds an earlier run replaces it.
The folder's names, markers and experiment copy are ``run_folder.py``'s.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from kavier_opendc import __version__
from kavier_opendc.base.atomic import check_output_root, check_writable_dir, jsonable, make_dirs, output_root
from kavier_opendc.base.errors import KavierError, KavierInputError, KavierRuntimeError, OutputWriteError
from kavier_opendc.base.faults import WRITTEN_FIRST, checkpoint
from kavier_opendc.base.progress import Progress
from kavier_opendc.base.units import latencies
from kavier_opendc.engine.deferral import missed_warning, simulate_deferred
from kavier_opendc.engine.outputs import SimulationOutput
from kavier_opendc.experiments.experiment import Experiment, load_trace_for, synthetic_input_files, to_jsonable
from kavier_opendc.experiments.run_folder import (
    clear_incomplete,
    mark_incomplete,
    prepare_out_dir,
    sha256_file,
    write_experiment_copy,
)
from kavier_opendc.opendc.bridge import OpenDCBridge
from kavier_opendc.opendc.datacenter import DEFAULT_START, load_datacenter
from kavier_opendc.opendc.inputs import write_opendc_inputs
from kavier_opendc.opendc.jvm import check_opendc_available
from kavier_opendc.opendc.overheads import check_embodied, embodied_carbon, facility
from kavier_opendc.opendc.results import run_opendc_dir, sustainability_record
from kavier_opendc.opendc.span import check_span, longest_gap
from kavier_opendc.reports.efficiency import efficiency_report, pool_energy
from kavier_opendc.reports.html import write_run_html
from kavier_opendc.reports.report import write_report

# --------------------------------------------------------------------------
# Progress per stage
# --------------------------------------------------------------------------


class Stages:
    """Prints one line per stage to stderr (unless quiet) and times them."""

    def __init__(self, names: list[str], *, quiet: bool = False, stream=None, prefix: str = "kavier"):
        self.names = names
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.times: dict[str, float] = {}
        self.current: str | None = None
        self.t0 = time.perf_counter()

    @property
    def tty(self) -> bool:
        return not self.quiet and getattr(self.stream, "isatty", lambda: False)()

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        k = self.names.index(name) + 1 if name in self.names else len(self.times) + 1
        self.current = name
        self.say(f"[{k}/{len(self.names)}] {name}" + (f": {detail}" if detail else ""))
        t0 = self.t0 = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - t0
        self.current = None

    def bar(self, label: str):

        p = Progress(1.0, f"      {label}", enabled=self.tty, stream=self.stream)

        def update(frac: float) -> None:
            p.update(frac)
            if frac >= 1.0:
                p.close()

        return update


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kept_performance_results(out: Path, stage: str) -> str:
    """What survives a failure after the simulation (OpenDC, export, report): the performance results."""
    sim = Path(out) / "simulation"
    if stage in ("trace", "simulate", "run") or not (sim / "summary.json").is_file():
        return ""
    return (
        f"The simulation had finished: its performance results in {sim} (requests.parquet, summary.json, "
        f"timeline.parquet) are complete; 'kavier run --no-opendc' writes the report without OpenDC."
    )


def carbon_trace_for(exp: Experiment, odc_dir: Path, makespan_s: float, start: str) -> tuple[Path | None, dict]:
    """The carbon trace the power source uses: the experiment's (resolved or
    generated into ``odc_dir/carbon/``) or None to keep the datacenter's own."""
    from kavier_opendc.opendc import carbon as C

    if exp.carbon is None or exp.carbon.kind == "datacenter":
        return None, {}
    if exp.carbon.kind != "synthetic":
        return Path(str(exp.carbon.path)), {"kind": exp.carbon.kind, "path": str(exp.carbon.path)}
    params = dict(exp.carbon.params)
    t0 = datetime.fromisoformat(start)
    midnight = t0.replace(hour=0, minute=0, second=0, microsecond=0)
    need_days = math.ceil(((t0 - midnight).total_seconds() + makespan_s) / 86400.0) + 1
    params["days"] = max(float(params.get("days", 1.0)), float(need_days))
    params.setdefault("start", midnight.strftime("%Y-%m-%dT%H:%M:%S"))
    path = odc_dir / "carbon" / "synthetic_carbon.parquet"
    C.write_synthetic_carbon_trace(path, **params)
    return path, {"kind": "synthetic", "path": str(path), "params": params}


def deferral_steps(exp: Experiment, trace):
    """The carbon steps the experiment's deferral policy chooses its windows on (None for policy none): the
    carbon trace the run will use (the experiment's, else the datacenter's), from datacenter.start to the
    latest deadline, aligned as carbon.align says."""
    import tempfile

    import numpy as np

    from kavier_opendc.opendc import carbon as C
    from kavier_opendc.opendc.carbon import fit_trace_to_run

    if exp.deferral == "none":
        return None
    d = trace.deadline_s
    horizon = float(np.nanmax(d)) if d is not None and np.isfinite(d).any() else float(trace.arrival_s[-1])
    start = (exp.datacenter or {}).get("start", DEFAULT_START)
    with tempfile.TemporaryDirectory(prefix="kavier-deferral-") as tmp:
        path, info = carbon_trace_for(exp, Path(tmp), horizon, start)
        if path is None and exp.datacenter is not None:
            path = datacenter_for(exp, None).power_source.carbon_trace
        if path is None:
            raise KavierInputError(
                f"deferral policy '{exp.deferral}' chooses windows on a carbon trace, and the experiment has none",
                source=exp.source,
                location="deferral.policy",
                expected="carbon: {trace | region | synthetic} or a datacenter with a carbon trace",
            )
        align = "none" if exp.carbon is None else exp.carbon.align
        if info.get("kind") != "synthetic":
            path, _ = fit_trace_to_run(path, start, horizon, align, Path(tmp), location="deferral.policy")
        df = C.read_carbon_trace(path)
        label = Path(info.get("path") or path).name
    return C.carbon_steps(df, start, horizon, label=label, location="deferral.policy")


def deferral_battery(exp: Experiment, gpu):
    """The datacenter's battery as the ``battery-aware`` deferral predicts it (None for another policy).

    Its static draw is every host's CPU and GPU power at zero utilisation (the power models OpenDC is given;
    ``gpu`` fills host groups that name none)."""
    from kavier_opendc.engine.deferral import Battery

    if exp.deferral != "battery-aware":
        return None
    dc = datacenter_for(exp, None).with_gpu(gpu) if exp.datacenter is not None else None
    if dc is None or dc.battery is None:
        raise KavierInputError(
            "deferral policy 'battery-aware' follows the datacenter's battery, and there is none",
            source=exp.source,
            location="datacenter.battery",
            expected="a battery {capacity_kwh, charging_speed_w, policy: {type: single, carbon_threshold}} in the "
            "datacenter, or deferral policy lowest-carbon",
        )
    b = dc.battery
    if b.policy.get("type") != "single":
        raise KavierInputError(
            f"deferral policy 'battery-aware' predicts OpenDC's single-threshold battery; this one is "
            f"'{b.policy.get('type')}'",
            source=exp.datacenter_source or exp.source,
            location="datacenter.battery.policy.type",
            expected="single (with carbon_threshold), or deferral policy lowest-carbon",
        )
    static = 0.0
    for h in dc.hosts:
        gp = h.gpu_power()
        static += h.count * (h.cpu_power.static_w + (h.gpus_per_host * gp.static_w if gp is not None else 0.0))
    return Battery(
        capacity_j=b.capacity_kwh * 3.6e6,
        charging_w=b.charging_speed_w,
        threshold=float(b.policy["carbon_threshold"]),
        initial_j=b.initial_charge_kwh * 3.6e6,
        static_w=static,
    )


def datacenter_for(exp: Experiment, carbon_path: Path | None):
    """The validated :class:`Datacenter`, with the experiment's carbon trace."""
    import copy

    dc = copy.deepcopy(exp.datacenter)
    if carbon_path is not None:
        dc.pop("region", None)
        ps = dc.setdefault("power_source", {})
        ps["carbon_trace"] = str(Path(carbon_path).resolve())
    return load_datacenter(dc, catalog=exp.catalog, base_dir=exp.datacenter_base, source=exp.datacenter_source)


def datacenter_gpus(datacenter: dict | None) -> dict[str, int]:
    """Every GPU of the datacenter OpenDC ran, per type: what its energy counts, so what the cost counts."""
    out: dict[str, int] = {}
    for h in (datacenter or {}).get("hosts", []):
        if h.get("gpu") and h.get("gpus_per_host"):
            out[h["gpu"]] = out.get(h["gpu"], 0) + int(h["count"]) * int(h["gpus_per_host"])
    return out


def _library_versions() -> dict[str, str]:
    out = {}
    for mod in ("numpy", "pandas", "pyarrow", "matplotlib", "py4j"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod)
        except Exception:  # noqa: BLE001
            pass
    return out


def _trim_sustainability(rec: dict, out: Path) -> dict:
    keep = (
        "energy_wh",
        "avg_power_w",
        "peak_power_w",
        "peak_interval_avg_power_w",
        "carbon_g",
        "duration_s",
        "grid_energy_wh",
        "gpu_energy_wh",
        "cpu_energy_wh",
        "idle_energy_wh",
        "dynamic_energy_wh",
        "carbon_intensity_avg_g_per_kwh",
        "start_epoch_ms",
        "per_host",
        "per_gpu",
        "battery",
        "tasks",
    )
    s = {k: rec.get(k) for k in keep}
    raw = rec.get("raw_output")
    if raw:
        try:
            s["raw_output"] = str(Path(raw).resolve().relative_to(out.resolve()))
        except ValueError:
            s["raw_output"] = str(raw)
    exp = rec.get("export") or {}
    s["export"] = {
        k: exp.get(k)
        for k in (
            "mode",
            "tolerance",
            "min_fragment_s",
            "interval_s",
            "start",
            "tasks",
            "fragments",
            "timeline_segments",
            "compression_ratio",
            "max_abs_utilization_error",
            "gpu_energy_linear_wh",
            "cpu_load_cores",
            "power_curve",
        )
        if k in exp
    }
    return s


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    out: Path
    report: dict
    wall_s: float


def run_experiment(
    exp: Experiment,
    out: str | os.PathLike,
    *,
    opendc: bool | None = None,
    plots: bool = True,
    quiet: bool = False,
    bridge=None,
    command: str | None = None,
    trace=None,
    stages: Stages | None = None,
    bridge_info: dict | None = None,
    partial_note: bool = True,
) -> RunResult:
    """Run an experiment end to end into ``out`` (see the module docstring).

    ``opendc``: override the experiment's ``opendc.enabled``; ``bridge``: an
    open :class:`OpenDCBridge` to reuse (sweeps), else one is started for the
    run; ``trace``: an already loaded trace (else it is loaded here, before the
    output folder is touched); ``partial_note``: a failure after the simulation
    says that its results are kept (False when the caller removes them: a
    replacement that fails puts the earlier run back).
    """

    t_start = time.perf_counter()
    started = _utc_now()
    out = Path(out)
    use_opendc = exp.opendc_enabled if opendc is None else bool(opendc)
    if use_opendc and exp.datacenter is None:
        raise KavierInputError(
            "no datacenter: OpenDC needs one",
            source=exp.source,
            location="datacenter",
            expected="a datacenter description, or --no-opendc",
        )
    names = ["trace", "simulate"] + (["export", "opendc"] if use_opendc else []) + ["report"]
    st = stages or Stages(names, quiet=quiet)
    st.names = names
    if use_opendc and bridge is None:
        check_opendc_available()
    cfg = exp.sim_config()
    cfg.validate()
    for warning in exp.notes + cfg.warnings():
        print(f"kavier: warning: {warning}", file=sys.stderr)
    # input errors first, before the output folder is touched; the folder's own problems (a file in
    # the way, no permission) before the trace is loaded
    check_writable_dir(out)
    with st.stage("trace", exp.trace.path.name if exp.trace.path is not None else "inline synthetic"):
        if trace is None:
            trace = load_trace_for(exp)
        st.say(f"      {len(trace)} requests, {trace.total_tokens():,} tokens ({trace.format})")
    if use_opendc and len(trace):  # the arrivals alone span too long for OpenDC: refused before any output
        check_span(
            float(trace.arrival_s[-1] - trace.arrival_s[0]),
            _export_interval_s(exp),
            source=exp.source,
            location="trace",
            gap=longest_gap(trace.arrival_s),
        )
    prepare_out_dir(out)
    # the run's own folder: a writer never re-creates it (or a removed sweep folder above it) once gone
    with output_root(out, create=False):
        mark_incomplete(
            out,
            f"kavier run in progress since {started} (pid {os.getpid()}); this folder is not a "
            "complete result until this file is gone.\n",
        )
        folder = _FolderIdentity(out)
        try:
            report = _run_stages(
                exp,
                out,
                trace,
                cfg,
                st,
                use_opendc,
                plots,
                quiet,
                bridge,
                bridge_info,
                command,
                started,
                t_start,
                synthetic_input_files(exp),
                folder,
            )
            folder.check()  # removed after the report stage's last write: not a complete run either
        except BaseException as exc:
            what = st.current or "run"
            if isinstance(exc, KeyboardInterrupt):
                text = f"interrupted ({str(exc) or 'KeyboardInterrupt'})"
            elif isinstance(exc, KavierError):
                text = str(exc)
            else:
                text = "".join(traceback.format_exception(exc)).strip()
            kept = _kept_performance_results(out, what) if partial_note else ""
            try:
                if not out.is_dir():  # a removed folder is not re-created just to be marked
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(out))
                mark_incomplete(
                    out,
                    f"kavier run FAILED during stage '{what}' at {_utc_now()}:\n{text}\n\n"
                    + (kept + "\n" if kept else "")
                    + "The files in this folder are partial; rerun the experiment.\n",
                )
            except OSError:  # a full or read-only disk (OutputWriteError is one): the first marker stays
                pass
            if kept and isinstance(exc, KavierRuntimeError) and not isinstance(exc, OutputWriteError):
                exc.args = (f"{exc} {kept}",) + exc.args[1:]
            raise
        clear_incomplete(out, missing_ok=False)
        return RunResult(out, report, time.perf_counter() - t_start)


class _FolderIdentity:
    """The run's folder as it was when the run began (device, inode): a folder removed (or replaced) while the
    run writes into it is noticed before the next stage and before report.json, instead of being re-created
    by the writers with only the later stages' files in it, which would look like a complete run."""

    def __init__(self, out: Path):
        self.out = out
        st = os.stat(out)
        self.ident = (st.st_dev, st.st_ino)

    def same(self) -> bool:
        try:
            st = os.stat(self.out)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.ident

    def check(self) -> None:
        check_output_root(self.out)  # names the outermost folder removed (a sweep's, above this run's)
        if not self.same():
            raise OutputWriteError.from_os(
                OSError(errno.ENOENT, os.strerror(errno.ENOENT)), self.out.resolve(), writing=False
            )


def _run_stages(
    exp: Experiment,
    out: Path,
    trace,
    cfg,
    st: Stages,
    use_opendc: bool,
    plots: bool,
    quiet: bool,
    bridge,
    bridge_info,
    command,
    started,
    t_start,
    extra_inputs,
    folder: _FolderIdentity,
) -> dict:
    """The stages after the trace is loaded: simulate, export, OpenDC, report; returns the report."""
    write_experiment_copy(out, exp)
    output = _stage_simulate(exp, trace, cfg, out / "simulation", st)
    checkpoint(WRITTEN_FIRST)
    opendc_run = OpenDCRun(bridge_info=bridge_info)
    if use_opendc:
        odc = out / "opendc"
        folder.check()
        _stage_export(exp, output, odc, st, opendc_run)
        folder.check()
        _stage_opendc(odc, out, st, bridge, opendc_run)
        _overheads(odc, opendc_run)
        _attribute_energy(output, out, odc, opendc_run)
    folder.check()
    with st.stage("report", "report.json, report.md, report.html" + (", plots" if plots else "")):
        report = _stage_report(
            exp, out, output, opendc_run, st, use_opendc, plots, command, started, t_start, extra_inputs
        )
    report["provenance"]["stages_s"] = dict(st.times)
    return report


@dataclasses.dataclass
class OpenDCRun:
    """What the export and OpenDC stages hand to the report (all None/empty without OpenDC)."""

    carbon_info: dict = dataclasses.field(default_factory=dict)  # the carbon trace used: kind, path, params
    datacenter: dict | None = None  # the datacenter as exported
    bridge_info: dict | None = None  # OpenDC, bridge and Java versions (given by a sweep, or asked)
    sustainability: dict | None = None  # energy, power, carbon (sustainability_record, trimmed)
    power: Any = None  # OpenDC's power samples
    task_map: list = dataclasses.field(default_factory=list)  # the export's tasks: replica, part, planned host
    host: Any = None  # OpenDC's host.parquet, for the plots
    dc: Any = None  # the Datacenter as exported (power models for the per-request attribution)


def _stage_simulate(exp: Experiment, trace, cfg, sim_dir: Path, st: Stages) -> SimulationOutput:
    """The serving simulation, written to ``sim_dir``; returns its outputs (in memory, for the later stages)."""

    with st.stage("simulate", exp.describe()):
        steps = deferral_steps(exp, trace)
        battery = deferral_battery(exp, cfg.gpu)
        result = simulate_deferred(
            trace, cfg, exp.deferral, steps, progress=st.tty, battery=battery, spread=exp.deferral_spread
        )
        output = SimulationOutput.from_result(result)
        output.write(sim_dir)
        summary = output.summary
        missed = missed_warning(summary)
        if missed:
            print(f"kavier: warning: {missed}", file=sys.stderr)
        st.say(
            f"      {summary['num_finished']} finished, makespan {summary['makespan_s']:.1f} s, "
            f"{summary['output_tokens_per_s']:.1f} output tok/s, TTFT "
            f"{latencies(summary['ttft_s'], ('p99',))}"
        )
    return output


def _export_interval_s(exp: Experiment) -> float:
    from kavier_opendc.opendc.datacenter import DEFAULT_EXPORT_INTERVAL_S

    value = (exp.datacenter or {}).get("export_interval_s", DEFAULT_EXPORT_INTERVAL_S)
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else float(DEFAULT_EXPORT_INTERVAL_S)
    )


def _stage_export(exp: Experiment, output: SimulationOutput, odc: Path, st: Stages, run: OpenDCRun) -> None:
    """The timeline as OpenDC's workload, the datacenter as its topology, and the carbon trace."""

    with st.stage("export", "timeline -> OpenDC tasks, fragments, topology, experiment"):
        makespan = output.summary["makespan_s"]
        # the simulated span (arrivals and the last answer) is checked before anything of OpenDC is written
        check_span(float(makespan), _export_interval_s(exp), source=exp.source, location="simulation makespan")
        make_dirs(odc)
        start = exp.datacenter.get("start", DEFAULT_START)
        carbon_path, run.carbon_info = carbon_trace_for(exp, odc, makespan, start)
        dc = datacenter_for(exp, carbon_path)
        if carbon_path is None and dc.power_source.carbon_trace is not None:
            run.carbon_info = {"kind": "datacenter", "path": str(dc.power_source.carbon_trace)}
        if run.carbon_info and run.carbon_info["kind"] != "synthetic":
            from kavier_opendc.opendc.carbon import fit_trace_to_run

            kind = run.carbon_info["kind"]
            fitted, mapping = fit_trace_to_run(
                run.carbon_info["path"],
                dc.start,
                makespan,
                "none" if exp.carbon is None else exp.carbon.align,
                odc / "carbon",
                location="datacenter" if kind == "datacenter" else f"carbon.{kind}",
            )
            if mapping:  # the run lies outside the trace's dates: an aligned copy, said in the report
                run.carbon_info.update(mapping)
                dc = datacenter_for(exp, fitted)
        run.datacenter = dc.to_dict()
        run.dc = _with_simulated_gpu(dc, output, exp)
        check_embodied(run.dc)  # before OpenDC runs: a missing embodied value is an input error
        stats = write_opendc_inputs(output, dc, odc, **exp.export_opts)
        run.task_map = list(stats.get("task_map") or [])
        st.say(
            f"      {stats['tasks']} task(s), {stats['fragments']} fragments from "
            f"{stats['timeline_segments']} timeline segments ({stats['mode']})"
        )
        note = (stats.get("power_curve") or {}).get("note")
        if note:  # an approximation that changes a number says so
            print(f"kavier: warning: {note} (opendc.export.mode: segments)", file=sys.stderr)


def _stage_opendc(odc: Path, out: Path, st: Stages, bridge, run: OpenDCRun) -> None:
    """OpenDC on the exported inputs, through ``bridge`` or a bridge started (and closed) here."""
    import pandas as pd

    with st.stage("opendc", "running OpenDC through the bridge"):
        own = bridge is None
        if own:
            bridge = OpenDCBridge(cwd=odc)
            bridge.start()
        try:
            if run.bridge_info is None:
                try:
                    run.bridge_info = bridge.info()
                except KavierError:
                    run.bridge_info = {}
            res = run_opendc_dir(odc, progress=st.bar("opendc"), bridge=bridge)
        finally:
            if own:
                bridge.close()
        run.power = res.get("power")
        sustainability = run.sustainability = _trim_sustainability(sustainability_record(res), out)
        if res.get("raw_output"):
            hp = Path(res["raw_output"]) / "host.parquet"
            if hp.is_file():
                run.host = pd.read_parquet(hp, columns=None)
        st.say(
            f"      {sustainability['energy_wh']:.2f} Wh, avg {sustainability['avg_power_w']:.0f} W, "
            f"peak {sustainability['peak_power_w']:.0f} W, {sustainability['carbon_g']:.2f} gCO2"
        )


def _with_simulated_gpu(dc, output: SimulationOutput, exp: Experiment):
    """The datacenter with host groups that name no GPU given the simulation's (as the export does)."""
    if not any(h.gpu is None for h in dc.gpu_hosts()):
        return dc
    names = {g["gpu"] for g in (output.summary.get("config") or {}).get("replica_groups") or []}
    if len(names) != 1:
        return dc
    from kavier_opendc.specs import default_catalog

    cat = exp.catalog if exp.catalog is not None else default_catalog()
    return dc.with_gpu(cat.gpu(names.pop()))


def _overheads(odc: Path, run: OpenDCRun) -> None:
    """PUE and embodied carbon (opendc/overheads.py) into the sustainability record and sustainability.json."""
    from kavier_opendc.base.atomic import write_json_atomic

    s = run.sustainability
    if s is None or run.dc is None:
        return
    extra: dict[str, Any] = {}
    fac = facility(run.dc.pue, run.power, s.get("start_epoch_ms"), float(s["energy_wh"]), float(s["carbon_g"]))
    if fac is not None:
        extra["facility"] = fac
    extra["embodied"] = embodied_carbon(run.dc, float(s.get("duration_s") or 0.0))
    s.update(extra)
    sus = odc / "sustainability.json"
    if sus.is_file():
        rec = json.loads(sus.read_text(encoding="utf-8"))
        rec.update(extra)
        write_json_atomic(sus, rec)


def _attribute_energy(output: SimulationOutput, out: Path, odc: Path, run: OpenDCRun) -> None:
    """Per-request energy and carbon consistent with OpenDC's run (opendc/attribution.py): requests.parquet's
    energy_j and carbon_g rewritten, sessions.parquet where the trace has sessions, the totals in
    sustainability.json and the report under ``attribution``."""
    import pyarrow as pa

    from kavier_opendc.base.atomic import write_json_atomic, write_parquet_atomic
    from kavier_opendc.opendc.attribution import attribute_requests, session_table

    if run.sustainability is None or output.requests is None or run.dc is None:
        return
    req = output.requests_frame()
    tl = output.timeline_frame()
    n_rep = int((output.summary.get("config") or {}).get("replicas") or 0)
    names = run.dc.gpu_types()
    gpus = dict(zip(tl["replica"].astype(int), tl["gpu"].astype(str), strict=False)) if "gpu" in tl else {}
    replica_gpu = [gpus.get(r, names[0] if names else "") for r in range(max(n_rep, max(gpus, default=-1) + 1))]
    energy, carbon, summary = attribute_requests(req, replica_gpu, run.dc, run.sustainability, run.power)
    table = output.requests
    for name, values in (("energy_j", energy), ("carbon_g", carbon)):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, type=pa.float64()))
    output.requests = table
    output._frames.clear()
    write_parquet_atomic(out / "simulation" / "requests.parquet", table)
    sessions = session_table(req, energy, carbon)
    if sessions is not None:
        write_parquet_atomic(out / "sessions.parquet", pa.Table.from_pandas(sessions, preserve_index=False))
        summary["sessions"] = "sessions.parquet"
    run.sustainability["attribution"] = summary
    sus = odc / "sustainability.json"
    if sus.is_file():
        rec = json.loads(sus.read_text(encoding="utf-8"))
        rec["attribution"] = summary
        write_json_atomic(sus, rec)


def _stage_report(
    exp: Experiment,
    out: Path,
    output: SimulationOutput,
    run: OpenDCRun,
    st: Stages,
    use_opendc: bool,
    plots: bool,
    command,
    started,
    t_start,
    extra_inputs,
) -> dict:
    """Efficiency, plots and provenance; writes report.html, report.md and report.json (last) and returns the
    report."""

    summary, requests = output.summary, output.requests_frame()
    if summary.get("disaggregation") and run.sustainability is not None:
        run.sustainability["per_pool"] = pool_energy(
            summary["disaggregation"],
            run.task_map,
            (run.sustainability.get("tasks") or {}).get("hosts") or {},
            run.sustainability.get("per_host") or [],
        )
    if summary.get("kv_transfer") and run.sustainability is not None:
        # OpenDC has no network power model here: the links' energy (engine, bytes x J/byte) stands beside
        # OpenDC's host energy, and is added to it only in the key that says so
        kv = summary["kv_transfer"]
        kv_wh = kv["energy_j"] / 3600.0
        run.sustainability["kv_transfer"] = {
            "energy_wh": kv_wh,
            "bytes_moved": kv["bytes_moved"],
            "source": "engine: bytes moved x each link's energy_j_per_byte; not simulated by OpenDC",
        }
        run.sustainability["energy_wh_with_kv_transfer"] = run.sustainability["energy_wh"] + kv_wh
    eff = efficiency_report(
        summary,
        requests,
        run.sustainability,
        gpu_counts=exp.gpu_counts(),
        prices=exp.prices,
        slo=exp.slo,
        datacenter_gpus=datacenter_gpus(run.datacenter) if run.sustainability else None,
    )
    plot_files: list[str] = []
    if plots:
        plot_files = make_run_plots(
            out,
            requests,
            output.timeline_frame(),
            exp,
            run.sustainability,
            run.power,
            run.host,
            run.carbon_info.get("path"),
        )
    inputs = _input_checksums(exp, extra_inputs, run.carbon_info)
    bi = run.bridge_info or {}
    prov = {
        "kavier_opendc_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": _library_versions(),
        "opendc_version": bi.get("opendc_version"),
        "bridge_version": bi.get("bridge_version"),
        "java_version": bi.get("java_version"),
        "seed": exp.seed,
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "cwd": os.getcwd(),
        "started_utc": started,
        "finished_utc": _utc_now(),
        "wall_s": time.perf_counter() - t_start,
        "stages_s": dict(st.times),
        "inputs": inputs,
        "engine": summary.get("engine"),
    }
    exp_summary = to_jsonable(exp)
    if run.carbon_info:
        exp_summary["carbon"] = run.carbon_info
    report = {
        "performance": summary,
        "sustainability": run.sustainability,
        "efficiency": eff,
        "provenance": prov,
        "experiment": exp_summary,
        "datacenter": run.datacenter,
        "plots": plot_files,
        "outputs": {"simulation": "simulation", "opendc": "opendc" if use_opendc else None, "report_md": "report.md"},
    }
    prov["stages_s"]["report"] = time.perf_counter() - st.t0
    write_run_html(out, jsonable(report))  # the numbers exactly as report.json will hold them (NaN as null)
    write_report(out, report)  # report.md, then report.json last
    return report


def _input_checksums(exp: Experiment, extra_inputs, carbon_info: dict) -> list[dict]:
    """Role, path, sha256 and size of every input file of the run (each once)."""
    inputs = []
    seen = set()
    gen_carbon = carbon_info.get("kind") == "synthetic"
    for role, p in (
        list(exp.input_files)
        + list(extra_inputs)
        + ([("carbon (generated)", Path(carbon_info["path"]))] if gen_carbon else [])
    ):
        p = Path(p)
        key = (role, str(p.resolve()))
        if key in seen or not p.is_file():
            continue
        seen.add(key)
        inputs.append({"role": role, "path": str(p.resolve()), "sha256": sha256_file(p), "bytes": p.stat().st_size})
    return inputs


def make_run_plots(
    out: Path, requests, timeline, exp: Experiment, sustainability, power, host, carbon_path: str | None = None
) -> list[str]:
    """All PNG plots of a run under ``out/plots`` (``requests`` and ``timeline`` as DataFrames); returns paths
    relative to ``out``."""
    from kavier_opendc.reports import plots as P

    d = out / "plots"
    files = [
        P.latency_cdfs(requests, d / "latency_cdf.png", exp.slo),
        P.gpu_utilization(timeline, d / "gpu_utilization.png"),
        P.cache_hit_ratio(requests, d / "cache_hit_ratio.png"),
    ]
    if sustainability is not None:
        files.append(P.host_power(host, d / "power.png"))
        trace = None
        if carbon_path:
            from kavier_opendc.opendc.carbon import read_carbon_trace

            try:
                trace = read_carbon_trace(carbon_path)
            except KavierError:
                trace = None
        files.append(P.carbon(power, d / "carbon.png", sustainability.get("start_epoch_ms"), trace))
        files.append(P.energy_breakdown(sustainability, d / "energy_breakdown.png"))
    return [str(Path(f).relative_to(out)) for f in files]


ProgressFn = Callable[[float], object]
