"""Ships the OpenDC bridge's Maven project inside the package.

A pip-installed package has no source checkout, yet ``kavier bridge build`` must be able to build the bridge
jar: the build step copies ``opendc-bridge/`` (pom.xml and sources, never ``target/``) into
``kavier_opendc/opendc/bridge_project/`` of the built package. Everything else is in pyproject.toml.
"""

from pathlib import Path
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

BRIDGE = Path(__file__).resolve().parent / "opendc-bridge"


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


setup(cmdclass={"build_py": BuildPyWithBridge})
