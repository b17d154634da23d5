# relstream — newcomers need two commands: `make demo` and `make test`.
# Everything runs in a project virtualenv ($(VENV), default .venv in the checkout), created and
# filled by `make setup`; nothing is installed into the system interpreter.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= all
PY := $(VENV)/bin/python
PYTEST_TIMEOUT ?= 600
PYTEST_ARGS ?=

.PHONY: help setup test deps-check demo smoke bench stack-up stack-down

help:
	@echo "make demo   - run the demo (installs what it needs first)"
	@echo "make test   - dependency check + package layers + the test suite against real local Kafka/Redis/Triton"
	@echo "make smoke  - smoke run: stack up, one event through a consumer group, one inference, down"
	@echo "make bench  - benchmarks (JSON + PNG under bench/results)"
	@echo "make setup  - install prerequisites (apt), the virtualenv $(VENV) (relstream[$(EXTRAS)]), Kafka jars"

setup:
	@PYTHON=$(PYTHON) VENV=$(VENV) EXTRAS=$(EXTRAS) bash deploy/setup.sh

# every import declared, nothing declared unused (also asserted by tests/foundation/test_dependencies.py);
# the package layers and no import cycles inside a package (.importlinter)
deps-check: setup
	@$(PY) -m deptry .
	@$(VENV)/bin/lint-imports

# pytest exit 5 = no tests collected: not a failure of the build itself
test: setup
	@$(PY) -m deptry .
	@$(VENV)/bin/lint-imports
	@$(PY) -m pytest -q --timeout=$(PYTEST_TIMEOUT) --durations=15 $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: setup
	$(PY) -m relstream.demo $(DEMO_ARGS)

smoke: setup
	$(PY) -m relstream.cli smoke

bench: setup
	@set -e; found=0; for f in bench/bench_*.py; do \
	  [ -e "$$f" ] || continue; found=1; echo "== $$f"; $(PY) "$$f"; done; \
	if [ $$found -eq 0 ]; then echo "no benchmarks (bench/bench_*.py) yet"; fi

stack-up: setup
	$(PY) -m relstream.cli stack up

stack-down:
	$(PY) -m relstream.cli stack down
