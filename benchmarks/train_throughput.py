"""Training throughput of long-context SFT: naive batching vs Hugging Face packing vs ours, on real GPUs.

Trains a randomly initialised Llama-shaped model (issue 9's shape: hidden 2048, 16 layers, 16/4 heads, MLP
5632, vocab 32000, untied; bf16 weights, gradient checkpointing, fused AdamW) on a synthetic set with
LongAlign's length mix (12 % uniform 8k-64k tokens, the rest log-normal around 900 clipped to 32-8192), and
prints per strategy: real tokens/s, the time one epoch takes at that rate, MFU against 989 TFLOP/s (dense bf16)
and against the ~790 TFLOP/s matmul ceiling measured on these GPUs, peak GPU memory and packing efficiency.

FLOPs = 6 × non-embedding parameters (LM head counted) × tokens + 6 × layers × hidden × Σ s_i² per sequence
(causal attention of each sequence alone, never the pack length squared); recomputation is not counted.

Strategies, each from the same fresh random init: a few untimed warm-up micro-steps (compilation, autotuning;
gradients discarded) and, for ours on the cuDNN backend, one attention forward/backward per distinct padded
sequence shape of the set (cuDNN builds an execution plan per new shape, on the host, when it first meets it:
without this the second cuDNN strategy of a process would inherit the first one's plans), then the whole epoch
timed (``--seconds-per-strategy`` can cut it short: the table says
how many micro-steps ran, since a partial epoch's length mix differs from the whole one's):
* naive: the paper's baseline, random order, one sequence per micro-step (SDPA, full gradient checkpointing),
  accumulation to 96; plus the paper's 8-GPU naive simulated from per-sequence times (each micro-step waits for
  the slowest of 8 random sequences) and 8-GPU sorted batching simulated the same way (8 similar lengths);
* hf_packing: the peer baseline, transformers' own padding-free packing: first-fit-decreasing 64k packs,
  restarting position_ids, attn_implementation="flex_attention", use_cache=False, the model's token-mean loss,
  full gradient checkpointing;
* hf_liger: the strongest peer (what a LLaMA-Factory or TRL user runs): hf_packing with Liger's kernels
  (``apply_liger_kernel_to_llama``: RoPE, RMSNorm, SwiGLU, fused linear cross-entropy; liger-kernel from PyPI),
  run in a process of its own since Liger patches transformers' classes;
* ours_packing / ours_packing_weighted: the trainer's code as ``longalign train`` runs it: our sampler
  (best-fit decreasing), the ``longalign_packed`` attention (auto backend), selective checkpointing, fused
  pointwise kernels, the loss inside the LM head (train/linear_loss.py; plain pack mean / LongAlign
  weighting); ours_sorted: sorted batching, one
  sequence per micro-step.

Packing efficiency is real tokens / (packs × capacity); the bound printed beside it is what the fewest
possible packs, ceil(tokens / capacity), would give.

Before timing, the pack-equivalence check runs on the GPU: logits of a pack vs each sequence alone.
``--profile`` also prints where the GPU time went (kernel time by kind: attention, matmuls, compiled pointwise,
copies, ...) over everything the run did; profiling slows the timed epochs a little.

    PYTHONPATH=trainer python benchmarks/train_throughput.py                # one GPU
    PYTHONPATH=trainer torchrun --nproc_per_node N benchmarks/train_throughput.py --strategies ours_packing_weighted
    PYTHONPATH=trainer python benchmarks/train_throughput.py --smoke        # tiny model on CPU, seconds
    PYTHONPATH=trainer python benchmarks/train_throughput.py --strategies ours_packing_weighted --profile

On a Hopper GPU without FlashAttention-3 (the device tool's image), ``benchmarks/flash_attn_3.sh`` brings it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer"))

from longalign_trainer.train import attention, checkpointing, fused_ops, linear_loss  # noqa: E402
from longalign_trainer.train.batching import StepSampler  # noqa: E402
from longalign_trainer.train.loss import count_step, loss_weights, weighted_loss  # noqa: E402
from longalign_trainer.train.packing import IGNORE_INDEX, build_pack, target_tokens  # noqa: E402

PEAK_DENSE, PEAK_MEASURED = 989e12, 790e12
STRATEGIES = ("naive", "hf_packing", "hf_liger", "ours_packing", "ours_packing_weighted", "ours_sorted")
# (hidden, layers, heads, kv heads, MLP width, vocabulary) of the benchmark's model shapes
SHAPES = {
    "0.79b": (2048, 16, 16, 4, 5632, 32000),  # issue 9's
    "8b-width": (4096, 8, 32, 8, 14336, 128256),
}  # Llama-3.1-8B's width, 8 of its 32 layers: 2.8 B


def synthetic_lengths(n: int, seed: int, cap: int, long_lo: int, short_hi: int, median: int) -> list[int]:
    """LongAlign's mix: 12 % uniform long_lo..cap, the rest log-normal(median, σ=1) clipped to 32..short_hi."""
    rng = random.Random(seed)
    return [
        rng.randint(long_lo, cap)
        if rng.random() < 0.12
        else int(min(short_hi, max(32, rng.lognormvariate(math.log(median), 1.0))))
        for _ in range(n)
    ]


def make_sequences(lengths, vocab: int, seed: int):
    """Random tokens; the first half of each sequence is the prompt (no loss), the second half the answer."""
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for n in lengths:
        ids = torch.randint(10, vocab, (n,), generator=g).tolist()
        prompt = n // 2
        seqs.append((ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return seqs


def first_fit_decreasing(lengths, cap: int) -> list[list[int]]:
    """Classic FFD, as the peer baseline packs."""
    packs, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for j, r in enumerate(room):
            if lengths[i] <= r:
                packs[j].append(i)
                room[j] -= lengths[i]
                break
        else:
            packs.append([i])
            room.append(cap - lengths[i])
    return packs


def build_model(args, attn: str, device, ours: bool = False, liger: bool = False):
    """The random Llama; ``ours``: with the trainer's checkpointing policy and fused kernels (as in training)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.mlp,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        max_position_embeddings=args.cap + 1,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        use_cache=False,
    )
    torch.manual_seed(0)
    if liger:  # patches transformers' Llama classes for the rest of the process: run it alone
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(
            rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=True
        )
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, attn_implementation=attn, dtype=args.dtype)
    if ours:
        checkpointing.enable(model, args.checkpoint_keeps, args.checkpoint_layers)
        if args.fused_ops and device.type == "cuda":
            fused_ops.apply(model)
        linear_loss.apply(model)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    non_embedding = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return model, non_embedding


def naive_sdpa_kernel(args, device) -> str | None:
    """The kernel PyTorch's SDPA picks for naive batching's causal attention (cuDNN's would re-plan per length)."""
    if device.type != "cuda" or not hasattr(torch, "_fused_sdp_choice"):
        return None
    from torch.nn.attention import SDPBackend

    q = torch.zeros(1, args.heads, 4096, args.hidden // args.heads, device=device, dtype=args.dtype)
    try:
        return SDPBackend(torch._fused_sdp_choice(q, q, q, None, 0.0, True)).name
    except Exception as exc:  # a private function: report, never fail the benchmark
        return f"unknown ({type(exc).__name__})"


def flops(non_embedding: int, args, seq_lengths) -> float:
    return 6.0 * non_embedding * sum(seq_lengths) + 6.0 * args.layers * args.hidden * sum(s * s for s in seq_lengths)


def pack_equivalence(args, device) -> dict:
    """Max |logit difference| of a pack vs its sequences alone (and, for scale, vs one leaky causal row)."""
    model, _ = build_model(args, attention.NAME, device, ours=True)
    plain, _ = build_model(args, "sdpa", device)
    plain.load_state_dict(model.state_dict())
    model.eval(), plain.eval()
    # The 5,000-token sequence takes the cuDNN path of the ``cudnn`` backend (padded), the others its varlen path.
    seqs = make_sequences([30, 50, 7] if args.smoke else [5000, 300, 1000, 57], args.vocab, 1)
    pack = build_pack(seqs).to(device)
    with torch.no_grad():  # outside linear_loss.targets the head returns logits
        packed = model(**pack.as_model_inputs()).logits[0].float()
        alone = torch.cat(
            [plain(input_ids=torch.tensor([s], device=device), use_cache=False).logits[0] for s, _ in seqs]
        ).float()
        leaky = plain(input_ids=pack.input_ids[None], use_cache=False).logits[0].float()
    model.train()  # the kernel must also train: one backward through the pack
    model(**pack.as_model_inputs()).logits.float().square().mean().backward()
    grad_ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    result = {
        "backend": attention.chosen_backend(),
        "backward_finite": grad_ok,
        "max_abs_diff": float((packed - alone).abs().max()),
        "leaky_row_max_abs_diff": float((leaky - alone).abs().max()),
        "logit_abs_max": float(alone.abs().max()),
    }
    del model, plain
    return result


def micro_batches_for(strategy: str, seqs, lengths, args, rank: int, world: int):
    """[(global-batch number, [sequence indices], kind)] of this rank, in run order."""
    if strategy in ("hf_packing", "hf_liger"):
        packs = first_fit_decreasing(lengths, args.cap)
        random.Random(args.seed).shuffle(packs)
        mine = packs[rank::world]
        per_step = max(1, math.ceil(len(mine) * args.global_batch / len(lengths)))
        return [(j // per_step, p) for j, p in enumerate(mine)]
    sampler_strategy = {"naive": "naive", "ours_sorted": "sorted"}.get(strategy, "packing")
    batch = args.global_batch if sampler_strategy != "packing" else args.packing_batch
    sampler = StepSampler(
        lengths,
        strategy=sampler_strategy,
        global_batch_size=batch,
        capacity=args.cap,
        world_size=world,
        rank=rank,
        seed=args.seed,
        epochs=1,
    )
    return [(plan.step, list(mb)) for plan in sampler for mb in sampler.my_micro_batches(plan)]


def run_strategy(strategy: str, seqs, lengths, args, device, rank: int, world: int) -> dict:
    attn = {"naive": "sdpa", "hf_packing": args.hf_attn, "hf_liger": args.hf_attn}.get(strategy, attention.NAME)
    model, non_embedding = build_model(
        args, attn, device, ours=strategy.startswith("ours"), liger=strategy == "hf_liger"
    )
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=fused)
    plan = micro_batches_for(strategy, seqs, lengths, args, rank, world)
    timed_tokens, timed_s, timed_flops, per_seq, steps, losses = 0, 0.0, 0.0, [], 0, []

    def optimizer_step():
        nonlocal steps
        if world > 1:
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps += 1

    # The counts of each global batch (for the loss) come from every rank's plan, known before it starts.
    counts = {}
    if strategy.startswith("ours"):
        batches: dict[int, list] = {}
        for r in range(world):
            for b, mb in micro_batches_for(strategy, seqs, lengths, args, r, world):
                batches.setdefault(b, []).append([target_tokens(seqs[i][1]) for i in mb])
        counts = {b: count_step(mbs) for b, mbs in batches.items()}

    def micro_step(b, mb):
        if strategy == "naive":
            ids, labels = seqs[mb[0]]
            x = torch.tensor([ids], device=device)
            y = torch.tensor([labels], device=device)
            loss = model(input_ids=x, labels=y, use_cache=False).loss / args.global_batch
        elif strategy in ("hf_packing", "hf_liger"):
            pack = build_pack([seqs[i] for i in mb]).to(device)
            labels = torch.cat([torch.tensor([IGNORE_INDEX] + seqs[i][1][1:]) for i in mb]).to(device)
            loss = model(
                input_ids=pack.input_ids[None],
                position_ids=pack.position_ids[None],
                labels=labels[None],
                use_cache=False,
            ).loss
        else:
            host = build_pack([seqs[i] for i in mb])
            weights = loss_weights(host.targets, host.seq_index, counts[b], world, strategy != "ours_packing")
            pack, rows, weights = host.to(device), linear_loss.loss_rows(host.targets).to(device), weights.to(device)
            with linear_loss.targets(pack.targets, rows, compiled=args.fused_ops and device.type == "cuda"):
                token_loss = model(**pack.as_model_inputs()).logits[0]
            loss = weighted_loss(token_loss, weights)
        loss.backward()
        return loss.detach()

    # Warm-up (compilation, kernel autotuning) on the first micro-batches, gradients discarded; then the whole
    # epoch is timed, so every strategy is measured on all of its data in its own order.
    for b, mb in [(b, mb) for b, mb in plan if mb][: args.warmup_micro_steps]:
        micro_step(b, mb)
    model.zero_grad(set_to_none=True)
    # cuDNN plans per padded shape: build them all now, so no strategy inherits another's (see --no-cudnn-warmup).
    t_plans = time.monotonic()
    try:
        plans = (
            attention.warm_up_cudnn(lengths, args.heads, args.kv_heads, args.hidden // args.heads, args.dtype, device)
            if attn == attention.NAME and args.cudnn_warmup
            else 0
        )
    except Exception as exc:  # timing without warm plans is still a measurement: say so and go on
        print(f"cuDNN warm-up failed: {type(exc).__name__}: {exc}", flush=True)
        plans = -1
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    plans_s = time.monotonic() - t_plans
    start, done, step_index = time.monotonic(), 0, None
    for b, mb in plan:
        if step_index is not None and b != step_index:
            optimizer_step()
        step_index = b
        if not mb:
            continue
        seq_lengths = [lengths[i] for i in mb]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.monotonic()
        loss = micro_step(b, mb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.monotonic() - t0
        losses.append(float(loss))
        done += 1
        timed_tokens += sum(seq_lengths)
        timed_s += dt
        timed_flops += flops(non_embedding, args, seq_lengths)
        if strategy == "naive":
            per_seq.append((seq_lengths[0], dt))
        if args.seconds_per_strategy and time.monotonic() - start > args.seconds_per_strategy:
            break
    else:
        optimizer_step()
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    real_packs = [mb for _, mb in plan if mb]
    result = {
        "strategy": strategy,
        "micro_steps_run": done,
        "of": len(plan),
        "optimizer_steps": steps,
        "timed_tokens": timed_tokens,
        "timed_s": round(timed_s, 2),
        "tokens_per_s": timed_tokens / timed_s if timed_s else None,
        "mfu_989": timed_flops / timed_s / PEAK_DENSE if timed_s else None,
        "mfu_790": timed_flops / timed_s / PEAK_MEASURED if timed_s else None,
        "peak_gib": peak_mem,
        "packing_efficiency": (
            sum(lengths) / (args.cap * len(real_packs)) * world
            if strategy in ("hf_packing", "ours_packing", "ours_packing_weighted")
            else None
        ),
        "first_loss": losses[0] if losses else None,
        "attention": attn if attn != attention.NAME else attention.chosen_backend(),
        "cudnn_plans_warmed": plans,
        "cudnn_warmup_s": round(plans_s, 2) if plans else 0,
    }
    if per_seq:
        result["per_seq"] = per_seq
    return result


def run_logged(strategy: str, seqs, lengths, args, device, rank: int, world: int, log) -> dict:
    """``run_strategy``, its result logged as one JSON line; an error becomes the result, the run goes on."""
    try:
        r = run_strategy(strategy, seqs, lengths, args, device, rank, world)
    except Exception as exc:
        r = {"strategy": strategy, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log(json.dumps({k: v for k, v in r.items() if k != "per_seq"}))
    return r


KERNEL_KINDS = (  # (kind, substrings of a kernel's name), first match wins
    ("attention (cuDNN)", ("cudnn", "fmha")),
    ("attention (flash)", ("flash",)),
    ("matmul", ("nvjet", "gemm", "xmma", "cutlass")),
    ("compiled (triton)", ("triton",)),
    ("optimizer", ("adam",)),
    ("copy / cat / fill", ("copy", "memcpy", "cat", "fill", "memset")),
    ("softmax / reduce", ("softmax", "reduce")),
    ("other pointwise", ("elementwise",)),
)


def kernel_profiler(cuda: bool):
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU])


def kernel_times(prof, cuda: bool) -> tuple[dict[str, float], list[tuple[float, int, str]]]:
    """GPU kernel time (on CPU: op time) in µs by kind, and (µs, calls, name) per kernel."""
    kinds: dict[str, float] = {}
    kernels = []
    for event in prof.key_averages():
        spent = event.device_time_total if cuda else event.self_cpu_time_total
        if not spent:
            continue
        name = event.key.lower()
        kind = next((k for k, marks in KERNEL_KINDS if any(m in name for m in marks)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + spent
        kernels.append((spent, event.count, event.key[:100]))
    return kinds, kernels


def kernel_time_table(prof, cuda: bool) -> str:
    """GPU kernel time (on CPU: op time) by kind, and the 20 dearest kernels (host-side CUDA calls left out)."""
    kinds, kernels = kernel_times(prof, cuda)
    total = sum(kinds.values()) or 1.0
    lines = [f"kernel time by kind (total {total / 1e6:.1f} s):"]
    lines += [
        f"  {k:<20}{t / 1e6:>8.1f} s {100 * t / total:>5.1f} %" for k, t in sorted(kinds.items(), key=lambda x: -x[1])
    ]
    lines += [f"  {t / 1e6:>8.2f} s {n:>7}×  {name}" for t, n, name in sorted(kernels, reverse=True)[:20]]
    return "\n".join(lines)


def simulate_8gpu(per_seq, lengths, seed: int, sort: bool) -> float | None:
    """Tokens/s per GPU of naive (random groups of 8) or sorted (8 similar lengths) on 8 GPUs.

    Per-sequence time is a least-squares fit t = a + b·s + c·s² to the measured naive micro-steps.
    """
    if len(per_seq) < 3:
        return None
    xs = torch.tensor([[1.0, s, s * s] for s, _ in per_seq], dtype=torch.float64)
    ys = torch.tensor([t for _, t in per_seq], dtype=torch.float64)
    coef = torch.linalg.lstsq(xs, ys[:, None]).solution[:, 0].tolist()
    floor = min(t for _, t in per_seq)  # a fit on few points can dip below zero for short sequences
    t = lambda s: max(floor, coef[0] + coef[1] * s + coef[2] * s * s)  # noqa: E731
    order = (
        sorted(range(len(lengths)), key=lambda i: lengths[i])
        if sort
        else random.Random(seed).sample(range(len(lengths)), len(lengths))
    )
    groups = [order[i : i + 8] for i in range(0, len(order), 8)]
    wall = sum(max(t(lengths[i]) for i in g) for g in groups)
    return sum(lengths) / wall / 8


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument(
        "--seconds-per-strategy",
        type=float,
        default=0.0,
        help="stop a strategy after this many seconds (0: run its whole epoch)",
    )
    p.add_argument("--warmup-micro-steps", type=int, default=2, help="untimed micro-steps first, grads discarded")
    p.add_argument("--sequences", type=int, default=200)
    p.add_argument("--lengths", help="JSON list of sequence lengths to use instead of --sequences synthetic ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--global-batch", type=int, default=96, help="sequences per optimizer step (naive, sorted)")
    p.add_argument("--packing-batch", type=int, default=0, help="sequences per step for our packing (0: all)")
    p.add_argument("--attention-backend", default="auto")
    p.add_argument(
        "--checkpoint-keeps",
        default="matmuls",
        choices=checkpointing.KEEPS,
        help="what our strategies' gradient checkpointing keeps (the trainer's checkpoint_keeps)",
    )
    p.add_argument(
        "--checkpoint-layers",
        type=int,
        default=None,
        help="checkpoint only the first N decoder layers (the trainer's checkpoint_layers; default all)",
    )
    p.add_argument("--no-fused-ops", dest="fused_ops", action="store_false", help="the trainer's fused_ops: false")
    p.add_argument(
        "--no-cudnn-warmup",
        dest="cudnn_warmup",
        action="store_false",
        help="skip building cuDNN's plans for every padded shape before timing (then the first "
        "cuDNN strategy of a process pays for them and later ones inherit them)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny model and lengths, on CPU")
    p.add_argument("--shape", default="0.79b", choices=SHAPES, help="the model's widths (see SHAPES)")
    p.add_argument("--skip-pack-check", action="store_true", help="no pack-equivalence check before timing")
    p.add_argument("--profile", action="store_true", help="print the GPU kernel time by kind at the end")
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "train_throughput.json"))
    args = p.parse_args()
    if args.smoke:
        args.hidden, args.layers, args.heads, args.kv_heads, args.mlp, args.vocab = 128, 2, 2, 1, 256, 512
        args.cap, long_lo, short_hi, median, args.dtype, args.hf_attn = 1024, 256, 256, 40, torch.float32, "sdpa"
        args.sequences = min(args.sequences, 40)
    else:
        args.hidden, args.layers, args.heads, args.kv_heads, args.mlp, args.vocab = SHAPES[args.shape]
        args.cap, long_lo, short_hi, median, args.dtype, args.hf_attn = (
            65536,
            8192,
            8192,
            900,
            torch.bfloat16,
            "flex_attention",
        )
    lengths = (
        json.loads(Path(args.lengths).read_text())
        if args.lengths
        else synthetic_lengths(args.sequences, args.seed, args.cap, long_lo, short_hi, median)
    )
    args.sequences = len(lengths)
    args.packing_batch = args.packing_batch or args.sequences

    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    cuda = torch.cuda.is_available() and not args.smoke
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    log = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)

    import transformers

    backend = attention.register(args.attention_backend, device.type)
    seqs = make_sequences(lengths, args.vocab, args.seed)
    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "world_size": world,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "sequences": len(lengths),
        "tokens": sum(lengths),
        "longest": max(lengths),
        "chosen_backend": backend,
        "packing_bound": sum(lengths) / (math.ceil(sum(lengths) / args.cap) * args.cap),
        "naive_sdpa_kernel": naive_sdpa_kernel(args, device),
    }
    log(json.dumps(env))
    try:
        check = {"backend": backend, "skipped": True} if args.skip_pack_check else pack_equivalence(args, device)
    except Exception as exc:  # the varlen kernel may refuse (an older torch): fall back to FlexAttention
        log(f"pack check with {backend} failed: {type(exc).__name__}: {exc}; falling back to flex")
        backend = attention.register("flex", device.type)
        check = pack_equivalence(args, device)
    log("pack equivalence:", json.dumps(check))
    results = []
    profiler = kernel_profiler(cuda) if args.profile else contextlib.nullcontext()
    with profiler:
        for strategy in args.strategies.split(","):
            results.append(run_logged(strategy, seqs, lengths, args, device, rank, world, log))
    if args.profile:
        log(kernel_time_table(profiler, cuda))

    naive = next((r for r in results if r["strategy"] == "naive" and r.get("per_seq")), None)
    sims = {}
    if naive:
        sims["naive_8gpu_simulated"] = simulate_8gpu(naive["per_seq"], lengths, args.seed, sort=False)
        sims["sorted_8gpu_simulated"] = simulate_8gpu(naive["per_seq"], lengths, args.seed, sort=True)
    base = naive.get("tokens_per_s") if naive else None
    hf = next((r.get("tokens_per_s") for r in results if r["strategy"] == "hf_packing"), None)
    log(
        f"\n{env['device']} × {world}, torch {env['torch']}, transformers {env['transformers']}; "
        f"{env['sequences']} sequences, {env['tokens']:,} tokens; attention {check['backend']}; "
        f"packing efficiency bound {env['packing_bound']:.3f} ({math.ceil(env['tokens'] / args.cap)} packs)"
    )
    log(
        f"{'strategy':<24}{'tokens/s':>10}{'epoch s':>9}{'MFU989':>8}{'MFU790':>8}{'peak GiB':>9}{'pack eff':>9}"
        f"{'× naive':>8}{'× HF':>6}{'micro-steps':>13}"
    )
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in results:
        if "error" in r:
            log(f"{r['strategy']:<24} ERROR {r['error']}")
            continue
        tps = r["tokens_per_s"] or 0
        log(
            f"{r['strategy']:<24}{tps * world:>10,.0f}{fmt(sum(lengths) / (tps * world) if tps else None, '.0f'):>9}"
            f"{fmt(r['mfu_989'] and r['mfu_989'] * 100, '.1f'):>8}{fmt(r['mfu_790'] and r['mfu_790'] * 100, '.1f'):>8}"
            f"{fmt(r['peak_gib'], '.1f'):>9}{fmt(r['packing_efficiency'], '.3f'):>9}"
            f"{fmt(base and tps / base, '.2f'):>8}{fmt(hf and tps / hf, '.2f'):>6}"
            f"{str(r['micro_steps_run']) + '/' + str(r['of']):>13}"
        )
    for k, v in sims.items():
        log(f"{k:<24}{fmt(v, ',.0f'):>10}  (tokens/s per GPU)")
    if rank == 0:
        with open(args.json, "w") as f:
            json.dump({"env": env, "pack_check": check, "results": results, "simulated": sims}, f)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
