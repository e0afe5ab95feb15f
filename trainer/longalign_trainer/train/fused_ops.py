"""Compiled pointwise kernels for Llama-style decoder layers (RMSNorm, SwiGLU, rotary embedding), on GPUs.

transformers runs RMSNorm as six separate kernels (upcast, square, mean, rsqrt, scale, downcast), SwiGLU as
two and the rotary embedding as five per tensor (two products, a sum, a negation and a concatenation), each
reading and writing the whole activation; at 64k tokens that is a large share of a step's non-attention
time. ``torch.compile`` fuses each into one kernel forward and one backward. Only the pointwise work is
compiled, per module instance: the matmuls, attention and DeepSpeed's parameter hooks stay eager, and other
models (or modules of another shape) are left as they are.

With ``whole_layers`` (the trainer's ``compile_layers``) each decoder layer that is not checkpointed is compiled
whole instead, so the residual additions, the gradients' sums and the reshapes around the projections fuse too
(one compilation serves every layer: Dynamo treats their parameters as inputs). Attention breaks the graph
(``attention.install``), so each backend runs its own kernel. Checkpointed layers keep the per-module kernels:
selective checkpointing replays the layer op by op. One H200, ``benchmarks/train_product.py``: +1.6 % steady
tokens/s at 0.79 B, +1.8 % at Llama-3.1-8B's width, for a first step that compiles ~9 s longer on a fresh
machine (README: "Whole layers compiled").
"""

from __future__ import annotations

import contextvars
import sys
import types
from collections.abc import Callable
from functools import cache
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

# Model families whose ``apply_rotary_pos_emb`` is Llama's (``rotary`` below); others keep their own.
ROTARY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
_rotary_compiled = contextvars.ContextVar("longalign_rotary_compiled", default=False)


def apply(model, whole_layers: bool = False) -> int:
    """Route the RMSNorm, SwiGLU and (Llama-family) attention modules of ``model`` through compiled kernels;
    with ``whole_layers``, compile each decoder layer that is not checkpointed whole instead (its norms, SwiGLU,
    rotary embedding, residual additions and reshapes fused; attention runs outside the graph, its own kernel,
    and the matmuls stay cuBLAS's). Returns how many modules were patched or compiled."""
    from longalign_trainer.train.checkpointing import decoder_layers

    whole = [layer for layer in decoder_layers(model) if not layer.gradient_checkpointing] if whole_layers else []
    for layer in whole:
        layer.compile(dynamic=True)
    inside = {id(m) for layer in whole for m in layer.modules()}
    patched = len(whole)
    for module in model.modules():
        kind = type(module).__name__
        if id(module) in inside:
            continue
        if kind.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and module.weight.ndim == 1:
            module.forward = types.MethodType(_norm_forward, module)
            patched += 1
        elif (
            kind.endswith("MLP")
            and all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))
            and getattr(getattr(module, "config", None), "hidden_act", None) in ("silu", "swish")
        ):
            module.forward = types.MethodType(_swiglu_forward, module)
            patched += 1
        elif kind.endswith("Attention") and _route_rotary(type(module)):
            module.forward = types.MethodType(_attention_forward, module)
            patched += 1
    return patched


def rms_norm(x, weight, eps: float):
    """transformers' Llama RMSNorm: normalise in fp32, cast back, scale."""
    import torch

    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def silu_mul(gate, up):
    """SwiGLU's pointwise part: silu(gate) · up."""
    import torch

    return torch.nn.functional.silu(gate) * up


def rotary(q, k, cos, sin, unsqueeze_dim: int = 1):
    """transformers' Llama ``apply_rotary_pos_emb``: x·cos + rotate_half(x)·sin, for q and k."""
    import torch

    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

    def rotate(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    return rotate(q), rotate(k)


@cache
def compiled(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` through ``torch.compile`` (dynamic shapes), compiled once per function."""
    import torch

    return torch.compile(fn, dynamic=True)


def _norm_forward(self, hidden_states):
    return compiled(rms_norm)(hidden_states, self.weight, self.variance_epsilon)


def _swiglu_forward(self, x):
    return self.down_proj(compiled(silu_mul)(self.gate_proj(x), self.up_proj(x)))


def _route_rotary(attention_class) -> bool:
    """Make the modeling module's ``apply_rotary_pos_emb`` run ``rotary`` compiled inside the attention
    modules ``apply`` patched (and the module's own function everywhere else); False for other families."""
    modeling = sys.modules[attention_class.__module__]
    original = getattr(modeling, "apply_rotary_pos_emb", None)
    family = modeling.__name__.rpartition(".")[0].rpartition(".")[2]  # transformers.models.<family>.modeling_*
    if family not in ROTARY_FAMILIES or original is None:
        return False
    if not getattr(original, "routes_to_compiled", False):

        def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
            import torch

            if torch.compiler.is_compiling():  # traced into a compiled layer's graph (the same computation)
                return rotary(q, k, cos, sin, unsqueeze_dim)
            fn = compiled(rotary) if _rotary_compiled.get() else original
            return fn(q, k, cos, sin, unsqueeze_dim)

        setattr(apply_rotary_pos_emb, "routes_to_compiled", True)  # noqa: B010  (marks our wrapper)
        setattr(modeling, "apply_rotary_pos_emb", apply_rotary_pos_emb)  # noqa: B010  (patches transformers)
    return True


def _attention_forward(self, *args, **kwargs):
    token = _rotary_compiled.set(True)
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        _rotary_compiled.reset(token)
