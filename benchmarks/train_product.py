"""`longalign train` itself, as users run it (torchrun + DeepSpeed, its defaults), beside the plain-loop strategies
and the peers, on one generated set and model folder of a given shape, in one run.

Writes a random-weight Llama of ``--shape`` (train_throughput.py's SHAPES; the tiny model's tokenizer, whose
4096 tokens fit any of those vocabularies) and a JSONL set of ``--sequences`` conversations with
train_throughput.py's length mix (prompt and answer halves of random words; lengths as the tokenizer counts
them), then runs, each in a process of its own (one GPU, so every row has the GPU to itself):

* ``longalign train`` rows: the defaults (ZeRO stage and checkpointing chosen by what fits) and each
  ``--variants`` override (``zero_stage=3``, ``checkpoint_keeps=attention``, ...), one epoch, 64k packs,
  96 sequences per step; from each run's summary and step log: tokens/s over the whole epoch (the first step
  and its compilation included) and over the steady steps (all but the first), MFU against 989 TFLOP/s over both (the
  step log's: the trainer's FLOP count, the LM head's only for the tokens that take a loss; train_throughput.py's
  peers count the head for every token, as their heads compute it), peak GPU memory against the trainer's
  memory estimate, packing efficiency against the set's bound, and what the defaults chose;
* ``--peers`` rows: train_throughput.py strategies (hf_packing, hf_liger, ours_packing_weighted) on the
  same sequence lengths and shape (``--lengths``: the set's, as the trainer tokenized them; random tokens);
  their tokens/s count only their forward and backward passes after untimed warm-up steps (no optimizer step,
  no compilation), so the table sets each row against HF + Liger twice: its whole epoch (×Liger) and its
  steady steps (steady), the fairer of the two;
* ``--long L1,L2,...``: instead of the set above, one conversation of about each length (a single sequence
  per step, ``max_tokens_per_pack`` the longest), trained in one run with ``--variants``' first override set
  (e.g. ``offload_checkpoints=true,tiled_mlp=true``), one row per step: its tokens/s, MFU, peak GPU memory
  (the step log's) against the trainer's estimate for that pack (``--layers`` overrides the shape's depth);
* ``--profile``: the defaults once more through train_profiled.py (where the steady steps' time goes: host
  pack building, forward, backward, optimizer step, the rest; GPU kernel time by kind and how busy the GPU
  was), run first: its compilation fills the machine's compile caches, so every row then starts as on a
  machine that has trained before (without it the first row pays the compilation, on a fresh machine ~10 s).

    python benchmarks/train_product.py --shape 0.79b                      # on the GPU machine
    python benchmarks/train_product.py --shape 8b-width --variants zero_stage=3 --peers hf_liger
    python benchmarks/train_product.py --shape 8b-width --layers 2 --long 262144,1048576 \
        --variants offload_checkpoints=true,tiled_mlp=true --peers ""      # single long sequences
    python benchmarks/train_product.py --smoke                            # tiny shapes on CPU, minutes

On the device tool's image (no DeepSpeed, pydantic or Liger): ``bash benchmarks/train_gpu_check.sh fetch`` and
``bash benchmarks/flash_attn_3.sh fetch`` here; there, carrying ``.dswhl`` and ``.fa3``: ``source
benchmarks/flash_attn_3.sh install /tmp/fa3; python3 -m pip install -q --no-index --no-deps --target /tmp/dswhl
.dswhl/*.whl; PYTHONPATH=$PYTHONPATH:/tmp/dswhl python3 benchmarks/train_product.py ...``.

It also asks the trainer's memory estimate about ``--refuse`` configs (key=value,... overrides), which must be
refused before loading: e.g. ``--refuse zero_stage=3,offload_optimizer=true --refuse-shape 8b-full``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "trainer")]

from train_throughput import SHAPES, synthetic_lengths  # noqa: E402

SHAPES_EXTRA = {"8b-full": (4096, 32, 32, 8, 14336, 128256), "smoke": (128, 2, 2, 1, 256, 4096)}
# The trainer's processes import this checkout's sources (an installed longalign wheel gives only its metadata).
ENV = {
    **os.environ,
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join([str(HERE.parent / "trainer"), *filter(None, [os.environ.get("PYTHONPATH")])]),
}
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "model",
    "token",
    "sequence",
    "pack",
    "train",
    "long",
    "context",
    "answer",
    "question",
    "data",
    "value",
    "result",
    "paper",
    "method",
    "figure",
    "table",
    "loss",
    "step",
    "epoch",
    "rank",
    "batch",
]


def llama_config(shape: str, depth: int | None = None, **extra):
    """The Llama config of ``shape`` (``depth`` decoder layers, default the shape's), untied."""
    from transformers import LlamaConfig

    h, layers, heads, kv, mlp, vocab = {**SHAPES, **SHAPES_EXTRA}[shape]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=h,
        intermediate_size=mlp,
        num_hidden_layers=depth or layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        tie_word_embeddings=False,
        **extra,
    )


def write_model(out: Path, shape: str, cap: int, on_gpu: bool, depth: int | None = None) -> Path:
    """A random Llama of ``shape`` (``depth`` decoder layers, default the shape's) in bf16 with the tiny model's
    tokenizer and chat template."""
    import torch
    from transformers import LlamaForCausalLM

    from longalign_trainer.tiny_model import build_tokenizer

    h, _, heads, *_ = {**SHAPES, **SHAPES_EXTRA}[shape]
    cfg = llama_config(
        shape,
        depth,
        head_dim=h // heads,
        max_position_embeddings=cap + 1,
        rope_theta=500000.0,
        bos_token_id=1,
        eos_token_id=7,
        pad_token_id=3,
    )
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16 if on_gpu else torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    del model
    return out


def config_only(out: Path, shape: str) -> Path:
    """A model folder with only config.json (what the memory estimate reads before loading)."""
    llama_config(shape).save_pretrained(out)
    return out


def write_set(path: Path, model: Path, lengths: list[int], seed: int) -> list[int]:
    """Conversations whose tokenized lengths follow ``lengths``; returns the lengths the trainer will see."""
    from transformers import AutoTokenizer

    from longalign_trainer.train.data import load_examples

    tok = AutoTokenizer.from_pretrained(model)
    rng = random.Random(seed)
    per_word = len(tok(" ".join(WORDS * 20))["input_ids"]) / (len(WORDS) * 20)
    records = []
    for n in lengths:
        words = [rng.choice(WORDS) for _ in range(max(2, int((n - 8) / per_word)))]
        half = len(words) // 2
        records.append(
            {
                "messages": [
                    {"role": "user", "content": " ".join(words[:half])},
                    {"role": "assistant", "content": " ".join(words[half:])},
                ]
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    examples, _ = load_examples([(path, 1.0)], tok, 1 << 30, "drop", seed)
    return [len(e) for e in examples]


def parse_overrides(text: str) -> dict:
    """``a=1,b=true,c=attention`` as a dict of YAML values."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in text.split(",") if kv)}


def time_weighted_mfu(steps: list[dict]) -> float | None:
    """The MFU of these step-log records together (each step's weighted by its time)."""
    if any(r.get("mfu") is None for r in steps):
        return None
    return sum(r["mfu"] * r["seconds"] for r in steps) / sum(r["seconds"] for r in steps)


def run_product(work: Path, name: str, model: Path, data: Path, args, overrides: dict, profile: bool = False) -> dict:
    """One ``longalign train`` run under torchrun; its figures from the summary and the step log (``profile``:
    through train_profiled.py instead, its row where the steady steps' time went)."""
    import yaml

    out = work / name
    out.mkdir(parents=True)
    cfg = {
        "model_path": str(model),
        "data": [{"path": str(data)}],
        "output_dir": str(out),
        "max_tokens_per_pack": args.cap,
        "global_batch_size": args.global_batch,
        "epochs": 1,
        "checkpoint_every_steps": 10**6,
        "keep_checkpoints": 1,
        "progress_interval_s": 0,
        "termination_message_path": str(out / "summary.json"),
        **overrides,
    }
    (out / "train.yaml").write_text(yaml.safe_dump(cfg))
    entry = [str(HERE / "train_profiled.py"), "--json", str(out / "profile.json")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "1",
        *(entry if profile else ["-m", "longalign_trainer.cli", "train"]),
        "--config",
        str(out / "train.yaml"),
    ]
    t0 = time.monotonic()
    with open(out / "log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV).returncode
    row: dict = {
        "row": f"longalign train {name}",
        "overrides": overrides,
        "rc": rc,
        "process_s": round(time.monotonic() - t0, 1),
    }
    for junk in (out / "checkpoints", out / "model"):  # tens of GB at 8 B width: the next row needs the disk
        subprocess.run(["rm", "-rf", str(junk)])
    if profile:
        try:
            return {**row, "profile": json.loads((out / "profile.json").read_text())}
        except (OSError, ValueError):
            return {**row, "error": (out / "log").read_text()[-1500:]}
    try:
        s = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        s = {"ok": False, "error": (out / "log").read_text()[-1500:]}
    if not s.get("ok"):
        row["error"] = str(s.get("error"))[:600] or (out / "log").read_text()[-600:]
        return row
    steps = [json.loads(x) for x in (out / "train-log-rank0.jsonl").read_text().splitlines()]
    train_s = sum(r["seconds"] for r in steps)
    steady = steps[1:] or steps
    row.update(
        {
            "tokens_per_s": s["tokens_per_s"],
            "steady_tokens_per_s": sum(r["tokens"] for r in steady) / sum(r["seconds"] for r in steady),
            # per step against the trainer's peak (989 on GPUs; none on CPU), the trainer's FLOP count
            "mfu_989": time_weighted_mfu(steps),
            "steady_mfu_989": time_weighted_mfu(steady),
            "peak_gib": s["peak_gpu_gib"],
            "estimate_gib": s["memory_estimate"]["gpu_gib"],
            "packing_efficiency": s["packing_efficiency"],
            "zero_stage": s["zero_stage"],
            "checkpoint_keeps": s["checkpoint_keeps"],
            "checkpoint_layers": s["checkpoint_layers"],
            "chosen_by_fit": s["chosen_by_fit"],
            "setting": s["description"],
            "steps": s["steps"],
            "first_step_s": round(steps[0]["seconds"], 1),
            "attention": s["attention_backend"],
            "train_s": round(train_s, 1),
        }
    )
    return row


def long_rows(work: Path, name: str, model: Path, overrides: dict) -> list[dict]:
    """One row per step of a ``--long`` run: the step's pack, speed, peak GPU memory and the estimate for it."""
    from transformers import AutoConfig

    from longalign_trainer.train.memory_estimate import GIB, ModelShape, Setting, estimate

    s = json.loads((work / name / "summary.json").read_text())
    shape = ModelShape.from_config(AutoConfig.from_pretrained(model))
    rows = []
    for r in (json.loads(x) for x in (work / name / "train-log-rank0.jsonl").read_text().splitlines()):
        setting = Setting(
            zero_stage=s["zero_stage"],
            checkpoint_keeps=s["checkpoint_keeps"] or "nothing",
            pack_tokens=r["tokens"],
            checkpoint_layers=s["checkpoint_layers"],
            gradient_checkpointing=s["checkpoint_keeps"] is not None,
            offload_checkpoints=bool(overrides.get("offload_checkpoints")),
            tiled_mlp=bool(overrides.get("tiled_mlp")),
        )
        rows.append(
            {
                "row": f"longalign train {name} step {r['step']}",
                "tokens": r["tokens"],
                "seconds": r["seconds"],
                "tokens_per_s": r["tokens"] / r["seconds"],
                "steady_mfu_989": r["mfu"],
                "peak_gib": r["peak_gpu_gib"],
                "estimate_gib": round(estimate(shape, setting).gpu / GIB, 1),
                "zero_stage": s["zero_stage"],
                "checkpoint_keeps": s["checkpoint_keeps"],
                "checkpoint_layers": s["checkpoint_layers"],
            }
        )
    return rows


def run_peer(work: Path, strategy: str, args, lengths_file: Path) -> dict:
    """One train_throughput.py strategy in a process of its own, on the set's lengths; its row from its JSON."""
    out = work / f"peer-{strategy}.json"
    cmd = [
        sys.executable,
        str(HERE / "train_throughput.py"),
        "--strategies",
        strategy,
        "--json",
        str(out),
        "--lengths",
        str(lengths_file),
        "--skip-pack-check",
        "--global-batch",
        str(args.global_batch),
    ]
    cmd += ["--smoke"] if args.smoke else ["--shape", args.shape]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    try:
        (r,) = json.loads(out.read_text())["results"]
    except (OSError, ValueError):
        return {"row": strategy, "error": (done.stdout + done.stderr)[-600:]}
    return {
        "row": strategy,
        **{k: r.get(k) for k in ("tokens_per_s", "mfu_989", "peak_gib", "packing_efficiency", "error")},
    }


def refusal(work: Path, shape: str, overrides: dict, args) -> dict:
    """``longalign train`` on a config-only model folder: must exit 2 with the numbers, before loading."""
    import yaml

    out = work / f"refuse-{shape}"
    model = config_only(out / "model", shape)
    data = out / "one.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n"
    )
    (out / "train.yaml").write_text(
        yaml.safe_dump(
            {
                "model_path": str(model),
                "data": [{"path": str(data)}],
                "output_dir": str(out),
                "max_tokens_per_pack": args.cap,
                "termination_message_path": str(out / "summary.json"),
                **overrides,
            }
        )
    )
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "longalign_trainer.cli", "train", "--config", str(out / "train.yaml")],
        capture_output=True,
        text=True,
        env=ENV,
    )
    return {
        "row": f"refuse {shape} {overrides}",
        "rc": done.returncode,
        "seconds": round(time.monotonic() - t0, 1),
        "message": done.stderr.strip().splitlines()[-1][:700] if done.stderr.strip() else "",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="0.79b", choices=list(SHAPES))
    p.add_argument("--sequences", type=int, default=200)
    p.add_argument("--global-batch", type=int, default=96)
    p.add_argument(
        "--variants",
        default="zero_stage=3;checkpoint_keeps=attention;checkpoint_keeps=nothing",
        help="';'-separated override sets for extra longalign train rows (the defaults always run)",
    )
    p.add_argument("--peers", default="hf_packing,hf_liger,ours_packing_weighted")
    p.add_argument("--profile", action="store_true", help="also profile the defaults (train_profiled.py)")
    p.add_argument("--refuse", default="", help="override set that must be refused up front (see above)")
    p.add_argument("--refuse-shape", default="8b-full", choices=[*SHAPES, *SHAPES_EXTRA])
    p.add_argument("--work", default="/tmp/train-product")
    p.add_argument("--smoke", action="store_true", help="tiny model and lengths, on CPU")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default: the shape's)")
    p.add_argument("--long", default="", help="comma-separated lengths: one sequence of each, one per step")
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "train_product.json"))
    args = p.parse_args()
    import torch

    on_gpu = torch.cuda.is_available() and not args.smoke
    longs = [int(n) for n in args.long.split(",") if n]
    if args.smoke:
        args.shape, args.cap, args.sequences, mix = "smoke", 1024, min(args.sequences, 40), (256, 256, 40)
    else:
        args.cap, mix = 65536, (8192, 8192, 900)
    if longs:  # a little under each length (the tokenizer's count is only estimated), packs of the longest
        args.cap, args.global_batch = -(-max(longs) // 128) * 128, 1
    work = Path(args.work)
    subprocess.run(["rm", "-rf", str(work)])
    work.mkdir(parents=True)
    rows: list[dict] = []
    if args.refuse:
        rows.append(refusal(work, args.refuse_shape, parse_overrides(args.refuse), args))
        print(json.dumps(rows[-1]), flush=True)
    t0 = time.monotonic()
    model = write_model(work / "model", args.shape, args.cap, on_gpu, args.layers)
    if on_gpu:
        torch.cuda.empty_cache()
    wanted = [int(n * 0.99) for n in longs] or synthetic_lengths(args.sequences, 0, args.cap, *mix)
    lengths = write_set(work / "set.jsonl", model, wanted, 0)
    kept = [n for n in lengths if n <= args.cap]
    lengths_file = work / "lengths.json"
    lengths_file.write_text(json.dumps(kept))
    bound = sum(kept) / (math.ceil(sum(kept) / args.cap) * args.cap)
    env = {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "torch": torch.__version__,
        "shape": args.shape,
        "sequences": len(kept),
        "tokens": sum(kept),
        "packing_bound": bound,
        "setup_s": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(env), flush=True)
    if args.profile:
        rows.append(run_product(work, "profiled", model, work / "set.jsonl", args, {}, profile=True))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "profile"}), flush=True)
    variants = [(v.replace("=", "-").replace(",", "+"), parse_overrides(v)) for v in args.variants.split(";") if v]
    for name, overrides in variants[:1] if longs else [("defaults", {}), *variants]:
        rows.append(run_product(work, name, model, work / "set.jsonl", args, overrides))
        print(json.dumps(rows[-1]), flush=True)
        if longs and not rows[-1].get("error"):
            rows += long_rows(work, name, model, overrides)
            print("\n".join(json.dumps(r) for r in rows[-len(kept) :]), flush=True)
    for strategy in [s for s in args.peers.split(",") if s]:
        rows.append(run_peer(work, strategy, args, lengths_file))
        print(json.dumps(rows[-1]), flush=True)
    with open(args.json, "w") as f:
        json.dump({"env": env, "rows": rows}, f)

    liger = next((r.get("tokens_per_s") for r in rows if r["row"] == "hf_liger" and r.get("tokens_per_s")), None)
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(
        f"\n{env['device']}, {args.shape}, {env['sequences']} sequences, {env['tokens']:,} tokens, "
        f"packing bound {bound:.3f}"
    )
    print(
        f"{'row':<44}{'tok/s':>8}{'steady':>8}{'MFU':>6}{'st.MFU':>7}{'peak':>7}{'est.':>7}{'pack':>7}{'×Liger':>7}{'steady':>7}"
        "  chosen"
    )
    for r in rows:
        if "error" in r and r.get("error"):
            print(f"{r['row']:<44} ERROR {str(r['error'])[-300:]}")
            continue
        if "message" in r:
            print(f"{r['row']:<44} exit {r['rc']} after {r['seconds']} s: {r['message']}")
            continue
        if "profile" in r:
            prof = r["profile"]
            figures = {k: v for k, v in prof.items() if k != "kernels"}
            print(f"\nprofile of the defaults' steady steps: {json.dumps(figures)}")
            print(prof["kernels"])
            continue
        tps = r.get("tokens_per_s")
        chosen = (
            f"ZeRO-{r['zero_stage']} keeps {r['checkpoint_keeps']} layers {r['checkpoint_layers']}"
            if "zero_stage" in r
            else ""
        )
        print(
            f"{r['row']:<44}{fmt(tps, ',.0f'):>8}{fmt(r.get('steady_tokens_per_s'), ',.0f'):>8}"
            f"{fmt(r.get('mfu_989') and 100 * r['mfu_989'], '.1f'):>6}"
            f"{fmt(r.get('steady_mfu_989') and 100 * r['steady_mfu_989'], '.1f'):>7}{fmt(r.get('peak_gib'), '.1f'):>7}"
            f"{fmt(r.get('estimate_gib'), '.1f'):>7}{fmt(r.get('packing_efficiency'), '.3f'):>7}"
            f"{fmt(liger and tps and tps / liger, '.2f'):>7}"
            f"{fmt(liger and r.get('steady_tokens_per_s') and r['steady_tokens_per_s'] / liger, '.2f'):>7}  {chosen}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
