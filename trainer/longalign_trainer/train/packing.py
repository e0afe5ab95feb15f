r"""Packing: many sequences in one row of tokens, each attending only to itself.

Long-context SFT data mixes a few 64k-token documents with many short chats. Padding every micro-batch to
its longest sequence wastes most of the compute; packing fills fixed-capacity rows instead. This module is
pure: ``plan_packs`` decides which sequences share a pack (best-fit decreasing over an array of lengths),
``build_pack`` lays out the tensors. Three sequences A (3 tokens), B (2), C (3) in one pack::

    tokens         a0 a1 a2 b0 b1 c0 c1 c2
    position_ids    0  1  2  0  1  0  1  2      restart per sequence (RoPE sees each alone)
    seq_index       0  0  0  1  1  2  2  2      which sequence a token belongs to
    cu_seqlens     [0,       3,    5,       8]  boundaries, what varlen kernels take
    targets        a1 a2  ·  b1  ·  c1 c2  ·    next token inside the same sequence (· = -100, no loss)

    block-diagonal causal mask (row = query, column = key, # = may attend)
          a0 a1 a2 b0 b1 c0 c1 c2
      a0   #
      a1   #  #
      a2   #  #  #
      b0            #
      b1            #  #
      c0                  #
      c1                  #  #
      c2                  #  #  #

Targets are shifted inside each sequence before concatenation, so no token ever learns to predict the first
token of the next sequence.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are built: planning packs needs none
    import numpy as np
    import torch

IGNORE_INDEX = -100


def plan_packs(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sequence indices into packs of at most ``capacity`` tokens, by best-fit decreasing.

    Sequences are placed longest first, each into the pack whose free space fits it most tightly (a new pack
    when none fits). Deterministic: ties go to the earlier index, and packs are returned in creation order.

    >>> plan_packs([5, 3, 8, 2, 6], capacity=10)
    [[2, 3], [4, 1], [0]]
    >>> plan_packs([], capacity=10)
    []
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, pack number), kept sorted for bisection
    for i in order:
        length = lengths[i]
        if length > capacity or length <= 0:
            raise ValueError(f"sequence {i} has {length} tokens; a pack holds 1..{capacity}")
        at = bisect.bisect_left(free, (length, -1))
        if at == len(free):
            packs.append([i])
            bisect.insort(free, (capacity - length, len(packs) - 1))
        else:
            room, pack = free.pop(at)
            packs[pack].append(i)
            bisect.insort(free, (room - length, pack))
    return packs


def packing_efficiency(lengths: Sequence[int], packs: Sequence[Sequence[int]], capacity: int) -> float:
    """Real tokens over the capacity of the packs used (1.0 = no room wasted).

    >>> packing_efficiency([5, 3, 8, 2, 6], [[2, 3], [4, 1], [0]], 10)
    0.8
    """
    if not packs:
        return 0.0
    return sum(lengths[i] for pack in packs for i in pack) / (capacity * len(packs))


@dataclass
class Pack:
    """The tensors of one pack (1-D, length = real tokens; batch dimension added by ``as_model_inputs``)."""

    input_ids: torch.Tensor
    targets: torch.Tensor  # next-token targets, IGNORE_INDEX where no loss is taken
    position_ids: torch.Tensor
    seq_index: torch.Tensor  # per token: index of its sequence within the pack
    cu_seqlens: torch.Tensor  # int32, [0, e1, ..., total]
    max_seqlen: int
    # Where each sequence's keys lie when attention sees other tokens as keys than the pack's own (sequence
    # parallelism's all-gathered keys, train/sequence_parallel.py); None: the pack's own tokens, cu_seqlens.
    cu_seqlens_k: torch.Tensor | None = None
    max_seqlen_k: int | None = None

    @property
    def num_tokens(self) -> int:
        """Real tokens in the pack."""
        return int(self.input_ids.numel())

    @property
    def num_sequences(self) -> int:
        """Sequences in the pack."""
        return int(self.cu_seqlens.numel()) - 1

    def seq_lengths(self) -> list[int]:
        """Length of each sequence, in pack order."""
        lengths: list[int] = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()
        return lengths

    def to(self, device: torch.device | str) -> Pack:
        """This pack with all tensors on ``device`` (``to_device``)."""
        return Pack(
            to_device(self.input_ids, device),
            to_device(self.targets, device),
            to_device(self.position_ids, device),
            to_device(self.seq_index, device),
            to_device(self.cu_seqlens, device),
            self.max_seqlen,
            None if self.cu_seqlens_k is None else to_device(self.cu_seqlens_k, device),
            self.max_seqlen_k,
        )

    def as_model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for a Hugging Face causal LM running the ``longalign_packed`` attention.

        ``use_cache=False`` matters: with a cache, transformers ignores restarting ``position_ids`` as
        sequence boundaries (our kernels use ``cu_seq_lens_*`` anyway; the flag keeps the other paths honest).
        """
        return {
            "input_ids": self.input_ids[None],
            "position_ids": self.position_ids[None],
            "use_cache": False,
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens if self.cu_seqlens_k is None else self.cu_seqlens_k,
            "max_length_q": self.max_seqlen,
            "max_length_k": self.max_seqlen if self.max_seqlen_k is None else self.max_seqlen_k,
        }


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; from the CPU to a GPU through pinned memory, without waiting: the copy queues behind
    the work already on the GPU, so the next step's inputs can be sent while the GPU still runs this one."""
    import torch

    if tensor.device.type == "cpu" and torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def target_tokens(labels: Sequence[int] | np.ndarray) -> int:
    """How many tokens of a sequence take a loss: those whose next token has a label (``build_pack``'s targets).

    >>> target_tokens([-100, -100, 7, 8]), target_tokens([5, -100])
    (2, 0)
    """
    import numpy as np

    return int(np.count_nonzero(np.asarray(labels[1:]) != IGNORE_INDEX))


def build_pack(sequences: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Pack:
    """Concatenate ``(input_ids, labels)`` pairs (lists or arrays) into a ``Pack``; labels unshifted, -100 = no loss.

    >>> p = build_pack([([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5])])
    >>> p.input_ids.tolist(), p.targets.tolist(), p.position_ids.tolist()
    ([1, 2, 3, 4, 5], [2, 3, -100, 5, -100], [0, 1, 2, 0, 1])
    >>> p.seq_index.tolist(), p.cu_seqlens.tolist(), p.max_seqlen
    ([0, 0, 0, 1, 1], [0, 3, 5], 3)
    """
    import numpy as np
    import torch

    if not sequences:
        raise ValueError("a pack needs at least one sequence")
    ids = [np.asarray(i, dtype=np.int64) for i, _ in sequences]
    labels = [np.asarray(lab, dtype=np.int64) for _, lab in sequences]
    lengths = np.array([len(i) for i in ids], dtype=np.int64)
    for n, (i, lab) in enumerate(zip(ids, labels, strict=True)):
        if len(i) != len(lab) or not len(i):
            raise ValueError(f"sequence {n}: {len(i)} input ids, {len(lab)} labels")
    ignore = np.array([IGNORE_INDEX], dtype=np.int64)
    targets = np.concatenate([np.concatenate([lab[1:], ignore]) for lab in labels])
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return Pack(
        input_ids=torch.from_numpy(np.concatenate(ids)),
        targets=torch.from_numpy(targets),
        position_ids=torch.from_numpy(np.arange(int(lengths.sum())) - starts),
        seq_index=torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths)),
        cu_seqlens=torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
        max_seqlen=int(lengths.max()),
    )
