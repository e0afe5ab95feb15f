r"""Ulysses sequence parallelism on the packed path: one pack spread over the ``sequence_parallel_size`` (SP)
ranks of a group, so a pack ``SP`` times longer than one GPU holds trains.

The group's ranks are consecutive (``rank // SP`` is the data-parallel rank), so with torchrun's one process
per GPU and ``SP`` dividing the GPUs per node, a group never leaves its node. Every rank of a group builds the
same pack, pads it to a multiple of ``SP`` with a filler sequence (no loss, attends only to itself) and keeps
its own contiguous slice of the tokens: input ids, positions (the full pack's, so RoPE is unchanged), targets.
Everything but attention is per token and runs on the slice. Around attention an all-to-all swaps the
sequence for the heads (DeepSpeed-Ulysses, arXiv 2309.14509; ALST, arXiv 2506.13996)::

    rank r holds q/k/v [t = T/SP tokens, H heads]  --all-to-all-->  [T tokens, H/SP heads r·H/SP ...]
    our packed kernel, the whole pack's cu_seqlens (every sequence complete, whatever slice it crossed)
    [T tokens, H/SP heads]  --all-to-all-->  [t tokens, H heads]  (back to this rank's slice)

Query heads and key/value heads are both split ``SP`` ways, so a query head meets its own KV head (grouped
attention stays grouped); a model whose KV heads ``SP`` does not divide is refused (``check_heads``), rather
than replicating KV heads. The loss of each slice is weighted by the whole pack's counts
(``loss.token_weights``), so every sequence counts once over the SP and data-parallel ranks; DeepSpeed sees
every rank as data-parallel (it averages gradients over all of them), which is exact because each rank's
loss is its slice's share of the step's loss (see ``recipe.py``). Model and optimizer states are not split
by SP, so a checkpoint resumes under another SP size unchanged: only the data-parallel dealing of the packs
differs, which the step's objective does not depend on.

DeepSpeed's ``UlyssesSPAttentionHF`` does the same exchange for padded ``[batch, seq]`` batches (its data
loader adapter shards batches by position ids); our packs carry ``cu_seq_lens`` into the kernel and choose
their own kernel, so the exchange is written here in a few lines of ``torch.distributed``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from longalign_trainer.config_files import InputError
from longalign_trainer.train import attention
from longalign_trainer.train.packing import IGNORE_INDEX, Pack

if TYPE_CHECKING:
    import torch
    from torch.distributed import ProcessGroup

_group: list[ProcessGroup | None] = [None]  # the SP group the registered attention exchanges over


@dataclass(frozen=True)
class Layout:
    """Where a rank sits: its SP group (``None`` without SP) and its data-parallel coordinates."""

    size: int  # SP ranks per group
    rank: int  # this rank within its SP group
    dp_rank: int
    dp_size: int
    group: ProcessGroup | None = None


def layout(rank: int, world: int, size: int, local_world: int) -> Layout:
    """Split the ``world`` ranks into SP groups of ``size`` consecutive ranks (a collective: every rank calls it).

    Raises ``InputError`` naming ``sequence_parallel_size`` when ``size`` does not divide the ranks of a node.
    """
    if local_world % size or world % size:
        raise InputError(
            f"sequence_parallel_size: {size} does not divide the {local_world} ranks of a node ({world} in all); "
            "sequence parallelism stays inside a node: use a divisor of the GPUs per node"
        )
    if size == 1:
        return Layout(1, 0, rank, world)
    import torch.distributed as dist

    mine = None
    for first in range(0, world, size):  # every rank creates every group, as new_group requires
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    return Layout(size, rank % size, rank // size, world // size, mine)


def check_heads(model_config: Any, size: int) -> None:
    """Refuse an SP size that does not divide the model's query and key/value heads (``InputError``)."""
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    if heads % size or kv_heads % size:
        raise InputError(
            f"sequence_parallel_size: {size} does not divide the model's {heads} attention heads and {kv_heads} "
            "key/value heads (num_attention_heads, num_key_value_heads in config.json); Ulysses splits both "
            f"across the SP ranks: use a size that divides {kv_heads}"
        )


def pad_pack(pack: Pack, multiple: int, pad_id: int) -> Pack:
    """``pack`` with a filler sequence appended (no loss, its own positions) so its length is a multiple.

    >>> from longalign_trainer.train.packing import build_pack
    >>> p = pad_pack(build_pack([([1, 2, 3], [-100, 2, 3])]), 2, pad_id=0)
    >>> p.input_ids.tolist(), p.targets.tolist(), p.position_ids.tolist(), p.cu_seqlens.tolist()
    ([1, 2, 3, 0], [2, 3, -100, -100], [0, 1, 2, 0], [0, 3, 4])
    """
    import torch

    extra = -pack.num_tokens % multiple
    if not extra:
        return pack

    def cat(t: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, tail.to(t.dtype)])

    return Pack(
        input_ids=cat(pack.input_ids, torch.full((extra,), pad_id)),
        targets=cat(pack.targets, torch.full((extra,), IGNORE_INDEX)),
        position_ids=cat(pack.position_ids, torch.arange(extra)),
        seq_index=cat(pack.seq_index, torch.full((extra,), pack.num_sequences)),
        cu_seqlens=cat(pack.cu_seqlens, torch.tensor([pack.num_tokens + extra])),
        max_seqlen=max(pack.max_seqlen, extra),
    )


def token_slice(num_tokens: int, lay: Layout) -> slice:
    """This rank's contiguous share of a pack padded to a multiple of the SP size.

    >>> token_slice(8, Layout(size=2, rank=1, dp_rank=0, dp_size=1))
    slice(4, 8, None)
    """
    share = num_tokens // lay.size
    return slice(lay.rank * share, (lay.rank + 1) * share)


def local_pack(pack: Pack, lay: Layout) -> Pack:
    """The rank's slice of a padded pack: its tokens, positions, targets and sequence indices, and the whole
    pack's ``cu_seqlens``/``max_seqlen``, which attention sees after the all-to-all."""
    part = token_slice(pack.num_tokens, lay)
    return replace(
        pack,
        input_ids=pack.input_ids[part],
        targets=pack.targets[part],
        position_ids=pack.position_ids[part],
        seq_index=pack.seq_index[part],
    )


def register(lay: Layout) -> None:
    """Route ``longalign_packed`` attention through the all-to-all of ``lay``'s group (after
    ``attention.register``, whose kernel choice it keeps). Does nothing without SP."""
    from transformers import AttentionInterface

    if lay.group is None:
        return
    _group[0] = lay.group
    AttentionInterface.register(attention.NAME, ulysses_attention_forward)


def ulysses_attention_forward(module, query, key, value, *args, **kwargs):
    """transformers' attention signature on this rank's slice: q ``[1, Hq, t, D]``, k/v ``[1, Hkv, t, D]`` →
    ``([1, t, Hq, D], None)``; the kernel runs on the whole pack with ``Hq/SP`` and ``Hkv/SP`` heads."""
    group = _group[0]
    q, k, v = (_to_heads(t, group) for t in (query, key, value))
    out, _ = attention.packed_attention_forward(module, q, k, v, *args, **kwargs)
    return _to_sequence(out[0], group)[None], None


def _to_heads(x, group):
    """``[1, H, t, D]`` (this rank's tokens, every head) → ``[1, H/SP, T, D]`` (every token, its heads)."""
    size = _size(group)
    t, heads, dim = x.shape[2], x.shape[1], x.shape[3]
    parts = x[0].transpose(0, 1).reshape(t, size, heads // size, dim).transpose(0, 1)  # [SP, t, H/SP, D]
    gathered = all_to_all(parts.contiguous(), group)  # [SP (source rank = sequence slice), t, H/SP, D]
    return gathered.reshape(size * t, heads // size, dim).transpose(0, 1)[None]


def _to_sequence(x, group):
    """``[T, H/SP, D]`` (every token, this rank's heads) → ``[t, H, D]`` (this rank's tokens, every head)."""
    size = _size(group)
    total, heads, dim = x.shape
    parts = all_to_all(x.reshape(size, total // size, heads, dim).contiguous(), group)  # [SP heads, t, H/SP, D]
    return parts.transpose(0, 1).reshape(total // size, size * heads, dim)


def _size(group) -> int:
    import torch.distributed as dist

    return dist.get_world_size(group)


def all_to_all(x, group):
    """Differentiable all-to-all over ``group``: chunk ``i`` of dimension 0 goes to rank ``i``, and chunk ``i``
    of the result came from rank ``i``. Its own adjoint, so the backward pass is the same exchange."""
    return _all_to_all_function().apply(x, group)


def _exchange(x, group):
    import torch
    import torch.distributed as dist

    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


@lru_cache(maxsize=1)
def _all_to_all_function():
    import torch

    class AllToAll(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, group):
            ctx.group = group
            return _exchange(x, group)

        @staticmethod
        def backward(ctx, grad):
            return _exchange(grad.contiguous(), ctx.group), None

    return AllToAll
