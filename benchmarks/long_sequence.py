"""The longest single sequence that trains on one GPU, with and without each memory feature; tokens/s and MFU.

One training step (forward, backward, optimizer step) on one sequence of L tokens, through the trainer's own
parts: the ``longalign_packed`` attention (FlashAttention-3 where installed), gradient checkpointing
(``train/checkpointing.py``), ``offload_checkpoints``, ``tiled_mlp`` (``train/tiled_mlp.py``) and the loss
inside the LM head a chunk of rows at a time (``train/linear_loss.py``). Configurations:

* ``all``: checkpointing (full recomputation) + checkpoints offloaded to CPU + tiled MLP + chunked loss;
* ``no_offload``, ``no_tiled_mlp``, ``no_chunked_loss``: ``all`` without that one feature (the loss then
  comes from the full logits, as a plain Hugging Face model computes it);
* ``plain``: no feature at all (no checkpointing, full logits).

On a GPU every configuration also runs ``fused_ops`` (compiled RMSNorm, SwiGLU, RoPE), as the trainer does by
default there; ``--no-fused-ops`` runs them eager (the eager RMSNorm keeps fp32 copies for its backward pass).

The model: Llama-3.1-8B's width (hidden 4096, 32 query and 8 key/value heads of 128, MLP 14336, vocabulary
128256, untied head), ``--layers`` of its 32 decoder layers (default 2), random bf16 weights, one process and
no DeepSpeed engine. The full 8B does not fit one H200 with fp32 AdamW states (16 B/parameter with fp32
master weights: 128 GB) and long activations together; with this script's bf16 states (8 B/parameter) it
does (``--layers 32``). Every decoder layer adds the same time and (checkpointed and offloaded) no GPU
memory, only its checkpoint's host memory, so fewer layers of the same width measure what a length costs
per layer. The optimizer step is torch's fused AdamW on the bf16 parameters (bf16 states). MFU counts
6·N·L + 6·layers·hidden·L² FLOPs per step (``recipe.training_flops``; the recomputation not counted) against
989 TFLOP/s (H100/H200 dense bf16).

For each configuration the lengths double from ``--start`` until one fails (out of memory) or the next would
not finish in the time left (``--budget-s``, estimated from the last step: time grows with L²); ``all`` runs
first and also gives tokens/s and MFU at each length. One JSON line per step attempt goes to ``--out``.

Beside each step's peak GPU memory it prints the trainer's memory estimate for it (``estimate``: this script's
model states + ``memory_estimate.activation_bytes``, the trainer's memory model of the same checkpointing,
tiled MLP and chunked loss), and the host memory the offloaded checkpoints need; a length the estimate says
cannot fit the GPU or the host's available memory is refused before anything is built for it, with the
numbers. ``--snapshot-at L`` records every allocation of the step of length L (torch's memory history,
sizes only: ``torch.cuda.memory._dump_snapshot``) into ``--snapshot-dir``.

    python benchmarks/long_sequence.py --layers 2 --budget-s 330 --out /tmp/long_sequence.jsonl
    python benchmarks/long_sequence.py --layers 32 --start 393216 --max-length 393216 --configs all  # the 8B
    python benchmarks/long_sequence.py --smoke          # a tiny width on CPU: seconds (checks the script)

On the device tool's image (no DeepSpeed, whose ``TiledMLP`` this needs): ``bash benchmarks/train_gpu_check.sh
fetch`` and ``bash benchmarks/flash_attn_3.sh fetch`` here; there, carrying ``.dswhl`` and ``.fa3``: ``source
benchmarks/flash_attn_3.sh install /tmp/fa3; python3 -m pip install -q --no-index --no-deps --target /tmp/dswhl
.dswhl/*.whl; PYTHONPATH=$PYTHONPATH:/tmp/dswhl PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3
benchmarks/long_sequence.py ...``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "trainer")]

WIDTH_8B = {
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "rope_theta": 500000.0,
}
SMOKE = {
    "hidden_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 256,
    "vocab_size": 512,
}
CONFIGS = {  # name -> (checkpointing, offload_checkpoints, tiled_mlp, chunked loss)
    "all": (True, True, True, True),
    "no_chunked_loss": (True, True, True, False),
    "no_tiled_mlp": (True, True, False, True),
    "no_offload": (True, False, True, True),
    "plain": (False, False, False, False),
}
PEAK = 989e12


def model_config(width: dict, layers: int):
    """The Llama config of ``layers`` decoder layers of ``width``, untied head."""
    from transformers import LlamaConfig

    return LlamaConfig(**width, num_hidden_layers=layers, max_position_embeddings=1 << 23, tie_word_embeddings=False)


def build(config, features: tuple[bool, bool, bool, bool], device, fused: bool):
    """The model with the configuration's features (and ``fused_ops``, as the trainer on a GPU), and its optimizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from longalign_trainer.train import attention, checkpointing, fused_ops, linear_loss, tiled_mlp

    checkpoint, offload, tiled, chunked = features
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention.NAME, dtype=torch.bfloat16)
    model.config.use_cache = False
    model.train()
    if checkpoint:
        checkpointing.enable(model, "nothing", offload=offload)
    if fused:
        fused_ops.apply(model)
    if tiled:
        tiled_mlp.apply(model)
    if chunked:
        linear_loss.apply(model)
    on_gpu = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=on_gpu, foreach=None if on_gpu else False)
    return model, optimizer


def train_step(model, optimizer, length: int, chunked: bool, device) -> float:
    """One step on one random sequence of ``length`` tokens (every token with a target); returns the loss."""
    import torch

    from longalign_trainer.train import linear_loss
    from longalign_trainer.train.packing import build_pack

    ids = torch.randint(0, model.config.vocab_size, (length,)).tolist()
    pack = build_pack([(ids, ids)]).to(device)
    if chunked:
        with linear_loss.targets(pack.targets):
            token_loss = model(**pack.as_model_inputs()).logits[0]
    else:
        logits = model(**pack.as_model_inputs()).logits[0]
        token_loss = torch.nn.functional.cross_entropy(
            logits.float(), pack.targets, ignore_index=-100, reduction="none"
        )
        del logits
    loss = token_loss.sum() / (pack.targets != -100).sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def attempt(model, optimizer, length: int, chunked: bool, device, snapshot: Path | None = None) -> dict:
    """Time one step; out of memory is a result, not an error. ``snapshot``: record every allocation of the
    step there (torch's memory history, for ``torch.cuda.memory``'s viewer)."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        if snapshot:
            torch.cuda.memory._record_memory_history(context=None, max_entries=1_000_000)  # sizes only
    states = torch.cuda.memory_allocated() if device.type == "cuda" else None
    sync()
    t0 = time.perf_counter()
    try:
        loss = train_step(model, optimizer, length, chunked, device)
        sync()
    except torch.OutOfMemoryError as oom:
        failed = {"ok": False, "seconds": round(time.perf_counter() - t0, 2), "error": str(oom).split("\n")[0][:160]}
    else:
        failed = None
    if snapshot and device.type == "cuda":
        torch.cuda.memory._dump_snapshot(str(snapshot))
        torch.cuda.memory._record_memory_history(enabled=None)
    if failed:  # outside the handler, whose traceback holds the step's tensors
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return failed
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        "ok": True,
        "seconds": round(seconds, 3),
        "loss": round(loss, 4),
        "peak_gib": peak and round(peak, 2),
        "states_gib": states and round(states / 2**30, 2),  # parameters and AdamW states, before the step
        "host_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1),  # pinned included
    }


def estimate(config, length: int, features: tuple[bool, bool, bool, bool]) -> dict | None:
    """The trainer's memory estimate for this step, before anything is built: GPU = this script's model states
    (bf16 parameters, gradients and AdamW's two states: 8 bytes per parameter) + the trainer's activations at
    the peak (``memory_estimate.activation_bytes``, the same memory model: the same checkpointing, tiled MLP
    and chunked loss); host = the offloaded checkpoints (every layer's input, pinned) + the process. None
    without the chunked loss (the trainer always computes the loss in chunks)."""
    from longalign_trainer.train import memory_estimate as me

    checkpoint, offload, tiled, chunked = features
    if not chunked:
        return None
    shape = me.ModelShape.from_config(config)
    setting = me.Setting(
        2, "nothing", length, gradient_checkpointing=checkpoint, offload_checkpoints=offload, tiled_mlp=tiled
    )
    return {
        "gpu": 8 * shape.params + me.activation_bytes(shape, setting),
        "host": me.PROCESS_HOST_BYTES + me.offloaded_checkpoint_bytes(shape, setting),
    }


def refusal(need: dict | None, gpu_bytes: int, host_bytes: int | None) -> str | None:
    """Why the estimate refuses this step (with the numbers), or None when it fits."""
    problems = []
    if need and need["gpu"] > gpu_bytes:
        problems.append(f"GPU: needs ~{need['gpu'] / 2**30:.1f} GiB, has {gpu_bytes / 2**30:.1f}")
    if need and host_bytes is not None and need["host"] > host_bytes:
        problems.append(f"host: needs ~{need['host'] / 2**30:.1f} GiB, has {host_bytes / 2**30:.1f} available")
    return "; ".join(problems) or None


def flops(model, length: int) -> float:
    """Training FLOPs of one step (the trainer's count, every token taking a loss; recomputation not included)."""
    from longalign_trainer.train.recipe import model_shape, training_flops

    return training_flops(model_shape(model), [length], loss_tokens=length)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the 8B's width")
    p.add_argument("--start", type=int, default=65536, help="first length of every configuration")
    p.add_argument("--max-length", type=int, default=1 << 22)
    p.add_argument("--budget-s", type=float, default=330.0, help="stop starting steps after this many seconds")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from " + ", ".join(CONFIGS))
    p.add_argument("--out", type=Path, default=Path("long_sequence.jsonl"))
    p.add_argument("--smoke", action="store_true", help="tiny width on CPU, short lengths")
    p.add_argument("--snapshot-at", type=int, default=0, help="record the allocations of the step of this length")
    p.add_argument("--snapshot-dir", type=Path, default=Path("."), help="where the snapshots go")
    p.add_argument(
        "--no-fused-ops", action="store_true", help="eager RMSNorm/SwiGLU/RoPE (fp32 temporaries of the norms kept)"
    )
    args = p.parse_args()

    import torch

    from longalign_trainer.train import attention, memory_estimate

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    width, start = (SMOKE, 256) if args.smoke else (WIDTH_8B, args.start)
    limit = 2048 if args.smoke else args.max_length
    backend = attention.register("auto", device.type)
    gpu_bytes = torch.cuda.mem_get_info()[1] if device.type == "cuda" else 0
    host_bytes = memory_estimate.host_memory_available()
    began = time.monotonic()
    rows = []
    with open(args.out, "w") as out:
        for name in args.configs.split(","):
            features = CONFIGS[name]
            config = model_config(width, args.layers)
            model = optimizer = None
            length, last = start, None
            while length <= limit:
                need = estimate(config, length, features) if device.type == "cuda" else None
                refused = refusal(need, gpu_bytes, host_bytes)
                if refused:  # up front, before anything is built for this length
                    rows.append({"config": name, "length": length, "ok": None, "skipped": f"refused: {refused}"})
                    print(json.dumps(rows[-1]), flush=True)
                    out.write(json.dumps(rows[-1]) + "\n")
                    break
                left = args.budget_s - (time.monotonic() - began)
                expected = last["seconds"] * (length / last["length"]) ** 2 if last else 0.0
                if expected > left:
                    rows.append(
                        {
                            "config": name,
                            "length": length,
                            "ok": None,
                            "skipped": f"~{expected:.0f} s left {left:.0f} s",
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
                    out.write(json.dumps(rows[-1]) + "\n")
                    break
                if model is None:
                    model, optimizer = build(config, features, device, device.type == "cuda" and not args.no_fused_ops)
                    attempt(model, optimizer, 1024, features[3], device)  # warm-up: kernels, allocator, pinned buffers
                result = {
                    "config": name,
                    "length": length,
                    "backend": backend,
                    "layers": args.layers,
                    "fused_ops": device.type == "cuda" and not args.no_fused_ops,
                    **attempt(
                        model,
                        optimizer,
                        length,
                        features[3],
                        device,
                        args.snapshot_dir / f"snapshot-{name}-{length}.pickle" if length == args.snapshot_at else None,
                    ),
                }
                if result["ok"]:
                    if need:
                        result["estimate_gib"] = round(need["gpu"] / 2**30, 2)
                        result["estimate_host_gib"] = round(need["host"] / 2**30, 1)
                    result["tokens_per_s"] = round(length / result["seconds"])
                    result["mfu"] = round(flops(model, length) / result["seconds"] / PEAK, 4)
                rows.append(result)
                print(json.dumps(result), flush=True)
                out.write(json.dumps(result) + "\n")
                out.flush()
                if not result["ok"]:
                    break
                last, length = result, length * 2
            model = optimizer = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    """Markdown: per configuration, the longest length that trained, and each step's figures."""
    lines = [
        "| config | length | result | s/step | tokens/s | MFU | peak GiB | estimate GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["ok"] is None:
            lines.append(f"| {r['config']} | {r['length']} | not tried ({r['skipped']}) | | | | | |")
        elif not r["ok"]:
            lines.append(f"| {r['config']} | {r['length']} | out of memory | | | | | |")
        else:
            lines.append(
                f"| {r['config']} | {r['length']} | trains | {r['seconds']} | {r['tokens_per_s']} | "
                f"{100 * r['mfu']:.1f} % | {r['peak_gib']} | {r.get('estimate_gib')} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
