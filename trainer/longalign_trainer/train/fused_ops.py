"""Compiled pointwise kernels for Llama-style decoder layers (RMSNorm, SwiGLU), on GPUs.

transformers runs RMSNorm as six separate kernels (upcast, square, mean, rsqrt, scale, downcast) and SwiGLU
as two, each reading and writing the whole activation; at 64k tokens that is a large share of a step's
non-attention time. ``torch.compile`` fuses each into one kernel forward and one backward. Only the
pointwise work is compiled, per module instance: the matmuls, attention and DeepSpeed's parameter hooks stay
eager, and other models (or modules of another shape) are left as they are.
"""

from __future__ import annotations

import types
from functools import lru_cache


def apply(model) -> int:
    """Route the RMSNorm and SwiGLU modules of ``model`` through compiled kernels; returns how many."""
    patched = 0
    for module in model.modules():
        kind = type(module).__name__
        if kind.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and module.weight.ndim == 1:
            module.forward = types.MethodType(_norm_forward, module)
            patched += 1
        elif kind.endswith("MLP") and all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")) \
                and getattr(getattr(module, "config", None), "hidden_act", None) in ("silu", "swish"):
            module.forward = types.MethodType(_swiglu_forward, module)
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


@lru_cache(maxsize=None)
def _compiled(fn):
    import torch

    return torch.compile(fn, dynamic=True)


def _norm_forward(self, hidden_states):
    return _compiled(rms_norm)(hidden_states, self.weight, self.variance_epsilon)


def _swiglu_forward(self, x):
    return self.down_proj(_compiled(silu_mul)(self.gate_proj(x), self.up_proj(x)))
