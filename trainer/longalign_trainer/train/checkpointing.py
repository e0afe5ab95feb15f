"""Gradient checkpointing that keeps what is expensive to recompute.

Full checkpointing keeps each decoder layer's input and runs the whole layer again in the backward pass. At
long context attention is most of a layer's cost (a 64k pack on an H100: 78 % of the GPU time of a step), so
recomputing it is the dearest part of the bill. Selective checkpointing (PyTorch's ``context_fn`` policies)
keeps the outputs of chosen kernels and recomputes the rest:

* ``nothing``: plain full checkpointing;
* ``attention``: the attention kernels' outputs (output and log-sum-exp, ~2·hidden bytes per token and layer);
* ``attention_and_mlp``: also the MLP's gate and up projections (2·intermediate·2 bytes per token and layer),
  so only the attention projections and the pointwise work are recomputed.
"""

from __future__ import annotations

import functools

KEEPS = ("nothing", "attention", "attention_and_mlp")
ATTENTION_OPS = ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_flash_attention_forward", "_varlen_attn",
                 "_cudnn_attention_forward", "flash_attn")


def enable(model, keep: str = "attention") -> None:
    """Turn on non-reentrant gradient checkpointing of every decoder layer, keeping ``keep`` (see ``KEEPS``)."""
    kwargs: dict = {"use_reentrant": False}
    if keep not in KEEPS:
        raise ValueError(f"checkpoint_keeps: {keep!r} is not one of {KEEPS}")
    if keep != "nothing":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        mlp_width = model.config.intermediate_size if keep == "attention_and_mlp" else None
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts,
                                                 functools.partial(_policy, mlp_width=mlp_width))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _policy(ctx, op, *args, mlp_width: int | None = None, **kwargs):
    import torch
    from torch.utils.checkpoint import CheckpointPolicy

    name = str(op)
    if any(kernel in name for kernel in ATTENTION_OPS):
        return CheckpointPolicy.MUST_SAVE
    if mlp_width and op is torch.ops.aten.mm.default and args[1].shape[-1] == mlp_width:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE
