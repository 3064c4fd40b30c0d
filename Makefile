# Kavier-OpenDC: one place for the set-up, test and demo commands the README names.
PYTHON ?= python3
BRIDGE_JAR := opendc-bridge/target/kavier-opendc-bridge.jar
LITE_JAR := opendc-bridge/target/kavier-opendc-bridge-lite.jar

.PHONY: setup bridge test demo bench clean

setup:            ## install the package (with test and plot extras) and build the OpenDC bridge jar
	$(PYTHON) -m pip install --quiet -e '.[test,plots]'
	$(MAKE) bridge

bridge:           ## build the OpenDC bridge jar with Maven on a JDK >= 21, running its JUnit tests
	@$(PYTHON) -m kavier_opendc.opendc.bridge build --with-tests || { \
	  echo "WARNING: OpenDC's published artifacts could not be resolved from Maven Central."; \
	  echo "WARNING: building the bridge gateway without OpenDC ($(LITE_JAR)); 'kavier opendc' and"; \
	  echo "WARNING: 'kavier run' will say that OpenDC is missing until 'make bridge' succeeds."; \
	  $(PYTHON) -m kavier_opendc.opendc.bridge build --lite --with-tests; }

test: setup       ## the whole test suite: the bridge's JUnit tests (in 'setup') and pytest
	KAVIER_BRIDGE_JAR=$$(if [ -f $(BRIDGE_JAR) ]; then echo $(BRIDGE_JAR); else echo $(LITE_JAR); fi) \
	  $(PYTHON) -m pytest

demo:             ## a demo simulation on a built-in synthetic workload
	kavier demo --out out/demo

bench:            ## requests simulated per second on the Azure conversation trace
	$(PYTHON) bench/simulate_speed.py

clean:
	rm -rf build dist *.egg-info opendc-bridge/target out
