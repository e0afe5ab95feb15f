r"""LongAlign's loss weighting: with packing, every sequence still counts equally.

Plain packing averages token losses over a whole pack, so long answers and sparse packs weigh more than in
ordinary batching (paper Eq. 3). LongAlign weights each token of sequence i by 1/N_i (N_i = its target tokens)
and scales the pack by K/M (K packs, M sequences in the global batch, Eq. 4). Generalised to several
micro-batches per rank, with data-parallel gradients *averaged* over the W ranks (as DeepSpeed does):

    micro-batch loss  = Σ_t CE_t · W / (N_{seq(t)} · M)          (weighting on)
                      = Σ_t CE_t / T_mb · W / K                   (weighting off: T_mb = its target tokens)
    step loss         = (1/W) Σ_ranks Σ_micro-batches loss        = (1/M) Σ_i L_i / N_i    (Eq. 2)

M and K come from the step's plan, which every rank knows (train/batching.py), so a rank counts them alone: no
collective, and no wait for the GPU before the step's first forward pass. With one sequence per micro-batch
(naive and sorted batching), on and off give the same result, as the paper notes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from longalign_trainer.train.packing import IGNORE_INDEX

if TYPE_CHECKING:  # torch is imported where tensors are made
    import torch


@dataclass(frozen=True)
class StepCounts:
    """Counts over the whole global batch (all ranks, all micro-batches) of one optimizer step."""

    sequences: int  # M: sequences with at least one target token
    micro_batches: int  # K: micro-batches with at least one target token
    target_tokens: int


def count_step(micro_batches: Iterable[Iterable[int]]) -> StepCounts:
    """``StepCounts`` of a global batch: ``micro_batches`` are all its micro-batches (every rank's), each given as
    the target tokens of its sequences (``packing.target_tokens``); an empty one is a filler.

    >>> count_step([[3, 0], [5], [], [0]])
    StepCounts(sequences=2, micro_batches=2, target_tokens=8)
    """
    sequences = micro = tokens = 0
    for batch in micro_batches:
        counted = [n for n in batch if n > 0]
        sequences += len(counted)
        micro += bool(counted)
        tokens += sum(counted)
    return StepCounts(sequences=sequences, micro_batches=micro, target_tokens=tokens)


def loss_weights(
    targets: torch.Tensor,
    seq_index: torch.Tensor,
    counts: StepCounts,
    world_size: int,
    weighting: bool = True,
    part: slice = slice(None),
) -> torch.Tensor:
    """Per-token weights ``w`` of one micro-batch's tokens ``part`` (fp32, 0 where no loss is taken): their share of
    the step loss is ``Σ_t CE_t · w_t`` (see the module docstring). ``targets`` and ``seq_index`` are the whole
    micro-batch's: under sequence parallelism a rank holds a slice of the pack, weighted by the whole pack's counts,
    so the slices' losses add up to the pack's. Computed on the host where the pack is built, so the training loop
    never waits for the GPU to learn a count."""
    import torch

    valid = targets != IGNORE_INDEX
    if not valid.any() or counts.sequences == 0:
        return torch.zeros(targets.shape)[part]  # keeps the graph (ZeRO-3 hooks) without contributing
    if weighting:
        n = torch.bincount(seq_index[valid], minlength=int(seq_index.max()) + 1).float()
        weights = torch.where(valid, 1.0 / n.clamp(min=1)[seq_index], 0.0) * (world_size / counts.sequences)
    else:
        weights = valid.float() * (world_size / counts.micro_batches / int(valid.sum()))
    return weights[part]


def weighted_loss(token_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """This micro-batch's share of the step loss, ``Σ_t CE_t · w_t`` (``loss_weights``); backpropagate it unscaled."""
    return (token_loss * weights).sum()
