"""The loss straight from the last hidden states: the full logits never exist.

A causal LM's head turns ``T`` hidden states into ``T × vocab`` logits; at 64k tokens that is 4 GiB in bf16
for a 32k vocabulary and 16 GiB for Llama-3's 128k, and the same again for their gradient, which is most of
the memory a 64k pack needs beyond the layers' activations. ``apply(model)`` makes the LM head, inside
``targets(...)``, return each position's cross-entropy instead of its logits, computed a chunk of rows at a
time (each chunk's logits recomputed in the backward pass), and only for the rows that have a target: a
prompt token takes no loss, so its logits are never computed (in LongAlign's data most tokens are prompt, the
long document; for Llama-3.1-8B the head with its recomputation is 9 % of a token's matmul work). The head's
weight is still used by the head module itself, so ZeRO-3 gathers it around the forward and backward passes as
for any layer. Outside ``targets(...)`` (generation, evaluation) the head returns logits as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from longalign_trainer.train import fused_ops
from longalign_trainer.train.packing import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

ROWS_PER_CHUNK_ELEMENTS = 1 << 28  # chunk rows × vocabulary: 1 GiB of fp32 logits per chunk at most
_targets: contextvars.ContextVar[tuple[torch.Tensor, torch.Tensor | None, bool] | None] = contextvars.ContextVar(
    "longalign_loss_targets", default=None
)


def apply(model: torch.nn.Module) -> None:
    """Route ``model``'s output embedding (its LM head) through ``head_forward``."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(model).__name__} has no linear LM head to fuse the loss into")
    head.forward = types.MethodType(_head_forward, head)


@contextlib.contextmanager
def targets(next_tokens: torch.Tensor, rows: torch.Tensor | None = None, compiled: bool = False) -> Iterator[None]:
    """Inside: the patched model's ``.logits`` is ``[1, T]`` per-token losses for these targets (``[T]``,
    IGNORE_INDEX = no loss, 0 there); ``rows``: ``loss_rows(next_tokens)``, computed on the host so that the GPU
    is not waited for (else found on the targets' device); ``compiled``: the cross-entropy through
    ``torch.compile`` (GPUs)."""
    token = _targets.set((next_tokens, rows, compiled))
    try:
        yield
    finally:
        _targets.reset(token)


def loss_rows(next_tokens: torch.Tensor) -> torch.Tensor:
    """The positions that take a loss (a target other than IGNORE_INDEX).

    >>> import torch
    >>> loss_rows(torch.tensor([5, IGNORE_INDEX, 7, 8, IGNORE_INDEX])).tolist()
    [0, 2, 3]
    """
    return (next_tokens != IGNORE_INDEX).nonzero().squeeze(1)


def per_token_linear_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    next_tokens: torch.Tensor,
    compiled: bool = False,
    chunk: int | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 cross-entropy of ``hidden [T, h] @ weight [V, h]ᵀ`` against ``next_tokens [T]``, chunk by chunk over
    the ``rows`` that take a loss (``loss_rows``), 0 elsewhere."""
    import torch
    from torch.utils.checkpoint import checkpoint

    if rows is None:
        rows = loss_rows(next_tokens)
    picked, picked_targets = hidden.index_select(0, rows), next_tokens.index_select(0, rows)
    per_chunk = chunk or rows_per_chunk(weight.shape[0])
    ce = fused_ops.compiled(_cross_entropy) if compiled else _cross_entropy
    parts = [
        checkpoint(_chunk_loss, h, weight, t, ce, use_reentrant=False)
        for h, t in zip(torch.split(picked, per_chunk), torch.split(picked_targets, per_chunk), strict=True)
    ]
    losses = torch.cat(parts)  # one empty part when no row takes a loss: the backward pass still runs
    return torch.zeros(next_tokens.shape[0], dtype=losses.dtype, device=losses.device).index_copy(0, rows, losses)


def rows_per_chunk(vocab: int) -> int:
    """Rows of one loss chunk: 8192 for a 32k vocabulary, 2048 for 128k."""
    return max(256, min(8192, ROWS_PER_CHUNK_ELEMENTS // vocab))


def _chunk_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    next_tokens: torch.Tensor,
    ce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    return ce(hidden @ weight.t(), next_tokens)


def _cross_entropy(logits: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nn.functional.cross_entropy(logits.float(), next_tokens, ignore_index=IGNORE_INDEX, reduction="none")


def _head_forward(self: torch.nn.Linear, hidden_states: torch.Tensor) -> torch.Tensor:
    wanted = _targets.get()
    if wanted is None:
        return torch_linear(hidden_states, self.weight, self.bias)
    next_tokens, rows, compiled = wanted
    if getattr(self, "bias", None) is not None:
        raise ValueError("the fused loss supports LM heads without bias")
    return per_token_linear_loss(hidden_states[0], self.weight, next_tokens, compiled, rows=rows)[None]


def torch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The head's own computation (logits), for calls outside ``targets``."""
    import torch

    return torch.nn.functional.linear(x, weight, bias)
