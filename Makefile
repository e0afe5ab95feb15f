# The README's commands: `make demo` (set up, run the tiny example here), `make cluster-demo` (on a local
# control plane), `make check` (static checks), `make test` (set up, static checks, run the tests) and
# `make images` (build the container images).
VENV ?= .venv
PY := $(VENV)/bin/python

DEMO_DIR ?= build/tiny-local

.PHONY: setup demo cluster-demo cluster check fix test images

setup:
	bash hack/setup.sh $(SETUP_FLAGS)

# The tiny example, every stage for real on this machine (vLLM on the CPU, 2-process DeepSpeed), from scratch.
demo: setup
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/longalign run manifests/examples/tiny-local.yaml --prepare-tiny --workdir $(DEMO_DIR)

# The tiny example on the local cluster's real nodes, through the helm-installed operator (hack/localcluster/tiny_run.py).
cluster-demo: setup
	PYTHONPATH=hack $(PY) -m localcluster demo

cluster: setup
	PYTHONPATH=hack $(PY) -m localcluster up

# The container images (hack/localcluster/images.py): built with podman when missing, cached in
# ~/.cache/longalign/images/. IMAGES="operator pause" builds only those.
images:
	bash hack/host-packages.sh
	PYTHONPATH=hack python3 -m localcluster.images $(IMAGES)

# Static checks (settings in pyproject.toml): lint and format (ruff), types (mypy: strict on the pure core),
# import contracts (import-linter: the layering of the README's "Layout" section). Run from the source tree.
check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	PYTHONPATH=operator:trainer $(VENV)/bin/lint-imports

# The mechanical fixes ruff can make by itself: import order, modern syntax, then formatting.
fix: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The tests' setup also builds the container images (setup.sh --images), while the Go binaries compile.
test: SETUP_FLAGS = --images
test: setup check
	$(PY) -m pytest $(PYTEST_ARGS)
