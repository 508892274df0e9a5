# jsb-infra: `make up` runs the main job on the embedded default; `make test` is what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PULUMI_SKIP_UPDATE_CHECK := true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION := true

.PHONY: install lint format test up down bench bench-provision clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[deploy,test]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy jsb_infra

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The Pulumi CLI (scripts/ensure-pulumi builds it from the Go module proxy when missing; minutes, once).
PULUMI_PATH = $$(scripts/ensure-pulumi):$(CURDIR)/$(VENV)/bin:$$PATH

# nsc, the second reader of every JWT in the JWT-mode tests (scripts/ensure-nsc: built once, ~2 min).
test: install lint
	scripts/ensure-nsc >/dev/null
	PATH="$(PULUMI_PATH)" $(PY) -m pytest -q

up: install
	PATH="$(PULUMI_PATH)" $(PY) -m jsb_infra.local.dev up

down: install
	PATH="$(PULUMI_PATH)" $(PY) -m jsb_infra.local.dev down

bench: install
	$(PY) benchmarks/runtime.py
	$(PY) benchmarks/reliability.py

# create / no-op / refresh / destroy of N pairs: jsb-infra vs the NATS CLI recipe vs a raw loop.
BENCH_PAIRS ?= 10,50,100
BENCH_ARGS ?= --kill 100
bench-provision: install
	$(PY) benchmarks/provision.py --pairs $(BENCH_PAIRS) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .jsb
