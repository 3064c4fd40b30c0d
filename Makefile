# Kavier-OpenDC: one place for the set-up, test and demo commands the README names.
PYTHON ?= python3
# pytest worker processes (pytest-xdist); 1 runs the suite in one process, in file order
PYTEST_WORKERS ?= 2


.PHONY: setup bridge bridge-lite test demo bench clean

setup:            ## install the package (with test extras) and build the OpenDC bridge jar
	$(PYTHON) -m pip install --quiet -e '.[test]'
	@$(MAKE) --no-print-directory bridge || { \
	  if [ "$$CI" = true ] || [ "$$KAVIER_REQUIRE_OPENDC" = 1 ]; then \
	    echo "ERROR: the OpenDC bridge jar could not be built; OpenDC is required here (CI / KAVIER_REQUIRE_OPENDC=1)."; \
	    exit 1; fi; \
	  echo "WARNING: the OpenDC bridge jar could not be built (see above); tests that need OpenDC will be skipped"; \
	  echo "WARNING: and 'kavier run' needs --no-opendc. A local Maven repository with OpenDC: KAVIER_OPENDC_REPO=DIR."; }

bridge:           ## build the OpenDC bridge jar (OpenDC inside) with Maven on a JDK >= 21, running its JUnit tests
	$(PYTHON) -m kavier_opendc.cli bridge build --with-tests

bridge-lite:      ## only on request: the gateway WITHOUT OpenDC, for developing the Py4J plumbing
	$(PYTHON) -m kavier_opendc.cli bridge build --lite --with-tests

# the docker-compose pipeline on a real engine (9-14 min on 2 busy cores, half of it the image build): a pytest
# process of its own beside the rest of the suite, its log (with each step's time) printed at the end
DOCKER_E2E = tests/test_docker_e2e.py

test: setup       ## the whole test suite: the bridge's JUnit tests (in 'setup'), ruff, mypy and pytest
	$(PYTHON) -m ruff check kavier_opendc tests bench
	$(PYTHON) -m ruff format --check kavier_opendc tests bench
	$(PYTHON) -m mypy
	@mkdir -p out; \
	$(PYTHON) -m pytest -p no:xdist -s $(DOCKER_E2E) >out/docker-e2e.log 2>&1 & docker_pid=$$!; \
	trap 'kill $$docker_pid 2>/dev/null' INT TERM; \
	$(PYTHON) -m pytest $(if $(filter 1,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS)) --ignore=$(DOCKER_E2E); rc=$$?; \
	wait $$docker_pid; docker_rc=$$?; \
	echo "---- $(DOCKER_E2E), run beside the suite (exit code $$docker_rc; log in out/docker-e2e.log):"; \
	cat out/docker-e2e.log; \
	[ $$rc = 0 ] && [ $$docker_rc = 0 ]

demo:             ## a demo simulation on a built-in synthetic workload
	kavier demo --out out/demo --overwrite

bench:            ## requests simulated per second on the Azure conversation trace
	$(PYTHON) bench/simulate_speed.py

clean:
	rm -rf build dist *.egg-info opendc-bridge/target out
