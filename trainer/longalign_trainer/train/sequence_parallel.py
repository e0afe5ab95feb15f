r"""Sequence parallelism on the packed path: one pack spread over the ``sequence_parallel_size`` (SP) ranks of a
group, so a pack ``SP`` times longer than one GPU holds trains.

The group's ranks are consecutive (``rank // SP`` is the data-parallel rank), so with torchrun's one process
per GPU and ``SP`` dividing the GPUs per node, a group never leaves its node. Every rank of a group builds the
same pack, pads it to a multiple of ``SP`` with a filler sequence (no loss, attends only to itself) and keeps
its own contiguous slice of the tokens (``token_slice``): input ids, positions (the full pack's, so RoPE is
unchanged), targets. Everything but attention is per token and runs on the slice. Attention needs each
sequence's earlier tokens, which other ranks hold; two schemes bring them (``sequence_parallel_attention``:
``auto``, the default, takes Ulysses where it can split the model's heads, else ``allgather_kv``;
``choose_attention``):

* ``ulysses`` (DeepSpeed-Ulysses, arXiv 2309.14509; ALST, arXiv 2506.13996): an all-to-all swaps the sequence
  for the heads::

      rank r holds q/k/v [t = T/SP tokens, H heads]  --all-to-all-->  [T tokens, H/SP heads r·H/SP ...]
      our packed kernel, the whole pack's cu_seqlens (every sequence complete, whatever slice it crossed)
      [T tokens, H/SP heads]  --all-to-all-->  [t tokens, H heads]  (back to this rank's slice)

  Query heads and key/value heads are both split ``SP`` ways, so a query head meets its own KV head (grouped
  attention stays grouped): ``SP`` must divide both, rather than KV heads being replicated. Every rank does
  the same attention work.
* ``allgather_kv``: context parallelism with all-gathered keys and values, as Llama 3 trains at long context
  (arXiv 2407.21783, §3.3.2). Each rank keeps its slice's queries with every head; K and V of the whole pack
  are all-gathered over the group (their gradients reduce-scattered back: an all-to-all and a sum), and each
  local query attends causally within its own packed sequence, to that sequence's keys from its start up to
  the query's global position: one varlen call with ``cu_seq_lens_q`` over the slice's pieces of sequences and
  ``cu_seq_lens_k`` over [sequence start, piece end] (only a slice's first piece starts before the slice;
  ``attention.py`` aligns the causal mask bottom-right in every backend). Any head count splits so: 4 KV
  heads at SP 8 (Qwen2.5-7B), or a single KV head.

  Why an all-gather rather than ring attention: under grouped-query attention K and V are small (Llama-3.1-8B:
  8 KV heads to 32 query heads, so K and V together are half the query's width), so one all-gather per layer
  is cheap, against SP - 1 dependent ring steps, each a kernel call on a block of keys whose partial results
  must be merged through their log-sum-exp; the gather also leaves the packed kernels and their document
  masks as they are. Its costs: each rank holds the gathered K/V of the whole pack while a layer runs (and
  for the backward pass of every layer that keeps its activations; ``memory_estimate`` counts them), and the
  load is uneven: with contiguous slices a later rank's queries see more keys, so for one sequence over a
  whole pack at SP 2 rank 1 does 3 times rank 0's attention work (rank r of SP: 2r + 1 shares of SP²).
  Llama 3 evens it with the zigzag split (rank r holds chunks r and 2·SP - 1 - r); here the slice stays the
  one Ulysses uses, so positions, labels and loss weights are split in one place: a stated limitation (packs
  of many sequences are less uneven).

The loss of each slice is weighted by the whole pack's counts (``loss.loss_weights``), so every sequence
counts once over the SP and data-parallel ranks; DeepSpeed sees every rank as data-parallel (it averages
gradients over all of them), which is exact because each rank's loss is its slice's share of the step's loss
(see ``recipe.py``). Model and optimizer states are not split by SP, so a checkpoint resumes under another SP
size (or scheme) unchanged: only the data-parallel dealing of the packs differs, which the step's objective
does not depend on.

DeepSpeed's ``UlyssesSPAttentionHF`` does the Ulysses exchange for padded ``[batch, seq]`` batches (its data
loader adapter shards batches by position ids); our packs carry ``cu_seq_lens`` into the kernel and choose
their own kernel, so both exchanges are written here in a few lines of ``torch.distributed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from longalign_trainer.config_files import InputError
from longalign_trainer.train import attention
from longalign_trainer.train.packing import IGNORE_INDEX, Pack

if TYPE_CHECKING:
    import torch
    from torch.distributed import ProcessGroup

# sequence_parallel_attention: how attention sees the tokens of other ranks (module docstring)
Choice = Literal["auto", "ulysses", "allgather_kv"]
_group: list[ProcessGroup | None] = [None]  # the SP group the registered attention exchanges over


@dataclass(frozen=True)
class Layout:
    """Where a rank sits: its SP group (``None`` without SP), its data-parallel coordinates, and the SP attention
    scheme (``choose_attention`` picks it for a model)."""

    size: int  # SP ranks per group
    rank: int  # this rank within its SP group
    dp_rank: int
    dp_size: int
    group: ProcessGroup | None = None
    attention: str = "ulysses"  # or "allgather_kv"


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


def choose_attention(lay: Layout, model_config: Any, asked: Choice = "auto") -> Layout:
    """``lay`` with its SP attention scheme: ``asked``, or for ``auto`` Ulysses where the SP size divides the
    model's query and key/value heads, else ``allgather_kv``. Raises ``InputError`` naming
    ``sequence_parallel_attention`` when ``ulysses`` is asked of heads it cannot split.

    >>> from types import SimpleNamespace
    >>> qwen = SimpleNamespace(num_attention_heads=28, num_key_value_heads=4)
    >>> [choose_attention(Layout(n, 0, 0, 1), qwen).attention for n in (2, 4, 8)]
    ['ulysses', 'ulysses', 'allgather_kv']
    """
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    splits = heads % lay.size == 0 and kv_heads % lay.size == 0
    if asked == "ulysses" and not splits:
        raise InputError(
            f"sequence_parallel_attention: ulysses splits the attention heads and the key/value heads over the SP "
            f"ranks, but sequence_parallel_size {lay.size} does not divide the model's {heads} attention heads and "
            f"{kv_heads} key/value heads (num_attention_heads, num_key_value_heads in config.json): use "
            "sequence_parallel_attention auto or allgather_kv (keys and values all-gathered: any head count), or a "
            f"sequence_parallel_size that divides {math.gcd(heads, kv_heads)}"
        )
    return replace(lay, attention=asked if asked != "auto" else "ulysses" if splits else "allgather_kv")


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
    """This rank's contiguous share of a pack padded to a multiple of the SP size (both schemes).

    >>> token_slice(8, Layout(size=2, rank=1, dp_rank=0, dp_size=1))
    slice(4, 8, None)
    """
    share = num_tokens // lay.size
    return slice(lay.rank * share, (lay.rank + 1) * share)


def local_pack(pack: Pack, lay: Layout) -> Pack:
    """The rank's slice of a padded pack (on the host): its tokens, positions, targets and sequence indices, and
    the bounds its attention runs on: under ``ulysses`` the whole pack's ``cu_seqlens``/``max_seqlen``, which
    attention sees after the all-to-all; under ``allgather_kv`` the slice's pieces of sequences as queries and,
    as keys, each piece's sequence from its start up to the piece's end, in the gathered keys' coordinates.

    >>> from longalign_trainer.train.packing import build_pack
    >>> pack = build_pack([([1] * 3, [1] * 3), ([2] * 4, [2] * 4), ([3] * 1, [3] * 1)])  # tokens 0-2, 3-6, 7
    >>> mine = local_pack(pack, Layout(size=2, rank=1, dp_rank=0, dp_size=1, attention="allgather_kv"))
    >>> mine.input_ids.tolist(), mine.cu_seqlens.tolist(), mine.cu_seqlens_k.tolist(), mine.max_seqlen_k
    ([2, 2, 2, 3], [0, 3, 4], [3, 7, 8], 4)
    """
    part = token_slice(pack.num_tokens, lay)
    mine = replace(
        pack,
        input_ids=pack.input_ids[part],
        targets=pack.targets[part],
        position_ids=pack.position_ids[part],
        seq_index=pack.seq_index[part],
    )
    if lay.size == 1 or lay.attention == "ulysses":
        return mine
    import torch

    bounds = pack.cu_seqlens
    first = int(torch.searchsorted(bounds, part.start, right=True)) - 1  # the sequence holding the first token
    last = int(torch.searchsorted(bounds, part.stop))  # the first bound at or past the slice's end
    inner = bounds[first + 1 : last]
    ends = torch.tensor([part.stop], dtype=bounds.dtype)
    cu_q = torch.cat([torch.tensor([part.start], dtype=bounds.dtype), inner, ends]) - part.start
    cu_k = torch.cat([bounds[first : first + 1], inner, ends])
    return replace(
        mine,
        cu_seqlens=cu_q,
        max_seqlen=int(cu_q.diff().max()),
        cu_seqlens_k=cu_k,
        max_seqlen_k=int(cu_k.diff().max()),
    )


def register(lay: Layout) -> None:
    """Route ``longalign_packed`` attention through ``lay``'s scheme over its group (after
    ``attention.register``, whose kernel choice it keeps). Does nothing without SP."""
    if lay.group is None:
        return
    _group[0] = lay.group
    attention.install(ulysses_attention_forward if lay.attention == "ulysses" else allgather_kv_attention_forward)


def ulysses_attention_forward(module, query, key, value, *args, **kwargs):
    """transformers' attention signature on this rank's slice: q ``[1, Hq, t, D]``, k/v ``[1, Hkv, t, D]`` →
    ``([1, t, Hq, D], None)``; the kernel runs on the whole pack with ``Hq/SP`` and ``Hkv/SP`` heads."""
    group = _group[0]
    q, k, v = (_to_heads(t, group) for t in (query, key, value))
    out, _ = attention.packed_attention_forward(module, q, k, v, *args, **kwargs)
    return _to_sequence(out[0], group)[None], None


def allgather_kv_attention_forward(module, query, key, value, *args, cu_seq_lens_k=None, **kwargs):
    """transformers' attention signature on this rank's slice: q ``[1, Hq, t, D]``, k/v ``[1, Hkv, t, D]`` →
    ``([1, t, Hq, D], None)``; K and V are gathered from the group and cut to the keys the slice's queries see
    (``cu_seq_lens_k``, in the gathered keys' coordinates: ``local_pack``)."""
    group = _group[0]
    start, stop, cu_k = _key_window(cu_seq_lens_k)
    k, v = (gather_tokens(t, group)[:, :, start:stop] for t in (key, value))
    return attention.packed_attention_forward(module, query, k, v, *args, cu_seq_lens_k=cu_k, **kwargs)


_key_window_cache: list = [None, None]  # [cu_seq_lens_k, (start, stop, bounds from start)]: one sync per forward


def _key_window(cu_k):
    """The gathered keys ``[start, stop)`` a slice's queries see, and ``cu_k`` counted from ``start``."""
    if _key_window_cache[0] is not cu_k:
        start, stop = (int(b) for b in cu_k[[0, -1]].tolist())
        _key_window_cache[:] = [cu_k, (start, stop, cu_k - start)]
    return _key_window_cache[1]


def gather_tokens(x, group):
    """``[1, H, t, D]`` (this rank's tokens) → ``[1, H, SP·t, D]`` (the group's tokens in rank order), differentiable:
    the backward pass sends each rank the gradient of its own tokens, summed over the group."""
    return _all_gather_function().apply(x, group)


@lru_cache(maxsize=1)
def _all_gather_function():
    import torch
    import torch.distributed as dist

    class AllGatherTokens(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, group):
            ctx.group = group
            mine = x[0].transpose(0, 1).contiguous()  # [t, H, D]
            out = mine.new_empty((_size(group) * mine.shape[0], *mine.shape[1:]))
            dist.all_gather_into_tensor(out, mine, group=group)
            return out.transpose(0, 1)[None]

        @staticmethod
        def backward(ctx, grad):
            size = _size(ctx.group)
            tokens = grad[0].transpose(0, 1)  # [SP·t, H, D]
            chunks = tokens.reshape(size, tokens.shape[0] // size, *tokens.shape[1:]).contiguous()
            mine = _exchange(chunks, ctx.group).sum(0)  # every rank's gradient of this rank's tokens
            return mine.transpose(0, 1)[None], None

    return AllGatherTokens


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
