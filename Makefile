# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo cluster test

setup:
	bash hack/setup.sh

demo: setup
	PYTHONPATH=hack $(PY) -m localcluster demo

cluster: setup
	PYTHONPATH=hack $(PY) -m localcluster up

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)
