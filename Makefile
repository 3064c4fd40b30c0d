# Kavier-OpenDC: one place for the set-up, test and demo commands the README names.
PYTHON ?= python3

.PHONY: setup bridge test demo bench clean

setup:            ## install the package (with test and plot extras) and build the OpenDC bridge jar
	$(PYTHON) -m pip install --quiet -e '.[test,plots]'

bridge:           ## build opendc-bridge/target/kavier-opendc-bridge.jar with Maven on a JDK >= 21
	$(PYTHON) -m kavier_opendc.opendc.bridge build

test: setup       ## the whole test suite: Python (pytest) and the bridge's JUnit tests (Maven)
	$(PYTHON) -m pytest

demo:             ## a demo simulation on a built-in synthetic workload
	kavier demo --out out/demo

bench:            ## requests simulated per second on the Azure conversation trace
	$(PYTHON) bench/simulate_speed.py

clean:
	rm -rf build dist *.egg-info opendc-bridge/target out
