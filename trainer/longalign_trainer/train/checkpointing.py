"""Gradient checkpointing that keeps what is expensive to recompute.

Full checkpointing keeps each decoder layer's input and runs the whole layer again in the backward pass. At
long context attention is most of a layer's cost (a 64k pack on an H100: 78 % of the GPU time of a step), so
recomputing it is the dearest part of the bill. Selective checkpointing (PyTorch's ``context_fn`` policies)
keeps the outputs of chosen kernels and recomputes the rest:

* ``nothing``: plain full checkpointing;
* ``attention``: the attention kernels' outputs (output and log-sum-exp, ~2·hidden bytes per token and layer);
* ``attention_and_mlp``: also the MLP's gate and up projections (2·intermediate·2 bytes per token and layer),
  so only the attention projections and the pointwise work are recomputed;
* ``matmuls``: also the attention's q/k/v/o projections (every matrix product of a layer but the MLP's down
  projection, whose output the backward pass never needs), so only pointwise work (norms, RoPE, SwiGLU's
  activation) is recomputed: ~2·(2·hidden + 2·kv_width + 2·intermediate) bytes per token and layer.

``layers`` (the trainer's ``checkpoint_layers``) checkpoints only the first N decoder layers; the others keep
every activation, recompute nothing and cost the most memory.

``offload`` (the trainer's ``offload_checkpoints``) keeps each checkpointed layer's input in pinned CPU memory
instead of on the GPU, copied back for the layer's recomputation (full recomputation: what a layer keeps is
its input alone). At 1M tokens a Llama-3.1-8B layer's input is 8 GiB, 256 GiB for its 32 layers: without
offload the checkpoints alone outgrow any GPU.
"""

from __future__ import annotations

import functools

KEEPS = ("nothing", "attention", "attention_and_mlp", "matmuls")
ATTENTION_OPS = (
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_flash_attention_forward",
    "_varlen_attn",
    "_cudnn_attention_forward",
    "flash_attn",
)


def enable(model, keep: str = "attention", layers: int | None = None, offload: bool = False) -> int:
    """Turn on non-reentrant gradient checkpointing of the decoder layers (the first ``layers`` of them, or
    all), keeping ``keep`` (see ``KEEPS``), or with ``offload`` their inputs in CPU memory; returns how many
    layers are checkpointed."""
    kwargs: dict = {"use_reentrant": False}
    if keep not in KEEPS:
        raise ValueError(f"checkpoint_keeps: {keep!r} is not one of {KEEPS}")
    if offload and keep != "nothing":
        raise ValueError(f"offload_checkpoints: recomputes every layer in full, not with checkpoint_keeps: {keep}")
    if layers is not None and layers < 0:
        raise ValueError(f"checkpoint_layers: must be ≥ 0, got {layers}")
    if keep != "nothing":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        mlp_width = model.config.intermediate_size if keep in ("attention_and_mlp", "matmuls") else None
        kwargs["context_fn"] = functools.partial(
            create_selective_checkpoint_contexts,
            functools.partial(_policy, mlp_width=mlp_width, all_matmuls=keep == "matmuls"),
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    checkpointed = decoder_layers(model)
    for layer in checkpointed if offload else []:
        layer._gradient_checkpointing_func = offloaded_checkpoint
    for layer in checkpointed[layers:] if layers is not None else []:
        layer.gradient_checkpointing = False
    return min(len(checkpointed), layers) if layers is not None else len(checkpointed)


def decoder_layers(model) -> list:
    """The modules transformers checkpoints (its ``GradientCheckpointingLayer``s: the decoder layers), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _policy(ctx, op, *args, mlp_width: int | None = None, all_matmuls: bool = False, **kwargs):
    import torch
    from torch.utils.checkpoint import CheckpointPolicy

    name = str(op)
    if any(kernel in name for kernel in ATTENTION_OPS):
        return CheckpointPolicy.MUST_SAVE
    # aten.mm(x [tokens, in], weightᵀ [in, out]): gate/up have out == intermediate, down has in == it.
    if (
        mlp_width
        and op is torch.ops.aten.mm.default
        and (args[1].shape[-1] == mlp_width or (all_matmuls and args[0].shape[-1] != mlp_width))
    ):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def offloaded_checkpoint(function, hidden_states, *args):
    """Run ``function(hidden_states, *args)`` keeping nothing but ``hidden_states``, in pinned CPU memory; the
    backward pass copies it back, recomputes and backpropagates (parameter gradients accumulate as with
    reentrant checkpointing, which DeepSpeed's hooks follow). Other tensor arguments must need no gradient
    (a decoder layer's rotary embedding and sequence boundaries)."""
    return _offloaded_function().apply(function, hidden_states, *args)


def pinned_pieces(elements: int) -> list[tuple[int, int]]:
    """``(start, length)`` pieces of a flat tensor, each a power of two elements long (its binary digits).
    torch's pinned-memory allocator rounds every allocation up to a power of two bytes: a 3 GiB checkpoint
    (a Llama-3.1-8B layer's input at 384k tokens) in one piece would take 4 GiB of host memory, in two exactly 3."""
    pieces, start = [], 0
    for bit in reversed(range(elements.bit_length())):
        if elements >> bit & 1:
            pieces.append((start, 1 << bit))
            start += 1 << bit
    return pieces


@functools.cache
def _offloaded_function():
    import torch

    class OffloadedCheckpoint(torch.autograd.Function):
        @staticmethod
        def forward(ctx, function, hidden_states, *args):
            ctx.function, ctx.args, ctx.device = function, args, hidden_states.device
            ctx.shape, ctx.dtype = hidden_states.shape, hidden_states.dtype
            flat = hidden_states.reshape(-1)
            pinned = flat.is_cuda
            ctx.saved = [
                torch.empty(n, dtype=flat.dtype, pin_memory=pinned).copy_(flat[start : start + n], non_blocking=True)
                for start, n in pinned_pieces(flat.numel())
            ]
            with torch.no_grad():
                return function(hidden_states, *args)

        @staticmethod
        def backward(ctx, grad):
            hidden_states = torch.empty(ctx.shape, dtype=ctx.dtype, device=ctx.device)
            flat = hidden_states.view(-1)
            for (start, n), piece in zip(pinned_pieces(flat.numel()), ctx.saved, strict=True):
                flat[start : start + n].copy_(piece, non_blocking=True)
            hidden_states.requires_grad_()
            with torch.enable_grad():
                out = ctx.function(hidden_states, *ctx.args)
            torch.autograd.backward(out, grad)
            return (None, hidden_states.grad, *(None for _ in ctx.args))

    return OffloadedCheckpoint
