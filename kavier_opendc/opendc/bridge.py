"""The Py4J session with the real OpenDC simulator on the JVM: start the bridge jar, run experiments, stop it.

:mod:`kavier_opendc.opendc.jvm` finds the Java and the jar (and builds the jar); this module starts that jar
as a child process, talks to it through Py4J and always stops it again.

Typical use::

    from kavier_opendc.opendc.bridge import run_opendc_experiment
    out = run_opendc_experiment(Path("run/opendc/experiment.json"), progress=print)
    # out == <outputFolder>/<name>; OpenDC wrote raw-output/<scenario>/seed=<n>/host.parquet etc. in it

or, to run several experiments in one JVM::

    with OpenDCBridge() as bridge:
        a = bridge.run("a/experiment.json")
        b = bridge.run("b/experiment.json")

Security: the gateway listens on 127.0.0.1 on a port the OS picks, and only accepts a client that presents
a random token, handed to the JVM in the environment (``KAVIER_BRIDGE_TOKEN``), never on its command line.

Every :meth:`OpenDCBridge.run` has a watchdog: when the run's progress (finished (scenario, seed) runs,
the bridge's phase, OpenDC's hourly task counts: see :class:`_Watch`) has not advanced for the stall
limit (``stall_timeout``, else ``$KAVIER_OPENDC_STALL_S``, else 300 s), the JVM is killed and
:class:`OpenDCStallError` raised; the bridge is then closed and a new one is needed.

The command line is ``kavier bridge build|check|run`` (:mod:`kavier_opendc.cli.bridge`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Iterable

from kavier_opendc.base.errors import KavierError, KavierInputError, KavierRuntimeError
from kavier_opendc.base.faults import JVM_STARTING, OPENDC_STARTING, checkpoint
from kavier_opendc.base.limits import OPENDC_STALL_ENV, opendc_stall_s
from kavier_opendc.opendc.jvm import (
    BUILD_COMMAND,
    MIN_JAVA_VERSION,
    check_bridge_jar,
    find_bridge_jar,
    find_java,
    java_version,
)

__all__ = [
    "OpenDCBridge",
    "OpenDCBridgeError",
    "OpenDCInputError",
    "OpenDCStallError",
    "run_opendc_experiment",
    "seed_output_dirs",
]

TOKEN_ENV = "KAVIER_BRIDGE_TOKEN"
JVM_OPTS_ENV = "KAVIER_BRIDGE_JVM_OPTS"
READY_PREFIX = "KAVIER_BRIDGE_READY"

# Kinds of Java-side BridgeException that are caused by the user's input files.
_INPUT_KINDS = {"EXPERIMENT_NOT_FOUND", "BAD_EXPERIMENT", "BAD_TOPOLOGY", "BAD_WORKLOAD", "BAD_CARBON_TRACE"}
_KIND_RE = re.compile(r"^\[([A-Z_]+)\]\s*(.*)$", re.S)

ProgressCallback = Callable[[float], object]

# Py4J logs a traceback at ERROR for each retry to reach a JVM that went away under a call (a crash, a
# JVM killed from outside, or the watchdog's kill); the bridge reports every such failure in its own
# one-paragraph error, so Py4J's records about the ports of this process's bridges are dropped.
_OWN_PORTS: set[int] = set()


def _drop_gone_jvm_records(record: logging.LogRecord) -> bool:
    if not _OWN_PORTS:
        return True
    text = str(record.msg)  # "An error occurred while trying to connect to the Java server (HOST:PORT)"
    return not any(text.endswith(f":{port})") for port in _OWN_PORTS)


def _drop_py4j_root_records(record: logging.LogRecord) -> bool:
    # Py4J also logs "Exception while sending command." through the root logger (logging.exception) when
    # the JVM's socket breaks under a call; the bridge's own error says the same in one paragraph
    if not _OWN_PORTS or record.exc_info is None:
        return True
    exc = record.exc_info[1]
    return not (exc is not None and type(exc).__module__.startswith("py4j"))


logging.getLogger("py4j.java_gateway").addFilter(_drop_gone_jvm_records)
logging.getLogger().addFilter(_drop_py4j_root_records)


def _last_words(tail: str, lines: int = 5) -> str:
    """The JVM's last stderr lines as one sentence of the error's paragraph (the whole tail is kept in the
    error's ``stderr_tail``)."""
    kept = [line.strip() for line in tail.splitlines() if line.strip()][-lines:]
    return f"Its last stderr lines: {' / '.join(kept)}." if kept else "It wrote nothing to stderr."


class OpenDCBridgeError(KavierRuntimeError):
    """The JVM or OpenDC failed (not the user's input). ``kind`` is the bridge's failure kind."""

    def __init__(self, message: str, *, kind: str = "BRIDGE", stderr_tail: str = ""):
        super().__init__(message)
        self.kind = kind
        self.stderr_tail = stderr_tail


class OpenDCInputError(KavierInputError):
    """OpenDC rejected an input file (experiment, topology, workload, carbon trace)."""

    def __init__(self, message: str, *, kind: str, source: str | None = None):
        super().__init__(message, source=source)
        self.kind = kind


class OpenDCStallError(OpenDCBridgeError):
    """The watchdog stopped an OpenDC run whose progress did not advance for ``stalled_s`` seconds."""

    def __init__(self, message: str, *, stalled_s: float, limit_s: float, last_progress: str, stderr_tail: str = ""):
        super().__init__(message, kind="STALLED", stderr_tail=stderr_tail)
        self.stalled_s = stalled_s
        self.limit_s = limit_s
        self.last_progress = last_progress


# OpenDC's ComputeMetricReader logs, once per simulated hour, a block of task counts:
#     Metrics after 32 hours:
#         Tasks Total: 2 / Tasks Active: 0 / Tasks Pending: 2 / Tasks Completed: 0 / Tasks Terminated: 0
_HOURS_RE = re.compile(r"Metrics after (\d+) hours?")
_COUNT_RE = re.compile(r"Tasks (Total|Active|Pending|Completed|Terminated):\s*(\d+)")


class _Watch:
    """What the watchdog knows about one OpenDC run, fed by the poll loop and by the JVM's output lines.

    The run *advances* when the fraction of finished (scenario, seed) runs or the bridge's phase changes,
    when OpenDC's hourly metrics show a task submitted, finished or terminated, or when simulated time
    moves on while a task runs (or none waits). Simulated time moving on with tasks pending and none
    active is not progress: that is how OpenDC spins for ever on a task no host can take.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_advance = time.monotonic()
        self.fraction = 0.0
        self.phase = ""
        self.hours: int | None = None  # the last metrics block's simulated hours
        self.counts: dict[str, int] = {}  # and its task counts
        self.advanced_hours: int | None = None  # simulated hours at the last advance
        self._block: dict[str, int] = {}
        self._block_hours: int | None = None
        self.advances: list[float] = [self.last_advance]  # monotonic times of the advances (newest 1000)
        self.stalled_s: float | None = None  # set by the watchdog when it stops the run

    def _advance(self) -> None:
        self.last_advance = time.monotonic()
        self.advanced_hours = self.hours
        self.advances.append(self.last_advance)
        del self.advances[:-1000]

    def note(self, fraction: float, phase: str) -> None:
        with self._lock:
            if fraction != self.fraction or phase != self.phase:
                self.fraction, self.phase = fraction, phase
                self._advance()

    def feed(self, line: str) -> None:
        if "Metrics after" not in line and "Tasks " not in line:
            return
        with self._lock:
            m = _HOURS_RE.search(line)
            if m:
                self._block_hours, self._block = int(m.group(1)), {}
                return
            m = _COUNT_RE.search(line)
            if m is None or self._block_hours is None:
                return
            self._block[m.group(1)] = int(m.group(2))
            if m.group(1) == "Terminated":  # the block's last line
                self._end_block(self._block_hours, self._block)
                self._block_hours, self._block = None, {}

    def _end_block(self, hours: int, counts: dict[str, int]) -> None:
        before, before_hours = self.counts, self.hours
        self.hours, self.counts = hours, dict(counts)
        moved = any(counts.get(k) != before.get(k) for k in ("Total", "Completed", "Terminated"))
        spinning = counts.get("Active", 0) == 0 and counts.get("Pending", 0) > 0
        if moved or (before_hours is not None and hours > before_hours and not spinning):
            self._advance()

    def idle_s(self) -> float:
        with self._lock:
            return time.monotonic() - self.last_advance

    def describe(self) -> str:
        """The last progress reached, in words."""
        with self._lock:
            parts = [f"{self.fraction:.0%} of the (scenario, seed) runs finished"]
            if self.phase:
                parts.append(f"OpenDC was {self.phase}")
            if self.hours is not None:
                c = self.counts
                parts.append(
                    f"its last metrics, after {self.hours} simulated hours, count {c.get('Total', 0)} "
                    f"task(s): {c.get('Active', 0)} active, {c.get('Pending', 0)} pending, "
                    f"{c.get('Completed', 0)} completed, {c.get('Terminated', 0)} terminated"
                )
                if self.advanced_hours is not None and self.advanced_hours != self.hours:
                    parts.append(f"no task has run or finished since simulated hour {self.advanced_hours}")
            else:
                parts.append("it had logged no task metrics (it logs them once per simulated hour)")
            return "; ".join(parts)


def seed_output_dirs(output_folder: str | os.PathLike[str]) -> list[Path]:
    """The ``raw-output/<scenario>/seed=<n>`` folders of an experiment output folder, sorted."""
    root = Path(output_folder) / "raw-output"

    def key(p: Path) -> tuple:
        scen = p.parent.name
        seed = p.name.split("=", 1)[-1]
        return (int(scen) if scen.isdigit() else scen, int(seed) if seed.isdigit() else seed)

    return sorted((p for p in root.glob("*/seed=*") if p.is_dir()), key=key)


# ---------------------------------------------------------------------------------------------- JVM


def _stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Waits ``grace`` seconds for the process, then terminates, then kills it."""
    if proc.poll() is not None:
        return
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        proc.terminate()
        proc.wait(timeout=3.0)
        return
    except (subprocess.TimeoutExpired, OSError):
        pass
    try:
        proc.kill()
        proc.wait(timeout=5.0)
    except (subprocess.TimeoutExpired, OSError):
        pass


def _finalize_process(proc: subprocess.Popen) -> None:
    """Last-resort cleanup when an OpenDCBridge is garbage-collected or the interpreter exits."""
    if proc.poll() is None:
        try:
            proc.kill()
            proc.wait(timeout=5.0)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class OpenDCBridge:
    """A JVM running the Kavier-OpenDC bridge, used as a context manager.

    The JVM is always stopped on exit from the ``with`` block, whether it ends normally, by an exception
    or by KeyboardInterrupt: the bridge asks the JVM to shut down, closes its stdin (the JVM exits on
    EOF), then terminates and finally kills it.

    Relative paths inside experiment files are resolved by OpenDC against the JVM's working directory,
    ``cwd`` (default: this process's working directory).
    """

    def __init__(
        self,
        jar: str | os.PathLike[str] | None = None,
        java: str | None = None,
        *,
        cwd: str | os.PathLike[str] | None = None,
        startup_timeout: float = 120.0,
        jvm_options: Iterable[str] | None = None,
        stderr_lines: int = 400,
    ):
        self._jar_arg = jar
        self._java_arg = java
        self.cwd = Path(cwd) if cwd is not None else None
        self.startup_timeout = startup_timeout
        self._jvm_options = list(jvm_options) if jvm_options is not None else None
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._proc: subprocess.Popen | None = None
        self._gateway = None
        self._entry = None
        self._readers: list[threading.Thread] = []
        self._finalizer: weakref.finalize | None = None
        self._closed = False
        self._watch: _Watch | None = None  # the current run's watchdog state, fed by the readers
        self._watch_limit = 0.0
        self._watch_folder = ""
        self.port: int | None = None
        self.jar: Path | None = None
        self.java: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "OpenDCBridge":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stderr_tail(self, lines: int = 30) -> str:
        """The last lines the JVM wrote to stderr (OpenDC's log output goes there too)."""
        return "\n".join(list(self._stderr)[-lines:])

    def _default_jvm_options(self, version: int | None) -> list[str]:
        opts = ["-Djava.awt.headless=true", "-Dfile.encoding=UTF-8"]
        if version is not None and version >= 24:
            # Hadoop/parquet/kotlinx still touch sun.misc.Unsafe; keep stderr free of JDK 24+ warnings.
            opts.append("--sun-misc-unsafe-memory-access=allow")
        extra = os.environ.get(JVM_OPTS_ENV)
        if extra:
            opts.extend(shlex.split(extra))
        return opts

    def start(self) -> "OpenDCBridge":
        """Launches the JVM and connects to it. Idempotent while running."""
        if self._proc is not None:
            if self.alive:
                return self
            raise OpenDCBridgeError("This OpenDCBridge was already used and its JVM has stopped; create a new one.")
        from py4j.java_gateway import GatewayParameters, JavaGateway  # lazy: py4j only when needed
        from py4j.protocol import Py4JError

        self.jar = Path(self._jar_arg) if self._jar_arg is not None else find_bridge_jar()
        if not self.jar.is_file():
            raise KavierRuntimeError(
                f"The OpenDC bridge jar {self.jar} does not exist; build it with '{BUILD_COMMAND}'."
            )
        check_bridge_jar(self.jar)
        self.java = self._java_arg or find_java()
        options = (
            self._jvm_options if self._jvm_options is not None else self._default_jvm_options(java_version(self.java))
        )
        token = secrets.token_urlsafe(32)
        env = dict(os.environ)
        env[TOKEN_ENV] = token
        cmd = [self.java, *options, "-jar", str(self.jar), "--exit-on-stdin-eof"]
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(self.cwd) if self.cwd is not None else None,
                env=env,
                start_new_session=(os.name == "posix"),  # Ctrl-C reaches Python, which stops the JVM
            )
        except OSError as e:
            raise KavierRuntimeError(f"Could not start the OpenDC bridge JVM ({self.java}): {e}") from e
        self._finalizer = weakref.finalize(self, _finalize_process, self._proc)

        ready = threading.Event()
        port_box: list[int] = []

        def read_stdout(stream) -> None:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not ready.is_set() and line.startswith(READY_PREFIX):
                    match = re.search(r"port=(\d+)", line)
                    if match:
                        port_box.append(int(match.group(1)))
                        ready.set()
                        continue
                self._stderr.append(line)
                watch = self._watch
                if watch is not None:
                    watch.feed(line)
            ready.set()  # EOF: wake the waiter, which then sees the process is gone

        def read_stderr(stream) -> None:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._stderr.append(line)
                watch = self._watch
                if watch is not None:
                    watch.feed(line)

        for target, stream in ((read_stdout, self._proc.stdout), (read_stderr, self._proc.stderr)):
            t = threading.Thread(target=target, args=(stream,), daemon=True, name=f"kavier-bridge-{target.__name__}")
            t.start()
            self._readers.append(t)

        try:
            checkpoint(JVM_STARTING)
            deadline = time.monotonic() + self.startup_timeout
            while not ready.wait(0.1):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    break
            if not port_box:
                code = self._proc.poll()
                if code is None and ready.is_set():  # its output ended: it is exiting, give it a moment
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        code = self._proc.wait(timeout=10.0)
                if code is None:
                    raise OpenDCBridgeError(
                        f"The OpenDC bridge JVM did not report ready within {self.startup_timeout:.0f} s "
                        f"({' '.join(cmd)}). {_last_words(self.stderr_tail(15))}",
                        stderr_tail=self.stderr_tail(),
                    )
                self._wait_readers()
                last = " / ".join(line.strip() for line in self.stderr_tail(3).splitlines() if line.strip())
                raise OpenDCBridgeError(
                    f"The OpenDC bridge JVM exited ({_describe_exit(code)}) before it was ready "
                    f"({' '.join(cmd)}); its last words: {last or 'none'} (expected a Java "
                    f"{MIN_JAVA_VERSION}+ and a whole bridge jar: 'kavier bridge check' tests both)",
                    stderr_tail=self.stderr_tail(),
                )
            self.port = port_box[0]
            _OWN_PORTS.add(self.port)
            try:
                self._gateway = JavaGateway(
                    gateway_parameters=GatewayParameters(
                        address="127.0.0.1",
                        port=self.port,
                        auth_token=token,
                        auto_convert=True,
                        eager_load=True,
                        enable_memory_management=False,
                    )
                )
                self._entry = self._gateway.entry_point
                self._entry.ping()
            except Py4JError as e:
                raise OpenDCBridgeError(
                    f"Could not connect to the OpenDC bridge on 127.0.0.1:{self.port}: {e}. Last stderr "
                    f"lines:\n{self.stderr_tail(15)}",
                    stderr_tail=self.stderr_tail(),
                ) from e
        except BaseException:
            self.close()
            raise
        return self

    def _wait_readers(self, timeout: float = 2.0) -> None:
        for t in self._readers:
            t.join(timeout)

    def close(self, grace: float = 5.0) -> None:
        """Stops the JVM: asks it to shut down, closes its stdin, then terminates/kills it."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None and self._entry is not None:
            # shutdown() returns at once (the JVM exits ~100 ms later); never let it block us for long.
            t = threading.Thread(target=self._quiet_shutdown_call, daemon=True)
            t.start()
            t.join(2.0)
        if self._gateway is not None:
            try:
                self._gateway.close()
            except Exception:  # noqa: BLE001 - best effort
                pass
        self._gateway = None
        self._entry = None
        if proc is not None:
            try:
                if proc.stdin and not proc.stdin.closed:
                    proc.stdin.close()  # the JVM exits when its stdin reaches EOF
            except OSError:
                pass
            _stop_process(proc, grace)
            self._wait_readers()
            for stream in (proc.stdout, proc.stderr):
                try:
                    if stream:
                        stream.close()
                except OSError:
                    pass
        if self._finalizer is not None:
            self._finalizer.detach()

    def _quiet_shutdown_call(self) -> None:
        try:
            self._entry.shutdown()
        except Exception:  # noqa: BLE001 - the JVM may already be gone
            pass

    # ------------------------------------------------------------------ calls

    def _died_error(self, what: str) -> OpenDCBridgeError:
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                code = proc.poll()
        self._wait_readers(1.0)
        tail = self.stderr_tail(20)
        if code is None:
            return OpenDCBridgeError(
                f"Lost the connection to the OpenDC bridge JVM (pid {self.pid}) while {what}. {_last_words(tail)}",
                kind="CONNECTION_LOST",
                stderr_tail=tail,
            )
        return OpenDCBridgeError(
            f"The OpenDC JVM (pid {self.pid}) died while {what} ({_describe_exit(code)}). {_last_words(tail)}",
            kind="JVM_DIED",
            stderr_tail=tail,
        )

    def _call(self, what: str, method: str, *args):
        from py4j.protocol import Py4JError, Py4JJavaError

        if self._entry is None:
            raise OpenDCBridgeError("The OpenDC bridge is not running (use it inside 'with OpenDCBridge()').")
        try:
            return getattr(self._entry, method)(*args)
        except Py4JJavaError as e:
            raise self._translate(e, what) from None
        except Py4JError as e:
            if self._watch is not None and self._watch.stalled_s is not None:
                raise self._stall_error() from None  # the watchdog killed the JVM under this call
            if self._proc is not None and self._proc.poll() is None:
                # The process may be dying; give it a moment to report its exit status.
                try:
                    self._proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            raise self._died_error(what) from e

    def _translate(self, error, what: str) -> KavierError:
        try:
            message = str(error.java_exception.getMessage())
        except Exception:  # noqa: BLE001
            message = str(error)
        match = _KIND_RE.match(message)
        kind, detail = (match.group(1), match.group(2)) if match else ("JAVA_EXCEPTION", message)
        if kind in _INPUT_KINDS:
            return OpenDCInputError(detail, kind=kind)
        return OpenDCBridgeError(f"OpenDC failed while {what}: {detail}", kind=kind, stderr_tail=self.stderr_tail())

    def info(self) -> dict:
        """Versions reported by the running bridge."""
        return {
            "bridge_version": self._call("asking for versions", "getBridgeVersion"),
            "bridge_flavour": self._call("asking for versions", "getBridgeFlavour"),
            "opendc_version": self._call("asking for versions", "getOpenDCVersion"),
            "opendc_available": bool(self._call("asking for versions", "isOpenDCAvailable")),
            "java_version": self._call("asking for versions", "getJavaVersion"),
            "jar": str(self.jar),
            "java": self.java,
            "pid": self.pid,
        }

    @property
    def opendc_available(self) -> bool:
        return bool(self._call("asking whether OpenDC is available", "isOpenDCAvailable"))

    def run(
        self,
        experiment_json: str | os.PathLike[str],
        progress: ProgressCallback | None = None,
        *,
        poll_interval: float = 0.2,
        timeout: float | None = None,
        stall_timeout: float | None = None,
        folder: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Runs an OpenDC experiment JSON and returns its output folder ``<outputFolder>/<name>``.

        ``progress``, if given, is called with fractions in [0, 1]: 0 at the start, the fraction of
        (scenario, seed) runs finished as they finish, and 1 at the end.
        ``stall_timeout``: the watchdog's limit, seconds without progress (see :class:`_Watch`) after
        which the JVM is killed and :class:`OpenDCStallError` raised; None: ``$KAVIER_OPENDC_STALL_S`` or
        300 s; 0: no watchdog. ``folder`` names the experiment in that error (default: the JSON file).
        Raises :class:`OpenDCInputError` (a KavierInputError) when OpenDC rejects an input file,
        :class:`OpenDCBridgeError` (a KavierRuntimeError) when OpenDC or the JVM fails, including the JVM
        dying mid-run (with the tail of its stderr).
        """
        path = Path(experiment_json).expanduser().resolve()
        if not path.is_file():
            raise OpenDCInputError(
                "OpenDC experiment file does not exist", kind="EXPERIMENT_NOT_FOUND", source=str(path)
            )
        limit = opendc_stall_s(stall_timeout)
        what = f"running {path}"
        watch = _Watch()
        self._watch = watch
        self._watch_limit = limit
        self._watch_folder = str(folder) if folder is not None else str(path)
        stop = threading.Event()
        if limit > 0:
            threading.Thread(
                target=self._watchdog, args=(watch, limit, stop), daemon=True, name="kavier-opendc-watchdog"
            ).start()
        try:
            return self._run(path, what, watch, progress, poll_interval, timeout)
        finally:
            stop.set()
            if watch.stalled_s is None:
                self._watch = None

    def _run(
        self,
        path: Path,
        what: str,
        watch: _Watch,
        progress: ProgressCallback | None,
        poll_interval: float,
        timeout: float | None,
    ) -> Path:
        checkpoint(OPENDC_STARTING)
        self._call(what, "startExperiment", str(path))
        last = -1.0

        def report(value: float) -> None:
            nonlocal last
            value = min(1.0, max(0.0, float(value)))
            if progress is not None and value != last:
                last = value
                progress(value)

        report(0.0)
        deadline = None if timeout is None else time.monotonic() + timeout
        wait_ms = max(1, int(poll_interval * 1000))
        while True:
            done = bool(self._call(what, "awaitDone", wait_ms))
            fraction = float(self._call(what, "getProgress"))
            if not done:
                watch.note(fraction, str(self._call(what, "getPhase")))
                report(min(fraction, 0.999))
            if watch.stalled_s is not None:
                raise self._stall_error()
            if done:
                break
            if deadline is not None and time.monotonic() > deadline:
                phase = self._call(what, "getPhase")
                self.close()
                raise OpenDCBridgeError(
                    f"OpenDC did not finish {path} within {timeout:.0f} s (it was {phase}); the JVM was stopped.",
                    kind="TIMEOUT",
                )
        result = self._call(what, "getResult")
        report(1.0)
        return Path(str(result))

    def _watchdog(self, watch: _Watch, limit: float, stop: threading.Event) -> None:
        """Kills the JVM when ``watch`` has not advanced for ``limit`` seconds (until ``stop`` is set)."""
        while not stop.wait(min(1.0, max(0.05, limit / 10))):
            idle = watch.idle_s()
            if idle <= limit:
                continue
            watch.stalled_s = idle
            proc = self._proc
            if proc is not None and proc.poll() is None:
                try:
                    proc.kill()  # the poll loop's pending call fails at once and raises the stall error
                except OSError:
                    pass
            return

    def _stall_error(self) -> OpenDCStallError:
        """The watchdog's error, once the JVM is gone (this bridge is closed: start a new one)."""
        watch = self._watch
        assert watch is not None and watch.stalled_s is not None
        self.close(grace=0.0)
        last = watch.describe()
        folder = self._watch_folder
        limit = self._watch_limit
        return OpenDCStallError(
            f"OpenDC stopped advancing on {folder}: no progress for {watch.stalled_s:.0f} s (the stall limit "
            f"is {limit:g} s), so the watchdog killed its JVM; the last progress reached: {last}. The output "
            f"folder keeps its INCOMPLETE marker. Check that every task of the workload fits a host of the "
            f"topology (a GPU task needs hosts with a gpu section, and enough CPU cores and memory): OpenDC "
            f"waits for ever on a task no host can take. If the run is only slow, raise the limit with "
            f"'kavier opendc --stall-timeout S' or {OPENDC_STALL_ENV}=S (0: no watchdog).",
            stalled_s=watch.stalled_s,
            limit_s=limit,
            last_progress=last,
            stderr_tail=self.stderr_tail(),
        )

    def run_blocking(self, experiment_json: str | os.PathLike[str]) -> Path:
        """Runs an experiment with the Java side's blocking ``runExperiment`` (no progress reports)."""
        path = Path(experiment_json).expanduser().resolve()
        return Path(str(self._call(f"running {path}", "runExperiment", str(path))))


def run_opendc_experiment(
    experiment_json: str | os.PathLike[str],
    progress: ProgressCallback | None = None,
    *,
    jar: str | os.PathLike[str] | None = None,
    java: str | None = None,
    timeout: float | None = None,
    stall_timeout: float | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> Path:
    """Starts a bridge JVM, runs one OpenDC experiment JSON, stops the JVM; returns the output folder.

    Relative paths inside the experiment are resolved against the experiment file's folder (the JVM's
    working directory).
    """
    path = Path(experiment_json).expanduser().resolve()
    if not path.is_file():
        raise OpenDCInputError("OpenDC experiment file does not exist", kind="EXPERIMENT_NOT_FOUND", source=str(path))
    with OpenDCBridge(jar=jar, java=java, cwd=path.parent) as bridge:
        return bridge.run(path, progress=progress, timeout=timeout, stall_timeout=stall_timeout, folder=folder)


if __name__ == "__main__":
    # the command line moved up to the cli layer; an old script must not think its build ran
    print(
        "python -m kavier_opendc.opendc.bridge is gone: use 'kavier bridge build|check|run' "
        "(or python -m kavier_opendc.cli bridge ...)",
        file=sys.stderr,
    )
    sys.exit(2)
