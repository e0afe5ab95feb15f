"""Packed attention alone, per backend: one layer's forward and backward over every pack of the training set.

    PYTHONPATH=trainer python benchmarks/attention_kernels.py                      # every backend usable here
    PYTHONPATH=trainer python benchmarks/attention_kernels.py --backends flash_attn_3,cudnn

The set and the packs are train_throughput.py's (200 sequences of LongAlign's length mix, best-fit-decreasing
64k packs), the shapes its model's (16 query heads, 4 KV heads, head_dim 128, bf16) in the layout the model's
projections produce. Per backend: seconds for one layer over the whole set (forward; forward + backward), so
× 16 layers is the epoch's attention time, and TFLOP/s by the training benchmark's count (6 × hidden × Σ s_i² for
forward + backward, a third of it forward). Before timing, each backend's output and q/k/v gradients on the
first pack are compared with the ``cudnn`` backend's, or with the exact reference on a short pack when cuDNN
is missing; cuDNN's plans are built first (one per padded length), as the trainer's warm-up does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_throughput import synthetic_lengths  # noqa: E402

from longalign_trainer.train import attention  # noqa: E402
from longalign_trainer.train.packing import plan_packs  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, CAP = 16, 4, 128, 65536


def pack_inputs(lengths, device, seed: int):
    """q, k, v as the model hands them over (``[1, H, T, D]`` views of ``[1, T, H, D]``) and cu_seqlens."""
    g = torch.Generator(device=device).manual_seed(seed)
    total = sum(lengths)
    q, k, v = (
        torch.randn(1, total, h, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=g)
        .transpose(1, 2)
        .requires_grad_()
        for h in (HEADS, KV_HEADS, KV_HEADS)
    )
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)
    return q, k, v, cu


def run(q, k, v, cu, max_len: int, backward: bool):
    out, _ = attention.packed_attention_forward(None, q, k, v, cu_seq_lens_q=cu, max_length_q=max_len)
    if backward:
        out.backward(torch.ones_like(out))
    return out


def outputs_and_grads(lengths, device):
    q, k, v, cu = pack_inputs(lengths, device, seed=1)
    out = run(q, k, v, cu, max(lengths), backward=True)
    return [out.detach().float()] + [t.grad.float() for t in (q, k, v)]


def timed(packs, device, backward: bool) -> float:
    """Seconds for one pass over every pack (inputs built untimed), by CUDA events."""
    total = 0.0
    for lengths in packs:
        q, k, v, cu = pack_inputs(lengths, device, seed=0)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(q, k, v, cu, max(lengths), backward)
        end.record()
        torch.cuda.synchronize()
        total += start.elapsed_time(end) / 1000
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--backends",
        default="",
        help="comma-separated (default: every backend usable on this GPU but the quadratic-memory reference)",
    )
    p.add_argument("--sequences", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("attention_kernels.py needs a GPU")
        return 1
    device = torch.device("cuda")
    usable = attention.available_backends("cuda")
    backends = args.backends.split(",") if args.backends else [b for b in usable if b != "sdpa_block_diagonal"]
    lengths = synthetic_lengths(args.sequences, args.seed, CAP, 8192, 8192, 900)
    packs = [[lengths[i] for i in pack] for pack in plan_packs(lengths, CAP)]
    flops = 6 * HEADS * HEAD_DIM * sum(n * n for n in lengths)
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "usable": usable,
                "packs": len(packs),
                "tokens": sum(lengths),
            }
        ),
        flush=True,
    )
    reference_backend = "cudnn" if "cudnn" in usable else "sdpa_block_diagonal"
    check_pack = packs[0] if reference_backend == "cudnn" else [300, 1000, 57, 2000]
    attention.register(reference_backend, "cuda")
    attention.warm_up_cudnn(lengths, HEADS, KV_HEADS, HEAD_DIM, torch.bfloat16, device)
    reference = outputs_and_grads(check_pack, device)
    print(
        f"{'backend':<14}{'fwd s':>8}{'fwd+bwd s':>11}{'fwd TFLOP/s':>13}{'fwd+bwd TFLOP/s':>17}"
        f"{'max |diff| vs ' + reference_backend + ' (out, dq, dk, dv)':>48}",
        flush=True,
    )
    for backend in backends:
        attention.register(backend, "cuda")
        attention.warm_up_cudnn(lengths, HEADS, KV_HEADS, HEAD_DIM, torch.bfloat16, device)
        diffs = [
            float((a - b).abs().max()) for a, b in zip(outputs_and_grads(check_pack, device), reference, strict=True)
        ]
        timed(packs[:2], device, backward=True)  # warm-up: compilation, autotuning
        fwd, both = timed(packs, device, backward=False), timed(packs, device, backward=True)
        print(
            f"{backend:<14}{fwd:>8.3f}{both:>11.3f}{flops / 3 / fwd / 1e12:>13.0f}{flops / both / 1e12:>17.0f}"
            f"{', '.join(f'{d:.3g}' for d in diffs):>48}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
