# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast lint format bench chaos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded,tools]'
	touch $(STAMP)

## start the embedded stack, send a 1,000-order sale-day surge, stay up until Ctrl-C
run: install
	$(BIN)/tasleem up --demo-orders 1000 --demo-rate 200

test: install
	$(BIN)/python -m pytest

## benchmarks: numbers, not pass/fail; results in bench/results/
bench: install
	$(BIN)/python -m bench

## chaos: faults during a surge, each ending with the invariant check; table in chaos/results/
chaos: install
	$(BIN)/python -m chaos

test-fast: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy shared services deploy bench chaos
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: manifests
## render the Kubernetes overlays with real kustomize into deploy/k8s/rendered/ (make test checks them)
KUBECTL ?= kubectl
manifests:
	mkdir -p deploy/k8s/rendered
	$(KUBECTL) kustomize deploy/k8s/overlays/dev > deploy/k8s/rendered/dev.yaml
	$(KUBECTL) kustomize deploy/k8s/overlays/production > deploy/k8s/rendered/production.yaml

clean:
	rm -rf $(VENV) .tasleem .pytest_cache .mypy_cache .ruff_cache
