# The two commands a newcomer needs: `make run` (the seed experiment, local disk) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared
MIRROR := $(SHARED)/data/cifar-10-python.tar.gz
# Without internet, point the job at the shared mirror of CIFAR-10 when it is there.
DATA_FLAGS := $(if $(wildcard $(MIRROR)),--set data.source=$(abspath $(MIRROR)) --set data.sha256=$(firstword $(shell cat $(MIRROR).sha256 2>/dev/null)))
SPEC   ?= specs/cifar10.yaml

.PHONY: install test test-faults lint test-fast run smoke bench gpu-wheels test-docker clean

install: $(VENV)/.installed

# torch 2.14.1 + torchvision 0.29.1 are the pair that installs from local disk on these machines.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Everything but the fault-injection suite (about 10 more minutes): `make test-faults`.
test: install lint
	$(PY) -m pytest -q --durations=10 -m "not faults" tests

test-faults: install
	$(PY) -m pytest -q --durations=10 -m faults tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

run: install
	$(VENV)/bin/sweep run $(SPEC) --set storage.uri=results $(DATA_FLAGS)

smoke: install
	$(VENV)/bin/sweep run specs/smoke.yaml --set storage.uri=results

bench: install
	$(PY) benchmarks/epoch_throughput.py

# The wheels a lent GPU machine (cp312, no network) lacks for `sweep run`, in .whl/ (README: GPU check).
gpu-wheels:
	bash scripts/gpu_wheels.sh

test-docker:
	bash scripts/docker_e2e.sh

clean:
	rm -rf results .pytest_cache
