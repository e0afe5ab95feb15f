# The README's commands: `make demo` (set up, run the tiny example here), `make cluster-demo` (on a local
# control plane) and `make test` (set up, run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python

DEMO_DIR ?= build/tiny-local

.PHONY: setup demo cluster-demo cluster test

setup:
	bash hack/setup.sh

# The tiny example, every stage for real on this machine (vLLM on the CPU, 2-process DeepSpeed), from scratch.
demo: setup
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/longalign run manifests/examples/tiny-local.yaml --prepare-tiny --workdir $(DEMO_DIR)

# The tiny example on the local Kubernetes control plane, through the operator (KWOK plays the pods).
cluster-demo: setup
	PYTHONPATH=hack $(PY) -m localcluster demo

cluster: setup
	PYTHONPATH=hack $(PY) -m localcluster up

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)
