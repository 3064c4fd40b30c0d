"""Running many `kavier run`s on a Dask cluster: the engine under `kavier sweep` and `kavier plan`.

The driver (the `kavier` process) submits one Dask task per run and writes
every output itself; workers only compute. Two kinds of cluster:

- **local** (the default): ``--jobs N`` worker processes on this machine, one
  thread each (a run is CPU-bound Python). Workers share the driver's file
  system, so a run reads its inputs where they are and writes straight into
  ``DIR/runs/<id>/``.
- **remote** (``--scheduler tcp://HOST:PORT``): an existing cluster whose
  workers may not share the driver's file system. Every input file of a run
  (trace, synthetic description and the files it names, catalogues,
  datacenter, carbon trace) travels to the workers once, scattered by content
  hash and copied to every worker (a killed worker takes no input's only copy
  with it); a worker whose own copy at the same path has the same SHA-256 uses it,
  otherwise it mirrors the files under a worker-local folder (relative
  references between them keep working) and rewrites the document's paths.
  The run is written into a worker-local temporary folder and comes back to
  the driver as a tar archive, which the driver unpacks into ``runs/<id>/``.

Each worker keeps one OpenDC JVM for all its runs (:func:`worker_bridge`),
closed by a worker plugin when the worker shuts down (and at exit; the JVM
also exits when its worker dies, because its stdin closes).

Failures: an exception inside a run is that run's failure (recorded, never
retried: the same configuration fails the same way). A worker that dies loses
only the run it was executing: the scheduler gives it to another worker; a
local cluster allows this once (``distributed.scheduler.allowed-failures``
= 1) and then reports the run as failed; a remote scheduler applies its own
setting (Dask's default is 3). A run the cluster cancels on its own (a killed
worker's task can come back "already forgotten") is submitted once more.

Progress: workers announce the start of each run on a Dask event topic, so
the driver knows which runs are running, where, and since when; every start,
finish and failure goes to the caller's log.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import logging
import multiprocessing
import os
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kavier_opendc.base.atomic import make_dirs, output_root, public_mode
from kavier_opendc.base.errors import KavierError, KavierRuntimeError, OutputWriteError
from kavier_opendc.experiments.experiment import load_experiment, synthetic_input_files
from kavier_opendc.experiments.pipeline import run_experiment
from kavier_opendc.experiments.run_folder import mark_failed_run, sha256_file
from kavier_opendc.opendc.bridge import OpenDCBridge, OpenDCBridgeError

TOPIC = "kavier-run"
PLUGIN_NAME = "kavier-opendc-bridge"
# What a local cluster allows a run whose worker died: one more try.
LOCAL_ALLOWED_FAILURES = 1
# The local cluster's settings. NOTE: a run is one long CPU-bound task, so Dask's statistical profiler
# (sampling every worker thread every 10 ms), frequent event-loop and system monitoring and work stealing only
# take CPU (and the GIL) from the runs on a small machine; no memory limit, as with the process pool this replaced.
LOCAL_CONFIG = {
    "distributed.scheduler.allowed-failures": LOCAL_ALLOWED_FAILURES,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.tick.interval": "500ms",  # the event-loop health check (default every 20 ms)
    "distributed.admin.tick.limit": "30s",
    "distributed.scheduler.work-stealing": False,  # queued tasks go to a worker only when it is free anyway
    # the workers' environment as this process has it; Dask would set MALLOC_TRIM_THRESHOLD_ (glibc returns
    # freed memory at once, slowing allocation-heavy pandas and numpy code) and one BLAS thread
    "distributed.nanny.pre-spawn-environ": {},
    # workers forked from a fork server start and import faster than spawned ones (and stop faster)
    "distributed.worker.multiprocessing-method": "forkserver"
    if "forkserver" in multiprocessing.get_all_start_methods()
    else "spawn",
}


@dataclass
class RunTask:
    """One run to do: an experiment document (absolute paths) and where its output belongs on the driver."""

    id: str
    document: dict
    base_dir: str
    source: str
    run_dir: Path
    opendc: bool | None = None  # None: as the document says
    plots: bool = False
    command: str = "kavier"


@dataclass
class RunRecord:
    """What came back from one run: ``status`` is "done" or "failed"."""

    task: RunTask
    status: str
    wall_s: float | None = None
    error: str = ""
    pid: int | None = None
    worker: str | None = None
    start: float | None = None
    end: float | None = None

    def log_fields(self) -> dict:
        return {
            "id": self.task.id,
            "pid": self.pid,
            "worker": self.worker,
            "start": self.start,
            "end": self.end,
            **({"wall_s": self.wall_s} if self.wall_s is not None else {}),
            **({"error": self.error} if self.error else {}),
        }


# --------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------

# This worker process's OpenDC bridge and what it says about itself; None until the first run that needs it.
_BRIDGE = None
_BRIDGE_INFO: dict | None = None
_BRIDGE_LOCK = threading.RLock()
# path -> (size, mtime_ns, sha256) of input files this worker has hashed, so a big trace is hashed once.
_HASHES: dict[str, tuple[int, int, str]] = {}


def close_worker_bridge() -> None:
    """Stop this worker's JVM, if it has one."""
    global _BRIDGE
    if _BRIDGE is not None:
        try:
            _BRIDGE.close()
        finally:
            _BRIDGE = None


def worker_bridge():
    """This worker's OpenDC JVM, started on first use and reused for all its runs."""
    global _BRIDGE, _BRIDGE_INFO
    with _BRIDGE_LOCK:  # the prestart thread and a run may ask at once
        if _BRIDGE is not None and not _BRIDGE.alive:
            close_worker_bridge()
        if _BRIDGE is None:
            bridge = OpenDCBridge()
            bridge.start()
            _BRIDGE = bridge
            atexit.register(close_worker_bridge)
            try:
                _BRIDGE_INFO = bridge.info()
            except KavierError:
                _BRIDGE_INFO = {}
        return _BRIDGE, _BRIDGE_INFO


def _prestart_bridge() -> None:
    try:
        worker_bridge()
    except Exception:  # noqa: BLE001 - the first run that needs the JVM starts it again and reports why not
        pass


@functools.cache
def _bridge_owner_class() -> type:
    """The worker plugin class :data:`BridgeOwner`, made on first use: distributed is imported by sweeps and
    plans only, never by a plain `kavier run` (it costs about half a second)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class BridgeOwner(WorkerPlugin):
        """Owns the worker's OpenDC JVM: with ``prestart``, boots it in the background as the worker joins (so
        it is up, or nearly, when the first run needs it); closes it when the worker shuts down."""

        def __init__(self, prestart: bool = False):
            self.prestart = prestart

        def setup(self, worker) -> None:  # noqa: ARG002 - Dask's signature
            if self.prestart:
                threading.Thread(target=_prestart_bridge, name="kavier-bridge-prestart", daemon=True).start()

        def teardown(self, worker) -> None:  # noqa: ARG002 - Dask's signature
            close_worker_bridge()

    # pickled by reference, as kavier_opendc.experiments.executor.BridgeOwner (module __getattr__ below)
    BridgeOwner.__module__, BridgeOwner.__qualname__ = __name__, "BridgeOwner"
    return BridgeOwner


def __getattr__(name: str) -> Any:
    if name == "BridgeOwner":
        return _bridge_owner_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def file_sha256(path: Path) -> str:
    """:func:`sha256_file`, remembered per path while the file's size and mtime stay the same."""
    st = path.stat()
    key = str(path.resolve())
    hit = _HASHES.get(key)
    if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
        return hit[2]
    digest = sha256_file(path)
    _HASHES[key] = (st.st_size, st.st_mtime_ns, digest)
    return digest


def _replace_strings(x: Any, mapping: dict[str, str]) -> Any:
    if isinstance(x, str):
        return mapping.get(x, x)
    if isinstance(x, dict):
        return {k: _replace_strings(v, mapping) for k, v in x.items()}
    if isinstance(x, list):
        return [_replace_strings(v, mapping) for v in x]
    return x


def _local_inputs(payload: dict, files: dict[str, bytes]) -> tuple[dict, dict[str, str]]:
    """The document to run here: as sent when this worker sees every input file with the same content,
    else with its paths pointing at a worker-local mirror of the files (written once per content); and
    the mirror's paths mapped back to the driver's (for what the run records)."""
    inputs: list[tuple[str, str]] = payload["inputs"]
    same = True
    for path, sha in inputs:
        p = Path(path)
        try:
            same = p.is_file() and file_sha256(p) == sha
        except OSError:
            same = False
        if not same:
            break
    if same:
        return payload["document"], {}
    root = Path(tempfile.gettempdir()) / f"kavier-inputs-{os.getuid() if hasattr(os, 'getuid') else 0}"
    mapping = {}
    for path, sha in inputs:
        # mirrored under a folder named by the run's whole input set, so files that refer to each other
        # by relative paths keep finding each other, and different contents never collide
        target = root / _input_set_id(inputs) / Path(path).resolve().relative_to(Path(path).resolve().anchor)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(files[sha])
            os.replace(tmp, target)
        mapping[path] = str(target)
        mapping[str(Path(path).resolve())] = str(target)
    back = {local: str(Path(path).resolve()) for path, local in mapping.items()}
    return _replace_strings(payload["document"], mapping), back


#: the run folder's files that may name paths (the rest is data: Parquet, PNG)
_TEXT_SUFFIXES = (".json", ".md", ".yaml", ".yml", ".txt", ".csv", "")


def _record_driver_paths(run_dir: Path, replacements: dict[str, str]) -> None:
    """A remote run's folder names the worker's temporary run folder and input mirror; once unpacked on
    the driver those are gone, so the recorded paths are rewritten to the driver's (longest first)."""
    order = sorted(replacements, key=len, reverse=True)
    for f in sorted(run_dir.rglob("*")):
        if not f.is_file() or f.suffix not in _TEXT_SUFFIXES:
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        new = text
        for old in order:
            new = new.replace(old, replacements[old])
        if new != text:
            f.write_text(new, encoding="utf-8")


def _input_set_id(inputs: list[tuple[str, str]]) -> str:
    return hashlib.sha256(repr(sorted(inputs)).encode()).hexdigest()[:16]


def _pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for item in sorted(folder.iterdir()):
            tar.add(item, arcname=item.name)
    return buf.getvalue()


def _announce(event: str, payload: dict, **extra) -> dict:
    from distributed import get_worker

    try:
        worker = get_worker()
        name = str(worker.name)
    except ValueError:  # not on a Dask worker (called directly, e.g. in a test)
        worker, name = None, None
    # NOTE: not "worker": the scheduler sets that key of a worker's event to the worker's address
    rec = {"event": event, "id": payload["id"], "pid": os.getpid(), "worker_name": name, "time": time.time(), **extra}
    if worker is not None:
        try:
            worker.log_event(TOPIC, rec)
        except Exception:  # noqa: BLE001 - progress only; never fail a run for it
            pass
    return rec


def execute(payload: dict, files: dict[str, bytes] | None = None) -> dict:
    """On a worker: run one experiment. Returns a plain record; with ``files`` (a remote cluster) the inputs
    are checked or mirrored here and the output folder comes back as ``archive`` (tar.gz bytes)."""

    start = _announce("start", payload)
    out: dict[str, Any] = {"pid": start["pid"], "worker": start["worker_name"], "start": start["time"]}
    ship = files is not None
    run_dir = Path(tempfile.mkdtemp(prefix=f"kavier-run-{payload['id']}-")) if ship else Path(payload["run_dir"])
    back: dict[str, str] = {}  # the worker's input mirror -> the driver's paths

    def batch_root():
        # the driver made runs/ (a local worker sees the same folder): this worker writes below it only while
        # it is there, so a batch folder removed meanwhile is never re-created with the later runs in it
        return contextlib.nullcontext() if ship else output_root(run_dir.parent, create=False)

    try:
        with batch_root():
            document, back = _local_inputs(payload, files) if ship else (payload["document"], {})
            opendc = payload["opendc"]
            exp = load_experiment(document, base_dir=payload["base_dir"], source=payload["source"], opendc=opendc)
            use_opendc = exp.opendc_enabled if opendc is None else opendc
            bridge, info = worker_bridge() if use_opendc else (None, None)
            res = run_experiment(
                exp,
                run_dir,
                opendc=opendc,
                plots=payload["plots"],
                quiet=True,
                bridge=bridge,
                bridge_info=info,
                command=payload["command"],
            )
            out.update(status="done", wall_s=res.wall_s)
    except Exception as exc:  # noqa: BLE001 - the run's failure, reported to the driver
        if isinstance(exc, OpenDCBridgeError):
            close_worker_bridge()  # a fresh JVM for the next run
        out.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, OutputWriteError):  # a full, read-only or vanished output: the driver stops
            out.update(write_fault=str(exc), errno=exc.errno)
        else:
            with contextlib.suppress(OSError), batch_root():
                mark_failed_run(run_dir, out["error"])
    if ship:
        try:
            if run_dir.is_dir():
                _record_driver_paths(
                    run_dir,
                    {**back, str(run_dir): str(payload["run_dir"]), str(run_dir.resolve()): str(payload["run_dir"])},
                )
            out["archive"] = _pack(run_dir) if run_dir.is_dir() else None
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    out["end"] = time.time()
    return out


# --------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------


def input_files(task: RunTask) -> list[Path]:
    """Every file a run reads (each once): the experiment's inputs and the files a synthetic workload names."""

    exp = load_experiment(task.document, base_dir=task.base_dir, source=task.source, opendc=task.opendc)
    seen: dict[str, Path] = {}
    for _, p in list(exp.input_files) + list(synthetic_input_files(exp)):
        p = Path(p)
        if p.is_file():
            seen.setdefault(str(p.resolve()), p.resolve())
    return list(seen.values())


def _extract_plain(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack files and folders only, all inside ``dest``: tarfile's "data" filter, or (Python 3.11.0-3.11.3,
    e.g. Debian bookworm's, which lack it) the same refusal of links, devices and paths leading out."""
    members = tar.getmembers()
    for m in members:
        if not (m.isfile() or m.isdir()) or Path(m.name).is_absolute() or ".." in Path(m.name).parts:
            raise KavierRuntimeError(f"a run archive holds {m.name!r}, which is not a plain file inside its folder")
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=members, filter="data")
    else:
        tar.extractall(dest, members=members)  # noqa: S202 - every member was checked above


def unpack_run(archive: bytes, run_dir: Path) -> None:
    """Replace ``run_dir`` by the run folder in ``archive`` (unpacked beside it, then renamed). Within the
    sweep's or plan's output root (the driver declared it) its ``runs/`` is made only while that is there."""
    make_dirs(run_dir.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.incoming-", dir=run_dir.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            _extract_plain(tar, stage)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        public_mode(stage, directory=True)
        os.replace(stage, run_dir)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _root_cause(exc: BaseException) -> str:
    """An exception and the one it came from, innermost last ("Nanny failed to start (ModuleNotFoundError:
    No module named 'x')")."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(nxt)
    text = str(exc).rstrip(".") or type(exc).__name__
    inner = chain[-1]
    return text if inner is exc else f"{text} ({type(inner).__name__}: {inner})"


class RunExecutor:
    """Runs :class:`RunTask`s on a local or remote Dask cluster and hands back :class:`RunRecord`s as they finish.

    Use as a context manager; :meth:`submit` any time (also while iterating :meth:`completed`).
    ``prestart_opendc``: the runs will need OpenDC, so each worker boots its JVM as it joins.
    ``log(event=..., **fields)`` receives start, done and failed events; ``say(text)`` one progress line per
    finished run with the counts of runs done, running, failed and queued.
    """

    def __init__(
        self,
        *,
        jobs: int = 2,
        scheduler: str | None = None,
        prestart_opendc: bool = False,
        log: Callable[..., None] | None = None,
        say: Callable[[str], None] | None = None,
    ):
        self.jobs = max(1, int(jobs))
        self.scheduler = scheduler
        self.remote = scheduler is not None
        self.prestart_opendc = prestart_opendc
        self.log = log or (lambda **_: None)
        self.say = say or (lambda _text: None)
        self.client = None
        self.cluster = None
        self._futures: dict[str, RunTask] = {}  # Dask key -> the task it runs
        self._resubmitted: dict[str, int] = {}  # run id -> times the cluster lost it and it was sent again
        self._scattered: dict[str, Any] = {}  # sha256 -> the future of that file's bytes on the cluster
        self._running: dict[str, dict] = {}  # run id -> its start event (started, not yet back)
        self._finished: set[str] = set()  # run ids whose record came back
        self._lock = threading.Lock()
        self._as_completed = None
        self.done = self.failed = 0

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> "RunExecutor":
        import dask
        from distributed import Client, LocalCluster, as_completed

        if self.remote:
            try:
                self.client = Client(self.scheduler, timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise KavierRuntimeError(f"cannot reach the Dask scheduler {self.scheduler}: {exc}") from None
        else:
            try:
                with dask.config.set(LOCAL_CONFIG):
                    # CRITICAL: Dask's own log records (a worker's traceback) would come before kavier's error
                    self.cluster = LocalCluster(
                        n_workers=self.jobs,
                        threads_per_worker=1,
                        processes=True,
                        memory_limit=0,
                        dashboard_address=None,
                        # the scheduler's HTTP server (health and metrics routes) still starts without the
                        # dashboard, by default on port 8787: a free port of its own instead, so that two
                        # sweeps at once print no "Port 8787 is already in use" warning
                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                        silence_logs=logging.CRITICAL,
                    )
                    self.client = Client(self.cluster)
            except Exception as exc:  # noqa: BLE001 - Dask raises many kinds; the root cause is what matters
                self.close()
                raise KavierRuntimeError(
                    f"could not start the local Dask cluster of {self.jobs} worker process(es): {_root_cause(exc)}. "
                    "Check the Dask configuration (DASK_* environment variables, ~/.config/dask) and that this "
                    "Python environment can start new processes; nothing was run"
                ) from None
        self.client.register_plugin(_bridge_owner_class()(self.prestart_opendc), name=PLUGIN_NAME)
        self.client.subscribe_topic(TOPIC, self._on_event)
        self._as_completed = as_completed()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self.client is not None:
            try:
                for fut in list(self._as_completed.futures) if self._as_completed is not None else []:
                    fut.cancel()
                if self.remote:
                    try:
                        self.client.unregister_worker_plugin(PLUGIN_NAME)  # closes the JVMs of remote workers
                    except Exception:  # noqa: BLE001 - best effort on the way out
                        pass
                self.client.close()
            finally:
                self.client = None
        if self.cluster is not None:
            try:
                self.cluster.close()
            finally:
                self.cluster = None

    def workers(self) -> int:
        """Workers connected now."""
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {})) if self.client else 0

    # ----------------------------------------------------------------- events
    def _on_event(self, event) -> None:
        _, rec = event if isinstance(event, tuple) else (None, event)
        if not isinstance(rec, dict) or rec.get("event") != "start":
            return
        with self._lock:
            if rec["id"] in self._finished:
                return  # a late announcement of a run already back
            self._running[rec["id"]] = rec
        try:
            self.log(
                event="start", id=rec["id"], pid=rec.get("pid"), worker=rec.get("worker_name"), start=rec.get("time")
            )
        except OSError:  # on Dask's event thread, progress only: a removed folder is reported by the driver
            pass

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def pending(self) -> int:
        return len(self._futures)

    # ----------------------------------------------------------------- submitting
    def _scatter_inputs(self, task: RunTask) -> tuple[list[tuple[str, str]], dict[str, Any] | None]:
        if not self.remote:  # the local workers share this file system
            return [], None
        paths = input_files(task)
        inputs = [(str(p), file_sha256(p)) for p in paths]
        files = {}
        for p, (_, sha) in zip(paths, inputs, strict=True):
            held = self._scattered.get(sha)
            if held is None or held.status != "finished":
                # on every worker (broadcast): a killed worker must not take a sweep's only copy of an input
                # with it; a copy the cluster lost anyway (all holders died) is sent again
                [self._scattered[sha]] = self.client.scatter([p.read_bytes()], hash=False, broadcast=True)
            files[sha] = self._scattered[sha]
        return inputs, files

    def submit(self, task: RunTask) -> None:
        """Queue one run on the cluster."""
        inputs, files = self._scatter_inputs(task)
        payload = {
            "id": task.id,
            "document": task.document,
            "base_dir": task.base_dir,
            "source": task.source,
            "run_dir": str(task.run_dir),
            "opendc": task.opendc,
            "plots": task.plots,
            "command": task.command,
            "inputs": inputs,
        }
        key = f"kavier-run-{task.id}-{uuid.uuid4().hex[:8]}"
        fut = self.client.submit(execute, payload, files, key=key, pure=False)
        self._futures[fut.key] = task
        self._as_completed.add(fut)

    # ----------------------------------------------------------------- results
    def completed(self) -> Iterator[RunRecord]:
        """Records of the submitted runs as they finish (also runs submitted meanwhile), outputs written."""
        while self._futures:
            yield self.next_completed()

    def next_completed(self) -> RunRecord:
        """The next run to finish (blocks until one does; there must be one pending), its output written."""
        from distributed.client import FutureCancelledError

        while True:
            fut = next(self._as_completed)
            task = self._futures.pop(fut.key)
            try:
                out = fut.result()
            except KeyboardInterrupt:
                raise
            except FutureCancelledError as exc:
                # only close() cancels, and it is never followed by this call: the cluster lost the task
                # (a killed worker's run can come back 'already forgotten'); it is sent again, once
                tries = self._resubmitted.get(task.id, 0)
                if tries < 1:
                    self._resubmitted[task.id] = tries + 1
                    self.log(event="resubmit", id=task.id, reason=str(exc))
                    self.submit(task)
                    continue
                out = {"status": "failed", "error": f"the cluster cancelled the run twice: {exc}"}
            except Exception as exc:  # noqa: BLE001 - a worker died (KilledWorker) or the task could not run
                out = {"status": "failed", "error": f"worker failed: {type(exc).__name__}: {exc}"}
            break
        with self._lock:
            started = self._running.pop(task.id, None) or {}
            self._finished.add(task.id)
        archive = out.pop("archive", None)
        if out.get("write_fault"):
            # the output cannot be written (the disk is full, read-only or the folder gone): no later run
            # could write its own, so the batch stops here (the caller's `with` closes the cluster)
            err = OutputWriteError(
                f"run {task.id}: {out['write_fault']}. The other runs were stopped, as they would write to the "
                "same place"
            )
            err.errno = out.get("errno")
            raise err
        if archive:
            unpack_run(archive, Path(task.run_dir))
        rec = RunRecord(
            task,
            out.get("status", "failed"),
            wall_s=out.get("wall_s"),
            error=out.get("error", ""),
            pid=out.get("pid", started.get("pid")),
            worker=out.get("worker", started.get("worker_name")),
            start=out.get("start", started.get("time")),
            end=out.get("end", time.time()),
        )
        if rec.status == "done":
            self.done += 1
        else:
            self.failed += 1
        self.log(event=rec.status, **rec.log_fields())
        return rec

    def progress(self, rec: RunRecord, total: int | None = None) -> str:
        """One line about a finished run and where the whole batch stands."""
        what = f"done in {rec.wall_s or 0:.1f} s" if rec.status == "done" else f"FAILED: {rec.error}"
        where = f"worker {rec.worker}, pid {rec.pid}" if rec.worker is not None else f"pid {rec.pid}"
        counts = f"{self.done} done, {self.running} running, {self.failed} failed"
        if total is not None:
            counts += f", {max(0, total - self.done - self.failed - self.running)} queued"
        return f"[{counts}] {rec.task.id} {what} ({where})"


__all__ = [
    "RunExecutor",
    "RunRecord",
    "RunTask",
    "close_worker_bridge",
    "execute",
    "input_files",
    "unpack_run",
    "worker_bridge",
]
