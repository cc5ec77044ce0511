# dspool developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest-xdist workers. Unit tests are CPU-bound: one per core. Cluster tests mostly wait on the control
# plane and the operators they start, so more workers than cores pay off; each keeps to its own namespace
# and pool label.
UNIT_WORKERS    ?= 2
CLUSTER_WORKERS ?= 4
# The tests marked `serial` restart the API server, swap a CRD or remove LWS: they run one at a time on a
# second control plane of this checkout, beside the parallel ones (any directory named .cluster is git-ignored).
SERIAL_CLUSTER_DIR ?= $(CURDIR)/.serial/.cluster

.PHONY: help venv lint typecheck unit cluster-test test crds crds-check cluster-up cluster-down cluster-build demo bench bench-scale clean

help:
	@echo "make test          lint, type-check, unit tests, then cluster tests on the local control plane"
	@echo "make demo          run the operator on a simulated GPU/NPU pool (local control plane)"
	@echo "make crds          regenerate crds/, charts/dspool/crds/ and the chart's values reference from code"
	@echo "make cluster-up    build (once, cached) and start etcd, kube-apiserver, controller-manager, scheduler, kwok"
	@echo "make cluster-down  stop the local control planes (.cluster/ and the serial tests' one) and remove their state"
	@echo "make bench         placement and CLI benchmarks (bench/placement.py, bench/cli.py)"
	@echo "make bench-scale   the operator end to end on 1,000 fake nodes (bench/operator_scale.py)"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check operator tests e2e bench
	$(BIN)/ruff format --check operator tests e2e bench
	$(BIN)/hadolint Dockerfile
	$(BIN)/shellcheck --shell=bash operator/dspool/workloads/scripts/*.sh
	PYTHONPATH=operator $(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests -m "not cluster" -n $(UNIT_WORKERS)

# The control plane and the test tools (helm, prometheus) are built and started first, so that no test
# worker compiles Go while the others run. Then the parallel tests on .cluster/ and, at the same time, the
# serial ones on their own control plane (their output follows the parallel tests'; on an existing cluster,
# DSPOOL_KUBECONFIG, they run afterwards instead); last the `quiet` ones, alone. All groups always run.
cluster-test: $(STAMP)
	test -n "$$DSPOOL_KUBECONFIG" || $(BIN)/python e2e/cluster.py up
	$(BIN)/python e2e/tools.py build all
	status=0; log=$$(mktemp); \
	if [ -z "$$DSPOOL_KUBECONFIG" ]; then \
	    DSPOOL_CLUSTER_DIR=$(SERIAL_CLUSTER_DIR) $(BIN)/pytest -q tests/cluster -m "cluster and serial" >$$log 2>&1 & \
	    serial=$$!; \
	fi; \
	$(BIN)/pytest -q tests/cluster -m "cluster and not serial and not quiet" -n $(CLUSTER_WORKERS) --dist worksteal \
	    || status=1; \
	if [ -z "$$DSPOOL_KUBECONFIG" ]; then \
	    wait $$serial || status=1; echo "--- serial tests, on $(SERIAL_CLUSTER_DIR)"; cat $$log; \
	else \
	    $(BIN)/pytest -q tests/cluster -m "cluster and serial" || status=1; \
	fi; \
	rm -f $$log; \
	$(BIN)/pytest -q tests/cluster -m "cluster and quiet" || status=1; \
	exit $$status

# Everything generated from code: the CRD (crds/ and the chart's copy), the chart's values reference.
crds: $(STAMP)
	$(BIN)/python -m dspool.crdgen crds charts/dspool/crds
	$(BIN)/python -m dspool.chartgen charts/dspool

crds-check: $(STAMP)
	$(BIN)/python -m dspool.crdgen crds charts/dspool/crds --check
	$(BIN)/python -m dspool.chartgen charts/dspool --check

test: lint typecheck crds-check unit cluster-test

cluster-build: $(STAMP)
	$(BIN)/python e2e/cluster.py build

cluster-up: $(STAMP)
	$(BIN)/python e2e/cluster.py up

cluster-down: $(STAMP)
	$(BIN)/python e2e/cluster.py down
	DSPOOL_CLUSTER_DIR=$(SERIAL_CLUSTER_DIR) $(BIN)/python e2e/cluster.py down

demo: $(STAMP)
	$(BIN)/python e2e/demo.py

bench: $(STAMP)
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/cli.py

bench-scale: cluster-up
	$(BIN)/python bench/operator_scale.py --nodes 1000 --deployments 60

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
