#!/usr/bin/env bash
# Sets up everything the README's commands need, idempotently:
#   - .venv with this package and its extras (reinstalled when pyproject.toml changes)
#   - the local control plane's binaries (built once from Go modules, cached outside the repo)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-operator,dev}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.longalign-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing .[$EXTRAS] into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi

echo "[setup] control plane binaries: $(hack/localcluster/build.sh)"
