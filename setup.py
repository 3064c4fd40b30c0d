"""Ships the OpenDC bridge's Maven project inside the package, and compiles the engine's hot modules.

A pip-installed package has no source checkout, yet ``kavier bridge build`` must be able to build the bridge
jar: the build step copies ``opendc-bridge/`` (pom.xml and sources, never ``target/``) into
``kavier_opendc/opendc/bridge_project/`` of the built package.

The engine's modules listed in ``kavier_opendc/engine/compiled.py`` (``NATIVE``) are compiled with mypyc
where a C compiler is found (``KAVIER_PURE_PYTHON=1`` at install time skips it); a failed compilation
leaves the pure-Python package, which gives the same results more slowly. Beside the compiled modules the
build writes ``native_sources.json``, a checksum of each source compiled, so that a source edited later
(an editable install) runs as source until rebuilt. Everything else is in pyproject.toml.
"""

import json
import os
import re
import shutil
import sys
import zlib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BRIDGE = ROOT / "opendc-bridge"
ENGINE = ROOT / "kavier_opendc" / "engine"
#: compiled.py's NATIVE, read without importing the package (its dependencies may not be installed yet)
NATIVE = re.search(r"^NATIVE = \(([^)]*)\)", (ENGINE / "compiled.py").read_text(encoding="utf-8"), re.M)
NATIVE = [name.strip().strip('"') for name in NATIVE.group(1).split(",") if name.strip()]
GROUP = "kavier_opendc.engine.native"  # mypyc's shared library: kavier_opendc/engine/native__mypyc.*.so


class BuildPyWithBridge(build_py):
    def run(self):
        super().run()
        if not (BRIDGE / "pom.xml").is_file():
            return  # building from an sdist without the bridge: nothing to ship
        dest = Path(self.build_lib) / "kavier_opendc" / "opendc" / "bridge_project"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        shutil.copy2(BRIDGE / "pom.xml", dest / "pom.xml")
        shutil.copytree(BRIDGE / "src", dest / "src")


class BuildEngine(build_ext):
    """Compiles the engine modules, or leaves them pure Python when that fails (no compiler, say)."""

    def run(self):
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure falls back to the sources
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            print(f"kavier-opendc: engine not compiled ({exc}); the pure-Python engine is used", file=sys.stderr)
            return
        stamp = {name: zlib.crc32((ENGINE / f"{name}.py").read_bytes()) for name in NATIVE}
        out = Path(self.get_ext_fullpath(f"kavier_opendc.engine.{NATIVE[0]}")).parent
        (out / "native_sources.json").write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")


def engine_extensions() -> list:
    if os.environ.get("KAVIER_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("kavier-opendc: mypyc not found; the pure-Python engine is used", file=sys.stderr)
        return []
    paths = [f"kavier_opendc/engine/{name}.py" for name in NATIVE]
    # the build environment has only the build requirements: the package's own dependencies (numpy, ...) are
    # typed as Any there, which leaves the compiled engine's own types unchanged (none of them is from those)
    options = ["--ignore-missing-imports", "--disable-error-code=annotation-unchecked"]  # a note fails mypyc
    try:
        return mypycify(options + paths, group_name=GROUP, opt_level="3")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - mypyc refused the sources: stay pure Python
        print(f"kavier-opendc: engine not compiled ({exc}); the pure-Python engine is used", file=sys.stderr)
        return []


setup(cmdclass={"build_py": BuildPyWithBridge, "build_ext": BuildEngine}, ext_modules=engine_extensions())
