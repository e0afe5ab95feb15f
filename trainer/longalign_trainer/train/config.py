"""The training stage's settings: one typed model, loaded from the YAML/JSON file the operator renders.

Every field is documented here, because this is where a user looks. Validation errors name the field
(``max_tokens_per_pack: must be a multiple of 128``), so a bad run fails before it asks for GPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from longalign_trainer.config_files import InputError, read_mapping
from longalign_trainer.train.sequence_parallel import Choice


class DataFile(BaseModel):
    """One LongAlign-format JSONL file and its share of the training mixture."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description='JSONL file, one {"messages": [...]} object per line')
    ratio: float | None = Field(
        None,
        gt=0,
        description=(
            "share of this file in the mixture, relative to the other files' ratios. Unset on every file (the "
            "default): every valid record of every file is used. Set: the mixture is the largest set with these "
            "proportions that repeats no record; a file with more records than its share gets a seeded random "
            "subset, and the summary says per file how many were used and why"
        ),
    )


class TrainConfig(BaseModel):
    """Settings of one training run (``longalign train --config FILE``)."""

    model_config = ConfigDict(extra="forbid")

    # What to train, on what, where to write.
    model_path: Path = Field(description="local Hugging Face model folder (weights, tokenizer, chat template)")
    data: list[DataFile] = Field(min_length=1, description="training files and their mixture ratios")
    output_dir: Path = Field(description="where the final export (safetensors + tokenizer) is written")
    checkpoint_dir: Path | None = Field(None, description="where checkpoints go; default OUTPUT_DIR/checkpoints")

    # Sequences, packing and batching.
    max_tokens_per_pack: int = Field(
        65536, ge=128, description=("tokens per pack (and the longest sequence kept); a multiple of 128")
    )
    strategy: Literal["naive", "packing", "sorted"] = Field(
        "packing",
        description=(
            "naive: one sequence per micro-step in random order; packing: sequences bin-packed into packs; "
            "sorted: batches of similar-length sequences, batch order shuffled per epoch"
        ),
    )
    loss_weighting: bool = Field(
        True,
        description=(
            "LongAlign's loss weighting: every sequence counts equally (mean over sequences of each one's mean "
            "token loss). Off: each micro-batch's plain token mean, averaged over micro-batches (paper Eq. 3)"
        ),
    )
    overlong: Literal["drop", "truncate"] = Field(
        "drop",
        description=("what to do with a sequence longer than max_tokens_per_pack: drop it, or cut it from the right"),
    )
    micro_batch_size: int = Field(
        1,
        ge=1,
        description=("sequences per micro-step for naive and sorted batching (ignored by packing, which fills packs)"),
    )
    global_batch_size: int = Field(
        96,
        ge=1,
        description=(
            "sequences per optimizer step, over all ranks; packing: on average (an epoch has "
            "ceil(sequences / global_batch_size) steps, each taking whole packs of the set)"
        ),
    )
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (default: all epochs)")
    seed: int = 42

    # Optimisation.
    learning_rate: float = Field(2e-5, gt=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of all steps spent warming up linearly")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the schedule decays to learning_rate × this")
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping; 0 turns it off")

    # Distribution and memory.
    zero_stage: Literal[1, 2, 3] | None = Field(
        None,
        description=(
            "DeepSpeed ZeRO stage; default: chosen by what fits (train/memory_estimate.py): ZeRO-2 where the model "
            "states and activations fit each GPU, since ZeRO-3 recomputes every layer in full, else ZeRO-3. The "
            "summary says which was chosen. A config that cannot fit is refused before loading (exit status 2)"
        ),
    )
    sequence_parallel_size: int = Field(
        1,
        ge=1,
        le=16,
        description=(
            "sequence parallelism: each pack is split along the sequence over this many consecutive ranks of a "
            "node (attention as sequence_parallel_attention says; see train/sequence_parallel.py), data "
            "parallelism over the rest, so a pack may be this many times longer than one GPU holds. Must divide "
            "the ranks per node (refused otherwise). Checkpoints resume under another size. Default 1: no "
            "sequence parallelism"
        ),
    )
    sequence_parallel_attention: Choice = Field(
        "auto",
        description=(
            "how attention sees the other SP ranks' tokens: ulysses (an all-to-all of heads and sequence; needs "
            "sequence_parallel_size to divide the model's attention heads and key/value heads, refused "
            "otherwise; every rank does the same work) or allgather_kv (each rank keeps its queries and "
            "all-gathers the pack's keys and values, as Llama 3's context parallelism: any head count, e.g. 4 "
            "key/value heads at SP 8; holds the whole pack's keys and values per layer, and later ranks do more "
            "of the causal attention work). auto: ulysses where it divides the heads, else allgather_kv"
        ),
    )
    tiled_mlp: bool = Field(
        False,
        description=(
            "compute each decoder layer's MLP a tile of hidden-size tokens at a time, recomputing each tile in "
            "the backward pass (DeepSpeed's TiledMLP, as ALST does): the MLP's intermediate activations (3 × "
            "intermediate width per token) exist for one tile only. One more MLP forward per layer and step; "
            "for packs of 128k tokens and more"
        ),
    )
    offload_checkpoints: bool = Field(
        False,
        description=(
            "keep each checkpointed layer's input (hidden × 2 bytes per token and layer: 8 GiB per layer at 1M "
            "tokens for Llama-3.1-8B) in pinned CPU memory, copied back for its recomputation; implies "
            "checkpoint_keeps: nothing (full recomputation) and needs gradient_checkpointing"
        ),
    )
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: keep optimizer states in CPU memory")
    offload_params: bool = Field(False, description="keep parameters in CPU memory (ZeRO-3 only)")
    bf16: bool | None = Field(None, description="bf16 training; default: on with a GPU, off (fp32) on CPU")
    gradient_checkpointing: bool = True
    checkpoint_keeps: Literal["nothing", "attention", "attention_and_mlp", "matmuls"] | None = Field(
        None,
        description=(
            "what gradient checkpointing keeps instead of recomputing: nothing (full recompute), the attention "
            "kernels' outputs (~2·hidden bytes per token and layer), those and the MLP's gate/up projections "
            "(another 4·intermediate bytes), or every matrix product but the MLP's down projection (only pointwise "
            "work is recomputed; another 4·(hidden + kv width) bytes): see train/checkpointing.py. ZeRO stage 3 "
            "always recomputes everything. Default: the most that fits the GPU by the memory estimate (matmuls first, "
            "nothing last). Issue 9's 0.79 B model, 64k packs, one H100 (benchmark, FlashAttention-3): matmuls 40.2k "
            "tokens/s at 53 GiB; attention was ~5 % slower at 24 GiB when last measured"
        ),
    )
    checkpoint_layers: int | None = Field(
        None,
        ge=0,
        description=(
            "checkpoint only the first N decoder layers; the rest keep all their activations (no recomputation, "
            "the most memory: ~2 GiB more per layer for issue 9's model at 64k tokens). Default: chosen by what "
            "fits (train/memory_estimate.py), the fewest, 0 where every layer's activations fit (issue 9's model "
            "on one H200 at 64k: 0, 41.3k tokens/s steady against 40.2k with every layer checkpointed, 74 GiB); "
            "every layer when checkpoint_keeps is set"
        ),
    )
    fused_ops: bool = Field(
        True,
        description=(
            "compiled RMSNorm, SwiGLU and rotary-embedding kernels for Llama-style models and a compiled "
            "cross-entropy, on GPUs (see train/fused_ops.py)"
        ),
    )
    compile_layers: bool | None = Field(
        None,
        description=(
            "compile each decoder layer that is not checkpointed whole (norms, SwiGLU, rotary embedding and "
            "residual additions fused; attention and matmuls as before; see train/fused_ops.py); unset: on GPUs "
            "with fused_ops under ZeRO 1-2 without tiled_mlp; true: the same, refused where it cannot apply"
        ),
    )
    attention_backend: Literal[
        "auto", "flash_attn_3", "cudnn", "flash_attn", "torch_varlen", "flex", "sdpa_block_diagonal"
    ] = Field("auto", description="kernel for packed attention; auto picks the fastest available (see attention.py)")
    peak_tflops_per_device: float | None = Field(
        None, gt=0, description=("for MFU; default 989 (H100/H200 dense bf16) on GPUs, none on CPU")
    )

    # Checkpoints, resume, reporting.
    checkpoint_every_steps: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept; older ones are deleted")
    resume: bool = Field(True, description="continue from the newest complete checkpoint in checkpoint_dir")
    progress_interval_s: float = Field(10.0, ge=0, description="at most one progress line per this many seconds")
    termination_message_path: Path | None = Field(
        None,
        description=(
            "where the final summary goes; default $LONGALIGN_TERMINATION_MESSAGE_PATH or /dev/termination-log"
        ),
    )

    @field_validator("max_tokens_per_pack")
    @classmethod
    def _multiple_of_128(cls, value: int) -> int:
        if value % 128:
            raise ValueError(f"must be a multiple of 128, got {value}")
        return value

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"both betas must be in [0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.offload_params and self.zero_stage not in (3, None):
            raise ValueError("offload_params: needs zero_stage 3")
        if self.compile_layers and (conflict := self.compile_layers_conflict(self.zero_stage)):
            raise ValueError(f"compile_layers: true cannot apply with {conflict}; leave compile_layers unset")
        if self.offload_checkpoints and not self.gradient_checkpointing:
            raise ValueError("offload_checkpoints: needs gradient_checkpointing (it offloads the checkpoints)")
        if self.offload_checkpoints and self.checkpoint_keeps not in (None, "nothing"):
            raise ValueError(
                f"offload_checkpoints: recomputes every layer in full; leave checkpoint_keeps unset or set it to "
                f"nothing, not {self.checkpoint_keeps}"
            )
        given = [f.ratio is not None for f in self.data]
        if any(given) and not all(given):
            missing = ", ".join(f"data[{n}]" for n, g in enumerate(given) if not g)
            raise ValueError(
                f"ratio: set on some files but not on {missing}; give every file a ratio, or none to use every record"
            )
        return self

    def compile_layers_conflict(self, zero_stage: int | None) -> str | None:
        """What keeps whole compiled layers (``compile_layers``) from applying under this config at ``zero_stage``
        (the configured or the chosen one), or None."""
        if zero_stage == 3:
            return (
                "zero_stage 3 (it gathers each layer's parameters in module hooks, which a compiled layer cannot run)"
            )
        if not self.fused_ops:
            return "fused_ops: false (the compiled layers are fused_ops' kernels)"
        if self.tiled_mlp:
            return "tiled_mlp (its MLP runs tile by tile outside any graph)"
        return None

    @property
    def checkpoints(self) -> Path:
        """The checkpoint folder actually used."""
        return self.checkpoint_dir or self.output_dir / "checkpoints"


def load_config(path: str | Path) -> TrainConfig:
    """Read a ``TrainConfig`` from a YAML or JSON file; raises ``InputError`` with field-named messages.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    ...     _ = f.write("model_path: m\\ndata: [{path: a.jsonl}]\\noutput_dir: out\\nmax_tokens_per_pack: 1000\\n")
    >>> try:
    ...     load_config(f.name)
    ... except ValueError as e:
    ...     print(e)
    invalid training config: max_tokens_per_pack: Value error, must be a multiple of 128, got 1000
    >>> os.unlink(f.name)
    """
    from longalign_trainer.train import stage_config

    raw = read_mapping(Path(path))
    if stage_config.is_envelope(raw):  # the operator's stage-config file
        raw = stage_config.to_train(raw)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise InputError("invalid training config: " + "; ".join(_describe(e) for e in exc.errors())) from None


def check_inputs(cfg: TrainConfig) -> None:
    """Fail before any process group starts when an input is missing: the model folder and each data file.

    ``InputError`` names the field, the path and the fix.
    """
    model = cfg.model_path
    if not model.is_dir():
        raise InputError(
            f"model_path: {model} is not a folder; give a local Hugging Face model folder (with "
            "config.json, weights and tokenizer), e.g. one made by `longalign tiny-model DIR`"
        )
    if not (model / "config.json").is_file():
        raise InputError(f"model_path: {model} has no config.json; give a Hugging Face model folder")
    for n, data in enumerate(cfg.data):
        where = f"data[{n}].path: {data.path}"
        if not data.path.exists():
            raise InputError(f"{where} does not exist; check the path (a JSONL file of LongAlign records)")
        if not data.path.is_file():
            raise InputError(f"{where} is not a file; give a JSONL file of LongAlign records")
        if data.path.stat().st_size == 0:
            raise InputError(f"{where} is empty; it needs one LongAlign record per line")


def _describe(error: ErrorDetails) -> str:
    """``field.sub: message`` for one pydantic error."""
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    return f"{where}: {error['msg']}"
