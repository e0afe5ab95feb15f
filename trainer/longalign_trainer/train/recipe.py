"""The training recipe: setup / train / save_checkpoint / export / cleanup, one straight-line loop.

Every rank of a ``torchrun`` group (or a single local process) runs this. Each optimizer step:

1. the sampler hands this rank its micro-batches of the step (the same global plan on every rank);
2. the step's counts (sequences M, micro-batches K) come from that global plan, counted by each rank alone; the
   step's packs and loss weights are queued for the GPU while it still runs the step before;
3. every micro-batch is one pack through ``longalign_packed`` attention; its weighted loss is backpropagated
   unscaled (DeepSpeed runs with caller-owned gradient accumulation: ``step()`` is the boundary). With
   sequence parallelism the ranks of an SP group share each pack, each running its slice of the tokens
   (``sequence_parallel.py``), and the sampler deals packs over the data-parallel ranks (world / SP size);
4. ``engine.step()`` clips, updates and advances the schedule; rank 0 reports progress.

Checkpoints (DeepSpeed state + sampler position + RNG) go to a temporary folder that is renamed when
complete, so a kill at any moment leaves the last complete checkpoint intact; ``latest`` names it. SIGTERM
(a pod being deleted or preempted; torchrun forwards it to every rank) ends the run gracefully: the ranks
agree on it through the step's loss all-reduce, save a checkpoint after the current step and stop.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

from longalign_trainer.atomic_write import make_readable
from longalign_trainer.contract import ProgressReporter, write_summary
from longalign_trainer.train import (
    attention,
    checkpointing,
    fused_ops,
    linear_loss,
    memory_estimate,
    resharding,
    sequence_parallel,
    tiled_mlp,
    volume_space,
)
from longalign_trainer.train.batching import StepSampler
from longalign_trainer.train.config import TrainConfig
from longalign_trainer.train.data import REJECTED_FILE, load_examples
from longalign_trainer.train.loss import StepCounts, count_step, loss_weights, weighted_loss
from longalign_trainer.train.packing import IGNORE_INDEX, Pack, build_pack, target_tokens, to_device

H100_DENSE_BF16_TFLOPS = 989.0
STATE_TAG = "state"  # DeepSpeed's sub-folder inside one checkpoint


def training_flops(shape: dict, seq_lengths, loss_tokens: int) -> float:
    """FLOPs of one forward+backward that the loss needs: 6·(parameters besides the embeddings)·tokens, the
    LM head's 6·head·loss_tokens (``linear_loss`` computes logits only for the rows that take a loss), and
    6·layers·hidden·Σ s_i² (causal attention per sequence). ``shape``: ``model_shape``'s.

    >>> training_flops({"body_params": 10, "head_params": 2, "layers": 2, "hidden": 4}, [3, 1], loss_tokens=2)
    744.0
    """
    tokens = sum(seq_lengths)
    attention = 6.0 * shape["layers"] * shape["hidden"] * sum(s * s for s in seq_lengths)
    return 6.0 * shape["body_params"] * tokens + 6.0 * shape["head_params"] * loss_tokens + attention


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warmup, then the schedule.

    >>> [round(lr_factor(s, 10, 2, "cosine", 0.0), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


class Preempted(Exception):
    """SIGTERM arrived: the run stopped after checkpointing the step it was in."""


class Recipe:
    """One training run; ``run()`` is setup → train → export → cleanup."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.stop_requested = False
        self.losses: list[float] = []
        self.tokens_seen = 0
        self.peak_bytes = 0  # the most GPU memory allocated before the current step (setup, earlier steps)
        self.ckpt_root = cfg.checkpoints
        self.slowest_step_s = 0.0
        self.slowest_checkpoint_s = 0.0
        """What stopping on SIGTERM costs at most, as measured: the step in flight, then a checkpoint (the operator
        sets the training pods' grace period from them)."""

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Process group, data, model, DeepSpeed engine; then resume from the newest checkpoint if asked."""
        import deepspeed
        import torch
        import torch.distributed as dist
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        cfg = self.cfg
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
        _default_single_process_env()
        # DeepSpeed 0.19 calls collectives that torch 2.13 deprecates, twice per layer and step: keep logs readable.
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
        self.cuda = torch.cuda.is_available()
        deepspeed.init_distributed(dist_backend="nccl" if self.cuda else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.sp = sequence_parallel.layout(
            self.rank, self.world, cfg.sequence_parallel_size, memory_estimate.gpus_per_node()
        )
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if self.cuda else torch.device("cpu")
        if self.cuda:
            torch.cuda.set_device(self.device)
        self.bf16 = self.cuda if cfg.bf16 is None else cfg.bf16
        self.backend = attention.register(cfg.attention_backend, self.device.type)
        model_config = AutoConfig.from_pretrained(cfg.model_path)
        self.sp = sequence_parallel.choose_attention(self.sp, model_config, cfg.sequence_parallel_attention)
        sequence_parallel.register(self.sp)
        torch.manual_seed(cfg.seed)
        # ZeRO stage and checkpointing as the config says or, where it leaves them open, by what fits; a config
        # that cannot fit stops here, before anything is loaded.
        gpu_bytes = torch.cuda.mem_get_info(self.device)[1] if self.cuda else None
        shape = memory_estimate.ModelShape.from_config(model_config)
        self.memory, self.memory_estimate = memory_estimate.plan(
            cfg, shape, self.world, gpu_bytes, memory_estimate.host_memory_available(), self.sp.attention
        )
        self.zero_stage = self.memory.zero_stage
        # ZeRO-3 gathers parameters inside each layer, and not the same number of times in the forward pass and
        # its recomputation, which selective checkpointing's op-by-op replay refuses: it gets full checkpointing.
        self.checkpoint_keeps = self.memory.checkpoint_keeps if self.zero_stage < 3 else "nothing"
        self.checkpoint_layers = self.memory.checkpoint_layers
        self.compiled_layers = self._compiled_layers(shape.layers)
        self.setting = self._setting(shape, gpu_bytes)
        if self.rank == 0:
            _log_line(self.setting["description"])

        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
        objects_group = dist.new_group(backend="gloo")  # examples travel as pickled objects, on the CPU

        def all_gather(obj):
            out = [None] * self.world
            dist.all_gather_object(out, obj, group=objects_group)
            return out

        self.examples, self.data_report = load_examples(
            [(f.path, f.ratio) for f in cfg.data],
            self.tokenizer,
            cfg.max_tokens_per_pack,
            cfg.overlong,
            cfg.seed,
            self.rank,
            self.world,
            all_gather,
            log=_log_line,
            rejected_path=cfg.output_dir / REJECTED_FILE,
        )
        self.target_tokens = [target_tokens(e.labels) for e in self.examples]
        self.sampler = StepSampler(
            [len(e) for e in self.examples],
            strategy=cfg.strategy,
            global_batch_size=cfg.global_batch_size,
            capacity=cfg.max_tokens_per_pack,
            micro_batch_size=cfg.micro_batch_size,
            world_size=self.sp.dp_size,  # the ranks of an SP group share their packs
            rank=self.sp.dp_rank,
            seed=cfg.seed,
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
        )
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        resume_from = self.latest_checkpoint() if cfg.resume else None
        reshard = resume_from is not None and resharding.saved_world_size(resume_from) != self.world
        ds_config = self.deepspeed_config()
        if reshard:
            ds_config["checkpoint"] = {"load_universal": True}
        # Every rank loads the whole model into CPU memory; deepspeed.initialize then partitions it (ZeRO-3).
        # (transformers' HfDeepSpeedConfig would partition while loading, but needs accelerate, whose import
        # of DeepSpeed prints to stdout on CPU machines.)
        model = AutoModelForCausalLM.from_pretrained(
            cfg.model_path, attn_implementation=attention.NAME, dtype=torch.bfloat16 if self.bf16 else torch.float32
        )
        model.config.use_cache = False
        self.model_shape = model_shape(model)
        if cfg.gradient_checkpointing:
            checkpointing.enable(model, self.checkpoint_keeps, self.checkpoint_layers, cfg.offload_checkpoints)
        if cfg.fused_ops and self.cuda:
            fused_ops.apply(model, whole_layers=self.compiled_layers > 0)
        if cfg.tiled_mlp:
            tiled_mlp.apply(model)
        linear_loss.apply(model)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        total, warmup = self.sampler.total_steps, math.ceil(cfg.warmup_ratio * self.sampler.total_steps)
        schedule = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
            opt, lambda s: lr_factor(s, total, warmup, cfg.lr_schedule, cfg.min_lr_ratio)
        )
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=groups, config=ds_config, lr_scheduler=schedule
        )
        if resume_from is not None:
            self.resume(resume_from, reshard)
            if self.rank == 0:
                _log_line(
                    f"resumed from step {self.sampler.position} of {self.sampler.total_steps}, checkpoint "
                    f"{resume_from}"
                    + (
                        f" (written by {resharding.saved_world_size(resume_from)} ranks, resharded to {self.world})"
                        if reshard
                        else ""
                    )
                )
        self._trim_log(self.sampler.position)

    def _compiled_layers(self, layers: int) -> int:
        """How many decoder layers ``fused_ops`` compiles whole: those not checkpointed, where it can."""
        cfg = self.cfg
        if not self.cuda or cfg.compile_layers is False or cfg.compile_layers_conflict(self.zero_stage):
            return 0
        if not cfg.gradient_checkpointing:
            return layers
        return 0 if self.checkpoint_layers is None else max(0, layers - self.checkpoint_layers)

    def _setting(self, shape: memory_estimate.ModelShape, gpu_bytes: int | None) -> dict:
        """What this attempt trains with, as chosen at start (where the config leaves it open, by the memory
        estimate): every progress line carries it, the summary repeats it, ``description`` says it for people."""
        cfg = self.cfg
        chosen = [
            k
            for k, v in (
                ("zero_stage", cfg.zero_stage),
                ("checkpoint_keeps", cfg.checkpoint_keeps),
                ("checkpoint_layers", cfg.checkpoint_layers),
            )
            if v is None
        ]
        description = memory_estimate.describe(shape, self.memory, self.memory_estimate, gpu_bytes)
        return {
            "attention_backend": self.backend,
            "sequence_parallel_size": self.sp.size,
            "sequence_parallel_attention": self.sp.attention if self.sp.size > 1 else None,
            "zero_stage": self.zero_stage,
            "checkpoint_keeps": self.checkpoint_keeps if cfg.gradient_checkpointing else None,
            "checkpoint_layers": self.checkpoint_layers if cfg.gradient_checkpointing else None,
            "compiled_layers": self.compiled_layers,
            "chosen_by_fit": chosen,
            "memory_estimate": {
                **self.memory_estimate.as_dict(),
                **({"gpu_memory_gib": round(gpu_bytes / 2**30, 1)} if gpu_bytes is not None else {}),
            },
            "description": f"{description}, {self.backend} attention"
            + (f", {self.compiled_layers} layers compiled whole" if self.compiled_layers else "")
            + (f"; chosen by fit: {', '.join(chosen)}" if chosen else ""),
        }

    def deepspeed_config(self) -> dict:
        """The DeepSpeed config from our settings (one micro-batch = one pack; we own accumulation)."""
        cfg = self.cfg
        zero: dict = {"stage": self.zero_stage, "stage3_gather_16bit_weights_on_model_save": True}
        if cfg.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": self.cuda}
        if cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": self.cuda}
        return {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "train_batch_size": self.world,
            "managed_gradient_accumulation": False,
            "gradient_clipping": cfg.max_grad_norm,
            "bf16": {"enabled": self.bf16},
            "zero_optimization": zero,
            "zero_force_ds_cpu_optimizer": False,
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": cfg.learning_rate,
                    "betas": list(cfg.adam_betas),
                    "weight_decay": cfg.weight_decay,
                    "torch_adam": True,
                },
            },
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }

    # ---------------------------------------------------------------- train
    def make_pack(self, micro_batch) -> Pack:
        """The pack of a micro-batch, padded to a multiple of the SP size; an empty one (a rank with less work
        this step) is a one-token filler."""
        if not micro_batch:
            pack = build_pack([([self.pad_id], [IGNORE_INDEX])])
        else:
            pack = build_pack([(self.examples[i].input_ids, self.examples[i].labels) for i in micro_batch])
        return sequence_parallel.pad_pack(pack, self.sp.size, self.pad_id)

    def prepare_step(self, step: int) -> tuple[StepCounts, list] | None:
        """Step ``step``'s counts, and this rank's packs with their loss rows and weights queued for the GPU (None
        past the last step). Under SP a rank takes its slice of each pack."""
        if step >= self.sampler.total_steps:
            return None
        plan = self.sampler.plan(step)
        packs = [self.make_pack(mb) for mb in self.sampler.my_micro_batches(plan)]
        counts = count_step([self.target_tokens[i] for i in mb] for rank in plan.per_rank for mb in rank)
        weights = [
            loss_weights(
                p.targets,
                p.seq_index,
                counts,
                self.world,
                self.cfg.loss_weighting,
                part=sequence_parallel.token_slice(p.num_tokens, self.sp),
            )
            for p in packs
        ]
        mine = [sequence_parallel.local_pack(p, self.sp) for p in packs]
        on_gpu = [
            (p.to(self.device), to_device(linear_loss.loss_rows(p.targets), self.device), to_device(w, self.device))
            for p, w in zip(mine, weights, strict=True)
        ]
        return counts, on_gpu

    def train(self) -> None:
        """The loop: for every step, forward/backward each micro-batch, then one optimizer step."""
        import torch
        import torch.distributed as dist

        cfg, engine = self.cfg, self.engine
        engine.train()
        reporter = (
            ProgressReporter(
                "train", self.sampler.total_steps, "steps", min_interval_s=cfg.progress_interval_s, setting=self.setting
            )
            if self.rank == 0
            else None
        )
        if reporter:
            reporter.announce(self.sampler.position)
        self.start, self.run_tokens = time.monotonic(), 0
        peak = cfg.peak_tflops_per_device or (H100_DENSE_BF16_TFLOPS if self.cuda else None)
        upcoming = self.prepare_step(self.sampler.position)  # the plan that the sampler yields next
        for plan in self.sampler:
            t0 = time.monotonic()
            if self.cuda:  # each step's own peak goes to the step log, the run's to the summary
                self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()
            assert upcoming is not None
            counts, on_gpu = upcoming
            local = torch.zeros((), dtype=torch.float64, device=self.device)
            for pack, rows, pack_weights in on_gpu:  # the whole pack without SP
                with linear_loss.targets(pack.targets, rows, compiled=cfg.fused_ops and self.cuda):
                    token_loss = engine(**pack.as_model_inputs()).logits[0]  # per token: the head computes the loss
                loss = weighted_loss(token_loss, pack_weights)
                engine.backward(loss, scale_wrt_gas=False)
                local += loss.detach().double()
            engine.step()
            # One all-reduce gives the step loss and whether any rank was asked to stop.
            # (torch.full, not torch.tensor: a copy from the host would wait for the GPU to finish the step.)
            flag = torch.full((), float(self.stop_requested), dtype=torch.float64, device=self.device)
            reduced = torch.stack([local, flag])
            dist.all_reduce(reduced)
            # The next step's packs are built and queued for the GPU while it still runs this one.
            upcoming = self.prepare_step(self.sampler.position)
            step_loss, stop = float(reduced[0]) / self.world, bool(reduced[1] > 0)
            self.losses.append(step_loss)
            lengths = [len(self.examples[i]) for rank in plan.per_rank for mb in rank for i in mb]
            self.tokens_seen += sum(lengths)
            self.run_tokens += sum(lengths)  # this process's steps only (tokens_seen includes resumed ones)
            elapsed = time.monotonic() - t0
            self.slowest_step_s = max(self.slowest_step_s, elapsed)
            mfu = None
            if peak:
                flops = training_flops(self.model_shape, lengths, counts.target_tokens)
                mfu = flops / elapsed / (peak * 1e12 * self.world)
            step_peak = torch.cuda.max_memory_allocated() if self.cuda else None
            self._log_step(plan.step, step_loss, float(local), counts, sum(lengths), elapsed, mfu, step_peak)
            if reporter:
                reporter.update(
                    self.sampler.position,
                    loss=step_loss,
                    tokens_per_s=sum(lengths) / elapsed,
                    mfu=mfu,
                    lr=engine.get_lr()[0],
                    slowest_step_s=self.slowest_step_s,
                    slowest_checkpoint_s=self.slowest_checkpoint_s or None,
                )
            if stop and self.sampler.position < self.sampler.total_steps:
                self.save_checkpoint()
                raise Preempted(f"stopped by SIGTERM after step {self.sampler.position}")
            if (
                self.sampler.position % cfg.checkpoint_every_steps == 0
                and self.sampler.position < self.sampler.total_steps
            ):
                self.save_checkpoint()
        self.train_s = time.monotonic() - self.start
        self.save_checkpoint()

    def _on_sigterm(self, signum, frame) -> None:
        """Ask the loop to checkpoint and stop at the end of the current step."""
        self.stop_requested = True

    @property
    def log_path(self) -> Path:
        """This rank's training log, one JSON record per step."""
        return self.cfg.output_dir / f"train-log-rank{self.rank}.jsonl"

    def _log_step(
        self,
        step: int,
        loss: float,
        local: float,
        counts,
        tokens: int,
        seconds: float,
        mfu: float | None,
        peak_bytes: int | None,
    ) -> None:
        """Append this rank's view of the step to OUTPUT_DIR/train-log-rank{R}.jsonl."""
        record = {
            "step": step + 1,
            "loss": loss,
            "local_loss": local,
            "sequences": counts.sequences,
            "micro_batches": counts.micro_batches,
            "target_tokens": counts.target_tokens,
            "tokens": tokens,
            "seconds": round(seconds, 4),
            "mfu": None if mfu is None else round(mfu, 4),
            "peak_gpu_gib": None if peak_bytes is None else round(peak_bytes / 2**30, 2),
        }
        self.cfg.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(json.dumps(record) + "\n")

    def _trim_log(self, position: int) -> None:
        """Keep only the log records of steps up to ``position`` (where this run starts): steps a killed run
        logged after its last checkpoint are trained again, and must not appear twice."""
        if not self.log_path.exists():
            return
        lines = self.log_path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and _logged_step(line) <= position]
        if len(kept) != len(lines):
            _atomic_write(self.log_path, "".join(kept))

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Write a complete checkpoint under a temporary name, then rename it and point ``latest`` at it."""
        import torch
        import torch.distributed as dist

        name = f"step-{self.sampler.position:08d}"
        final, tmp = self.ckpt_root / name, self.ckpt_root / f".tmp-{name}"
        if final.exists():  # already saved at this position (a finished run started again)
            self.last_checkpoint = final
            return final
        t0 = time.monotonic()
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        previous = self.latest_checkpoint()
        keep = self.cfg.keep_checkpoints
        fix = (
            f"keep_checkpoints={keep}: the volume holds {keep} checkpoint{'s' * (keep > 1)} and the one being "
            f"written; enlarge it or lower keep_checkpoints. The last complete checkpoint ({previous or 'none yet'}) "
            "is intact: a rerun resumes from it."
        )
        with volume_space.room_for(f"checkpoint {name}", tmp, previous, fix):
            self.engine.save_checkpoint(str(tmp), tag=STATE_TAG, save_latest=False)
            torch.save(
                {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if self.cuda else None},
                tmp / f"rng-rank{self.rank}.pt",
            )
            dist.barrier()
            if self.rank == 0:
                (tmp / "trainer_state.json").write_text(
                    json.dumps(
                        {"sampler": self.sampler.state_dict(), "losses": self.losses, "tokens_seen": self.tokens_seen}
                    )
                )
        if self.rank == 0:
            os.replace(tmp, final)
            _atomic_write(self.ckpt_root / "latest", name)
            for old in sorted(self.ckpt_root.glob("step-*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        self.last_checkpoint = final
        self.slowest_checkpoint_s = max(self.slowest_checkpoint_s, time.monotonic() - t0)
        return final

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint named by ``latest``, if any."""
        latest = self.ckpt_root / "latest"
        return self.ckpt_root / latest.read_text().strip() if latest.exists() else None

    def resume(self, path: Path, reshard: bool) -> None:
        """Load a checkpoint: weights, optimizer, schedule, position, and each rank's RNG. One written by another
        number of ranks (``reshard``) is loaded through DeepSpeed's universal format; its RNG states do not map
        to these ranks and stay as seeded."""
        import torch
        import torch.distributed as dist

        tag = STATE_TAG
        if reshard:
            if self.rank == 0:
                resharding.make_universal(path, STATE_TAG)
            dist.barrier()
            tag = resharding.UNIVERSAL_TAG
        self.engine.load_checkpoint(str(path), tag=tag)
        if reshard:
            resharding.unshare_step_counters(self.engine.optimizer.optimizer)
        state = json.loads((path / "trainer_state.json").read_text())
        self.sampler.load_state_dict(state["sampler"])
        self.losses, self.tokens_seen = state["losses"], state["tokens_seen"]
        if not reshard:
            rng = torch.load(path / f"rng-rank{self.rank}.pt", weights_only=False)
            torch.set_rng_state(rng["torch"])
            if self.cuda and rng["cuda"] is not None:
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.last_checkpoint = path

    # ---------------------------------------------------------------- export
    def export(self) -> Path:
        """Hugging Face folder (safetensors, config, tokenizer with chat template) at OUTPUT_DIR/model."""
        import torch.distributed as dist

        out, tmp = self.cfg.output_dir / "model", self.cfg.output_dir / ".tmp-model"
        if self.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0
        else:
            state = self.engine.module.state_dict()
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            module = self.engine.module
            module.config._attn_implementation = "sdpa"  # our kernel is a training concern
            module.config.use_cache = True
            fix = (
                f"Enlarge it; the final checkpoint ({self.last_checkpoint}) is intact: a rerun exports from it "
                "without training again."
            )
            with volume_space.room_for("the model export", tmp, out if out.exists() else None, fix):
                module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)
            make_readable(tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        dist.barrier()
        return out

    # ---------------------------------------------------------------- the whole run
    def _peak_gpu_gib(self) -> float | None:
        """The most GPU memory this process allocated, setup and every step (what the memory estimate predicts)."""
        import torch

        return round(max(self.peak_bytes, torch.cuda.max_memory_allocated()) / 2**30, 1) if self.cuda else None

    def summary(self, wall_s: float, export: Path | None) -> dict:
        """The stage summary (≤ 4 KiB) the operator reads from the termination message."""
        return {
            "stage": "train",
            "ok": True,
            "steps": self.sampler.position,
            "total_steps": self.sampler.total_steps,
            "final_loss": self.losses[-1] if self.losses else None,
            "first_loss": self.losses[0] if self.losses else None,
            "tokens_seen": self.tokens_seen,
            "packing_efficiency": self.sampler.packing_efficiency(),
            "wall_s": round(wall_s, 1),
            "tokens_per_s": round(self.run_tokens / self.train_s, 1) if getattr(self, "train_s", 0) else None,
            "strategy": self.cfg.strategy,
            "loss_weighting": self.cfg.loss_weighting,
            "world_size": self.world,
            **self.setting,
            "peak_gpu_gib": self._peak_gpu_gib(),
            "checkpoint": str(getattr(self, "last_checkpoint", "")),
            "slowest_step_s": round(self.slowest_step_s, 2),
            "slowest_checkpoint_s": round(self.slowest_checkpoint_s, 2),
            "export": str(export) if export else None,
            "data": self.data_report.summary(),
            "rejected_records": str(self.cfg.output_dir / REJECTED_FILE),
        }

    def cleanup(self) -> None:
        """Leave the process group."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def run(self) -> dict:
        """setup → train → export → summary (rank 0 writes it) → cleanup."""
        t0 = time.monotonic()
        try:
            self.setup()
            self.train()
            export = self.export()
            summary = self.summary(time.monotonic() - t0, export)
            if self.rank == 0:
                write_summary(summary, self.cfg.termination_message_path)
            return summary
        except Preempted as stopped:
            summary = {
                **self.summary(time.monotonic() - t0, None),
                "ok": False,
                "preempted": True,
                "error": str(stopped),
            }
            if self.rank == 0:
                write_summary(summary, self.cfg.termination_message_path)
            return summary
        finally:
            self.cleanup()


def model_shape(model) -> dict:
    """Sizes for the FLOP count: parameters besides the embeddings (``body_params``), the LM head's (counted
    even when tied to the input embedding: its matmul runs either way), layers, hidden."""

    def numel(p):  # under ZeRO-3 a partitioned parameter keeps its full size in ds_numel
        return getattr(p, "ds_numel", p.numel())

    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    total = sum(numel(p) for p in model.parameters())
    cfg = model.config
    return {
        "body_params": total - numel(embed) - (0 if head is embed else numel(head)),
        "head_params": numel(head),
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
    }


def _logged_step(line: str) -> int:
    """The step of one training-log record; a line cut short by a kill counts as past every step."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62


def _log_line(text: str) -> None:
    """One line for people on stderr (stdout carries the progress lines)."""
    print(f"train: {text}", file=sys.stderr, flush=True)


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path``'s content in one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _default_single_process_env() -> None:
    """Outside ``torchrun``, behave as a group of one."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
