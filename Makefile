# The README's commands: `make demo` (set up, run the tiny example here), `make cluster-demo` (on a local
# control plane), `make test` (set up, run the tests) and `make images` (build the container images).
VENV ?= .venv
PY := $(VENV)/bin/python

DEMO_DIR ?= build/tiny-local

.PHONY: setup demo cluster-demo cluster test images

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

# The container images (hack/localcluster/images.py): built with podman when missing, cached in
# ~/.cache/longalign/images/. IMAGES="operator pause" builds only those.
images:
	bash hack/host-packages.sh
	PYTHONPATH=hack python3 -m localcluster.images $(IMAGES)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)
