# `longalign train` itself on one GPU: torchrun + DeepSpeed (ZeRO-2 and ZeRO-3, bf16) on the tiny model, with the
# attention backend `auto` picks there; checks each run's summary (ok, loss falling) and that its export loads, then
# times the first step of a rerun that finds the first run's compiled kernels (as a retried training pod finds
# them in the folder the operator gives it, TORCHINDUCTOR_CACHE_DIR on the run's volume).
# For a GPU machine whose image has torch but not DeepSpeed or pydantic (the device tool's):
#
#   bash benchmarks/train_gpu_check.sh fetch        # here, after `make test` set up .venv: wheels into .dswhl/
#   bash benchmarks/train_gpu_check.sh run          # there (carry .dswhl, and .fa3 for FlashAttention-3)

set -euo pipefail

fetch() {
    mkdir -p .dswhl
    .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .dswhl . "deepspeed==0.19.8"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .dswhl \
        "pydantic==$(.venv/bin/python -c 'import pydantic; print(pydantic.VERSION)')" \
        "pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
        annotated-types typing-inspection hjson liger-kernel==0.8.5  # Liger: train_product.py's strongest peer
    du -sh .dswhl
}

# `longalign train` on the config in folder $1, logging to $1/$2, with the folder's compile cache (as the operator
# gives a training pod one on the run's volume).
train_in() {
    TORCHINDUCTOR_CACHE_DIR="$1/compile-cache" \
        torchrun --nproc_per_node 1 -m longalign_trainer.cli train --config "$1/train.yaml" \
        >"$1/$2" 2>&1 || { tail -30 "$1/$2"; return 1; }
}

run() {
    if [ -d .fa3 ]; then
        # shellcheck source=/dev/null
        source benchmarks/flash_attn_3.sh install /tmp/fa3
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/dswhl .dswhl/*.whl
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/dswhl:tests/trainer" PYTHONUNBUFFERED=1
    local work=/tmp/train-gpu-check
    rm -rf "$work" && mkdir -p "$work"
    python3 -m longalign_trainer.cli tiny-model "$work/model" >/dev/null
    python3 - "$work" <<'PY'
import sys
from pathlib import Path

import yaml
from trainer_datasets import make_dataset

work = Path(sys.argv[1])
data = [{"path": str(make_dataset(work / "long.jsonl", 64, seed=1, long_share=0.5)), "ratio": 1},
        {"path": str(make_dataset(work / "short.jsonl", 128, seed=2, long_share=0.0)), "ratio": 2}]
for zero in (2, 3):
    out = work / f"zero{zero}"
    out.mkdir()
    (out / "train.yaml").write_text(yaml.safe_dump({
        "model_path": str(work / "model"), "data": data, "output_dir": str(out), "max_tokens_per_pack": 2048,
        "strategy": "packing", "global_batch_size": 32, "epochs": 4, "learning_rate": 2e-3, "warmup_ratio": 0.1,
        "zero_stage": zero, "bf16": True, "checkpoint_every_steps": 4, "progress_interval_s": 0,
        "termination_message_path": str(out / "summary.json")}))
PY
    for zero in 2 3; do
        train_in "$work/zero$zero" log
        python3 - "$work/zero$zero" <<'PY'
import json
import sys

from transformers import AutoModelForCausalLM

s = json.load(open(f"{sys.argv[1]}/summary.json"))
assert s["ok"] and s["final_loss"] < s["first_loss"] / 2, s
AutoModelForCausalLM.from_pretrained(s["export"])
print(f"ZeRO-{s['zero_stage']}: {s['steps']} steps, loss {s['first_loss']:.2f} -> {s['final_loss']:.2f}, "
      f"attention {s['attention_backend']}, export {s['export']} loads")
PY
    done
    # ZeRO-2 again from scratch, its checkpoints, export and logs gone, its compile cache kept: the first step
    # (compilation included) of both runs.
    local again="$work/zero2"
    cp "$again/train-log-rank0.jsonl" "$work/cold-log.jsonl"
    rm -rf "$again/checkpoints" "$again/model" "$again"/train-log-rank*.jsonl
    train_in "$again" log-warm
    python3 - "$work/cold-log.jsonl" "$again/train-log-rank0.jsonl" <<'PY'
import json
import sys

cold, warm = (json.loads(open(path).readline())["seconds"] for path in sys.argv[1:])
print(f"first step: {cold:.2f} s with an empty compile cache, {warm:.2f} s with the first run's")
PY
}

case "${1:-}" in
    fetch) fetch ;;
    run) run ;;
    *) echo "usage: bash $0 fetch | run" >&2; exit 2 ;;
esac
