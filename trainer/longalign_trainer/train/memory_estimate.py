"""Will a training config fit? GPU and host memory per rank, estimated from the model's shape before loading it.

Model states (parameters, gradients, AdamW states, as ZeRO partitions them) come from DeepSpeed's own
estimators (``estimate_zero2_model_states_mem_needs`` and the ZeRO-3 twin, without their 1.5× buffer; they
count the fp32 gradients of the optimizer step). On top of them, the activations of one pack of ``T`` tokens
at the peak of its backward pass (bf16, one pack per micro-step, every Llama-style decoder layer alike),
counted as what is alive there, in the layer's widths (hidden ``h``, key/value ``kv``, MLP ``i``), at the
larger of two moments (``activation_bytes``):

* the loss's backward: what every layer keeps until its own backward (by ``checkpoint_keeps``:
  ``saved_per_token``, nothing with ``offload_checkpoints``; everything for a layer left unchecked:
  ``full_layer_per_token``), the top layer's output and the final norm's, the gradient of the norm's
  output, and one chunk of the loss's logits (train/linear_loss.py: the full logits never exist);
* the first layer backpropagated (the top one): what every other layer keeps, plus what is alive while that
  layer runs its backward (``layer_backward_per_token``: everything it keeps, the gradients in flight,
  FlashAttention's fp32 accumulators; with ``tiled_mlp`` one tile of the MLP apart);
* under sequence parallelism with all-gathered keys (``allgather_kv``), at either moment, the other ranks' keys
  and values: held by every layer that keeps its activations and by the one being recomputed, and their
  gradient once.

Measured against this (README, "Long sequences on one GPU"): at 1M tokens with every memory feature on,
13 hidden-sized bf16 tensors per token (104 KiB for Llama-3.1-8B's width) are alive at that peak, whatever
the depth; tensors that are small at 64k (gradients in flight, FlashAttention's accumulators) are most of it.

On the host, every rank loads the whole model (bf16) before DeepSpeed partitions it, and ZeRO-Offload keeps
the fp32 master weights, AdamW states and gradients there. ``choose`` picks the fastest ZeRO stage and
checkpointing that fit (ZeRO-2 and selective checkpointing before ZeRO-3, which recomputes everything; the
fewest checkpointed layers, none where every layer's activations fit, so that nothing is recomputed);
``check`` refuses a config that cannot fit, with the numbers, before anything is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longalign_trainer.config_files import InputError
from longalign_trainer.train import linear_loss

if TYPE_CHECKING:
    from longalign_trainer.train.config import TrainConfig

GIB = 2**30
PROCESS_HOST_BYTES = 3 * GIB  # one rank's Python, torch, CUDA and NCCL before any tensor
GPU_RESERVE_BYTES = 2 * GIB  # CUDA context, cuBLAS/cuDNN workspaces, allocator slack
# Fastest first: keeping more activations recomputes less; ZeRO-3 forbids selective checkpointing (recipe.py).
KEEPS_FASTEST_FIRST = ("matmuls", "attention_and_mlp", "attention", "nothing")


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a Llama-style model: its widths and parameter counts."""

    hidden: int
    layers: int
    heads: int
    kv_width: int  # key/value heads × head dimension
    intermediate: int
    vocab: int
    params: int  # all parameters
    largest_layer_params: int  # the biggest single weight (ZeRO-3 gathers one at a time): embedding or LM head
    head_dim: int
    largest_decoder_weight: int  # the biggest weight inside a decoder layer (ZeRO-3's gather at a layer's peak)

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """From a transformers config (``AutoConfig.from_pretrained(model_path)``)."""
        h, layers = int(config.hidden_size), int(config.num_hidden_layers)
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or h // heads)
        i, vocab = int(config.intermediate_size), int(config.vocab_size)
        tied = bool(getattr(config, "tie_word_embeddings", False))
        per_layer = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2 + 3 * h * i + 2 * h
        params = layers * per_layer + vocab * h * (1 if tied else 2) + h
        largest = max(h * i, h * heads * head_dim)
        return cls(h, layers, heads, kv_heads * head_dim, i, vocab, params, vocab * h, head_dim, largest)


@dataclass(frozen=True)
class Setting:
    """The memory-relevant part of a training config, for one rank."""

    zero_stage: int
    checkpoint_keeps: str  # nothing / attention / attention_and_mlp / matmuls; ignored without checkpointing
    pack_tokens: int
    gpus_per_node: int = 1
    nodes: int = 1
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_checkpointing: bool = True
    checkpoint_layers: int | None = None  # checkpoint only the first N layers (None: all)
    offload_checkpoints: bool = False  # checkpointed layers' inputs in host memory
    tiled_mlp: bool = False  # the MLP's intermediates exist for one tile of hidden-size tokens
    bf16: bool = True
    gathered_kv_tokens: int = 0  # other SP ranks' tokens whose keys and values attention gathers (allgather_kv)


@dataclass(frozen=True)
class Estimate:
    """Bytes per rank (GPU) and per node (host), with their parts, for the summary and a refusal."""

    gpu_model_states: int
    gpu_activations: int
    host: int

    @property
    def gpu(self) -> int:
        """Peak GPU memory one rank allocates."""
        return self.gpu_model_states + self.gpu_activations

    def as_dict(self) -> dict[str, float]:
        """GiB, rounded, for the summary."""
        return {
            "gpu_gib": round(self.gpu / GIB, 1),
            "gpu_model_states_gib": round(self.gpu_model_states / GIB, 1),
            "gpu_activations_gib": round(self.gpu_activations / GIB, 1),
            "host_gib": round(self.host / GIB, 1),
        }


class DoesNotFit(InputError):
    """The config needs more GPU or host memory than there is; the message gives the numbers and the fixes (exit 2)."""


def saved_per_token(shape: ModelShape, keeps: str) -> int:
    """Bytes one checkpointed layer keeps per token until its backward pass (bf16; fp32 log-sum-exp)."""
    h, kv, i = shape.hidden, shape.kv_width, shape.intermediate
    saved = {
        "nothing": 2 * h,
        "attention": 2 * h + 2 * h + 4 * shape.heads,
        "attention_and_mlp": 2 * h + 2 * h + 4 * shape.heads + 4 * i,
        "matmuls": 2 * (4 * h + 2 * kv + 2 * i) + 4 * shape.heads,
    }
    if keeps not in saved:
        raise ValueError(f"checkpoint_keeps: {keeps!r} is not one of {tuple(saved)}")
    return saved[keeps]


def full_layer_per_token(shape: ModelShape, tiled_mlp: bool = False) -> int:
    """Bytes per token an unchecked layer keeps for its backward (norm outputs, q/k/v, attention, MLP; with
    ``tiled_mlp`` the MLP keeps only its input: its intermediates are counted once per tile, apart)."""
    h, kv, i = shape.hidden, shape.kv_width, shape.intermediate
    return 2 * (6 * h + 2 * kv + (0 if tiled_mlp else 3 * i)) + 4 * shape.heads + 8


def estimate(shape: ModelShape, s: Setting) -> Estimate:
    """GPU bytes per rank and host bytes per node for ``s`` (see the module docstring)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    offload = s.offload_optimizer or s.offload_params
    if s.zero_stage == 3:
        cpu_states, gpu_states, _ = estimate_zero3_model_states_mem_needs(
            shape.params,
            shape.largest_decoder_weight,  # the LM head's gather, at the loss, is counted there (activation_bytes)
            s.gpus_per_node,
            s.nodes,
            cpu_offload=offload,
            cpu_offload_params=s.offload_params,
            zero_init=False,
            additional_buffer_factor=1.0,
        )
    else:  # DeepSpeed's ZeRO-2 formula; ZeRO-1 partitions no gradients (2 more bytes per parameter, unsplit)
        cpu_states, gpu_states = estimate_zero2_model_states_mem_needs(
            shape.params, s.gpus_per_node, s.nodes, cpu_offload=offload, additional_buffer_factor=1.0
        )
        if s.zero_stage == 1:
            gpu_states += 2 * shape.params
    load = (2 if s.bf16 else 4) * shape.params  # what from_pretrained holds on each rank before partitioning
    host = s.gpus_per_node * (load + PROCESS_HOST_BYTES) + (int(cpu_states) if offload else 0)

    activations = activation_bytes(shape, s)
    host += s.gpus_per_node * offloaded_checkpoint_bytes(shape, s)
    return Estimate(int(gpu_states), int(activations), int(host))


def offloaded_checkpoint_bytes(shape: ModelShape, s: Setting) -> int:
    """Pinned host bytes one rank's offloaded checkpoints take: every checkpointed layer's input (exactly: see
    ``checkpointing.pinned_pieces``); 0 without ``offload_checkpoints``."""
    return checked_layers(shape, s) * s.pack_tokens * 2 * shape.hidden if s.offload_checkpoints else 0


def checked_layers(shape: ModelShape, s: Setting) -> int:
    """How many decoder layers are checkpointed."""
    if not s.gradient_checkpointing:
        return 0
    return min(shape.layers, shape.layers if s.checkpoint_layers is None else s.checkpoint_layers)


def activation_bytes(shape: ModelShape, s: Setting) -> int:
    """GPU bytes beyond the model states at the peak of one pack's forward and backward pass: the larger of
    the loss's backward (``loss_phase_per_token``) and the first layer backpropagated (its attention's or its
    MLP's backward: ``layer_backward_per_token``), each with what every other layer keeps until its own
    backward pass, plus the rotary embedding's cos and sin (bf16, one head wide), which every layer uses."""
    t, layers = s.pack_tokens, shape.layers
    checked = checked_layers(shape, s)
    keeps = s.checkpoint_keeps if s.zero_stage < 3 else "nothing"
    kept = 0 if s.offload_checkpoints else saved_per_token(shape, keeps)
    full = full_layer_per_token(shape, s.tiled_mlp)
    top_checked = checked == layers  # checkpoint_layers checkpoints the first layers: the top one is the last
    others = (checked - 1 if top_checked else checked) * kept + (layers - checked - (0 if top_checked else 1)) * full
    all_layers = checked * kept + (layers - checked) * full
    rotary = 2 * 2 * shape.head_dim
    rows = min(t, linear_loss.rows_per_chunk(shape.vocab))
    loss = t * (all_layers + loss_phase_per_token(shape) + rotary) + rows * shape.vocab * LOSS_CHUNK_BYTES_PER_LOGIT
    if s.zero_stage == 3:  # ZeRO-3 gathers the LM head (bf16, and its gradient) rather than a decoder weight
        loss += 4 * (shape.largest_layer_params - shape.largest_decoder_weight)
    attention, mlp = layer_backward_per_token(shape, s.tiled_mlp, s.offload_checkpoints)
    tile = min(t, shape.hidden) * 2 * 6 * shape.intermediate if s.tiled_mlp else 0  # gate, up, product, gradients
    layer = max(t * (others + attention + rotary), t * (others + mlp + rotary) + tile)
    gathered = (layers - checked + 2) * s.gathered_kv_tokens * 2 * 2 * shape.kv_width  # bf16 keys and values
    return int(max(loss, layer) + gathered)


# One loss chunk's logits: bf16 from the matmul, their fp32 copy, fp32 log-softmax, and in the backward pass the
# fp32 gradient and its bf16 cast.
LOSS_CHUNK_BYTES_PER_LOGIT = 2 + 4 + 4 + 4 + 2


def loss_phase_per_token(shape: ModelShape) -> int:
    """Bytes per token alive in the loss's backward beyond the layers' own: the top layer's output (kept by the
    final norm), the norm's output (kept by the loss chunks), the chunks' gradients and their concatenation."""
    return 4 * 2 * shape.hidden


def layer_backward_per_token(shape: ModelShape, tiled_mlp: bool, offloaded: bool) -> tuple[int, int]:
    """Bytes per token alive while a decoder layer is backpropagated (recomputed first if checkpointed), at its
    attention's backward and at its MLP's. Attention's: the layer's input, the first norm's output, the
    rotated queries and keys, the values, the attention output and log-sum-exp, the gradients coming in (the
    layer's output's), of the residual stream and of the attention output, the query/key/value gradients and
    FlashAttention's fp32 accumulators of them (queries 4·hidden, keys and values 4·kv each). The MLP's:
    everything the layer keeps, the incoming gradient and the gradients of the gate and up projections (tiled:
    the MLP keeps only its input, and its input's gradient; one tile's intermediates are counted apart). An
    offloaded checkpoint also holds its recomputed output until the layer's backward ends."""
    h, kv, i = shape.hidden, shape.kv_width, shape.intermediate
    attention = 2 * (4 * h + 2 * kv) + 4 * shape.heads + 2 * (4 * h + 2 * kv) + (4 * h + 2 * 4 * kv)
    mlp = full_layer_per_token(shape, tiled_mlp) + 2 * (2 * h if tiled_mlp else h + 2 * i)
    out = 2 * h if offloaded else 0
    return attention + out, mlp + out


def choose(
    shape: ModelShape,
    s: Setting,
    gpu_bytes: int,
    zero_stage: int | None,
    checkpoint_keeps: str | None,
    checkpoint_layers: int | None = None,
) -> Setting:
    """``s`` with what the config leaves open (``None``: ZeRO stage, checkpointing, checkpointed layers) filled
    in: the fastest option that fits ``gpu_bytes`` with 10 % to spare, else the one that needs least. Fastest
    first: ZeRO-2, then the most kept activations, then the fewest checkpointed layers (0: none recomputed);
    ZeRO-3 last. A config that names what checkpointing keeps has every layer checkpointed unless it also
    says how many."""
    from dataclasses import replace

    stages = [zero_stage] if zero_stage is not None else [3] if s.offload_params else [2, 3]
    keeps = [checkpoint_keeps] if checkpoint_keeps is not None else list(KEEPS_FASTEST_FIRST)
    layers: list[int | None] = (
        list(range(shape.layers + 1))
        if checkpoint_layers is None and checkpoint_keeps is None and s.gradient_checkpointing
        else [checkpoint_layers]
    )
    candidates = [
        replace(s, zero_stage=z, checkpoint_keeps=k if z < 3 else "nothing", checkpoint_layers=n)
        for z in stages
        for k in (keeps if z < 3 else keeps[-1:])
        for n in layers
    ]
    for c in candidates:
        if estimate(shape, c).gpu * 1.1 <= gpu_bytes:
            return c
    return min(candidates, key=lambda c: estimate(shape, c).gpu)


def check(e: Estimate, s: Setting, gpu_bytes: int | None, host_bytes: int | None) -> None:
    """Raise ``DoesNotFit`` when the estimate exceeds the GPU's memory or the host's, naming the fixes."""
    problems = []
    if gpu_bytes is not None and e.gpu > gpu_bytes:
        problems.append(
            f"GPU memory per rank: needs ~{e.gpu / GIB:.1f} GiB (model states "
            f"{e.gpu_model_states / GIB:.1f} + activations at {s.pack_tokens} tokens per pack and rank "
            f"{e.gpu_activations / GIB:.1f}), the GPU has {gpu_bytes / GIB:.1f} GiB; fixes: more GPUs "
            "(ZeRO partitions the model states over them), sequence_parallel_size, zero_stage 3, offload_optimizer, "
            "offload_checkpoints, tiled_mlp, a smaller "
            "max_tokens_per_pack or checkpoint_keeps: nothing"
        )
    if host_bytes is not None and e.host > host_bytes:
        problems.append(
            f"host memory: the {s.gpus_per_node} rank(s) of a node need ~{e.host / GIB:.1f} GiB, "
            f"the node has {host_bytes / GIB:.1f} GiB available; fixes: offload off (with more GPUs "
            "if the GPU memory needs it), fewer ranks per node or a node with more memory"
        )
    if problems:
        raise DoesNotFit(
            f"this config cannot fit (ZeRO-{s.zero_stage}, offload_optimizer={s.offload_optimizer}, "
            f"offload_params={s.offload_params}, checkpoint_keeps={s.checkpoint_keeps}): " + "; ".join(problems)
        )


def describe(shape: ModelShape, s: Setting, e: Estimate, gpu_bytes: int | None) -> str:
    """One line for people: the ZeRO stage and offloading, what checkpointing recomputes, and the estimate
    against the GPU's memory, e.g. ``ZeRO-2, 2 of 8 layers checkpointed (keeping matmuls); memory estimate
    124.6 GiB per GPU of 139.8 (model states 40.1 + activations 84.5 at 65536 tokens per pack), host 12.3 GiB
    per node``."""
    offloaded = [what for what, on in (("optimizer", s.offload_optimizer), ("parameters", s.offload_params)) if on]
    parts = [f"ZeRO-{s.zero_stage}" + (f" ({' and '.join(offloaded)} in host memory)" if offloaded else "")]
    checked = checked_layers(shape, s)
    keeps = s.checkpoint_keeps if s.zero_stage < 3 else "nothing"
    if not checked:
        parts.append(f"no layer recomputed (all {shape.layers} keep their activations)")
    else:
        how = "recomputed in full" if keeps == "nothing" else f"keeping {keeps}"
        where = ", their inputs in host memory" if s.offload_checkpoints else ""
        parts.append(f"{checked} of {shape.layers} layers checkpointed ({how}{where})")
    if s.tiled_mlp:
        parts.append("tiled MLP")
    per = f"per GPU of {gpu_bytes / GIB:.1f}" if gpu_bytes is not None else "per rank"  # no GPU: CPU memory
    return (
        f"{', '.join(parts)}; memory estimate {e.gpu / GIB:.1f} GiB {per} (model states "
        f"{e.gpu_model_states / GIB:.1f} + activations {e.gpu_activations / GIB:.1f} at {s.pack_tokens} tokens per "
        f"pack), host {e.host / GIB:.1f} GiB per node"
    )


def host_memory_available() -> int | None:
    """Bytes this node's processes may use: the cgroup's limit (a pod's) or MemAvailable, whichever is less."""
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            limits.append(int(text))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return min(limits) if limits else None


def gpus_per_node() -> int:
    """Ranks on this node (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def plan(
    cfg: TrainConfig,
    shape: ModelShape,
    world_size: int,
    gpu_bytes: int | None,
    host_bytes: int | None,
    sp_attention: str = "ulysses",
) -> tuple[Setting, Estimate]:
    """The setting a run of the model ``shape`` uses (its ZeRO stage and checkpointing chosen by ``choose``
    where ``cfg`` leaves them open) and its estimate, for the SP attention scheme chosen
    (``sequence_parallel.choose_attention``); raises ``DoesNotFit`` before anything is loaded when it cannot
    fit."""
    local = gpus_per_node()
    pack_tokens = -(-cfg.max_tokens_per_pack // cfg.sequence_parallel_size)  # each SP rank holds a slice
    gathers = sp_attention == "allgather_kv" and cfg.sequence_parallel_size > 1
    base = Setting(
        zero_stage=cfg.zero_stage or 2,
        checkpoint_keeps=cfg.checkpoint_keeps or "attention",
        pack_tokens=pack_tokens,
        gathered_kv_tokens=(cfg.sequence_parallel_size - 1) * pack_tokens if gathers else 0,
        gpus_per_node=local,
        nodes=max(1, world_size // local),
        offload_optimizer=cfg.offload_optimizer,
        offload_params=cfg.offload_params,
        gradient_checkpointing=cfg.gradient_checkpointing,
        checkpoint_layers=cfg.checkpoint_layers,
        offload_checkpoints=cfg.offload_checkpoints,
        tiled_mlp=cfg.tiled_mlp,
        bf16=cfg.bf16 if cfg.bf16 is not None else gpu_bytes is not None,
    )  # as the recipe decides
    keeps = "nothing" if cfg.offload_checkpoints else cfg.checkpoint_keeps  # offloading recomputes in full
    chosen = choose(
        shape, base, gpu_bytes if gpu_bytes is not None else 1 << 62, cfg.zero_stage, keeps, cfg.checkpoint_layers
    )
    e = estimate(shape, chosen)
    check(e, chosen, gpu_bytes, host_bytes)
    return chosen, e
