"""Which sequences each rank runs in each micro-step of each optimizer step: naive, packing, sorted.

All three cut every epoch into global batches of ``global_batch_size`` sequences (one optimizer step each),
then split each batch into micro-batches spread over the data-parallel ranks:

* **naive** (the paper's baseline): random order; micro-batches of ``micro_batch_size`` sequences (1 in the
  paper), dealt round-robin to ranks; gradients accumulate to the global batch.
* **packing**: the whole set is bin-packed once (``plan_packs``) into packs of at most ``capacity`` tokens, so
  packs fill as tightly as the set allows (packing each global batch alone wastes a part-filled pack per step:
  5 points of efficiency on LongAlign's length mix). Every epoch deals the packs, in a new random order, into
  its ``ceil(sequences / global_batch_size)`` steps as evenly as they divide; a step's sequence count thus
  floats around ``global_batch_size`` (loss weighting stays exact: M and K are counted per step). Within a
  step, the fullest packs are split until their number is a multiple of the world size (so no rank idles),
  and packs go to the rank with the fewest tokens so far (longest pack first).
* **sorted**: sequences sorted by length and cut into global batches of similar length; micro-batches of
  consecutive sequences dealt round-robin, so ranks wait little for each other. The *order of the batches* is
  shuffled every epoch with the seed (the reference code shuffled once, offline, without a seed).

Which sequences a step holds depends on the seed and, for packing, on the capacity, never on the world size:
a run resumed on another number of ranks continues the same objective.

Ranks with fewer micro-batches get empty ones (a one-token filler with no loss), because every ZeRO-3
forward is a collective and all ranks must run the same number. The plan is a pure function of (seed,
epoch, step): every rank computes the same global plan, takes its own share, and resuming needs only the
position, which ``StepSampler`` owns.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from longalign_trainer.train.packing import plan_packs

if TYPE_CHECKING:
    from numpy.random import Generator

MicroBatch = tuple[int, ...]  # sequence indices; () = filler


@dataclass(frozen=True)
class StepPlan:
    """One optimizer step: for each rank, its micro-batches in order."""

    epoch: int
    step: int  # global step index, from 0
    per_rank: tuple[tuple[MicroBatch, ...], ...]


def deal_round_robin(micro_batches: Sequence[MicroBatch], world_size: int) -> list[list[MicroBatch]]:
    """Micro-batch j goes to rank j mod W.

    >>> deal_round_robin([(0,), (1,), (2,)], 2)
    [[(0,), (2,)], [(1,)]]
    """
    return [list(micro_batches[r::world_size]) for r in range(world_size)]


def deal_by_tokens(packs: Sequence[MicroBatch], tokens: Sequence[int], world_size: int) -> list[list[MicroBatch]]:
    """Longest pack first to the rank with the fewest tokens (then fewest packs, then lowest rank).

    >>> deal_by_tokens([(0,), (1, 2), (3,)], [10, 9, 2], 2)
    [[(0,)], [(1, 2), (3,)]]
    """
    ranks: list[list[MicroBatch]] = [[] for _ in range(world_size)]
    heap = [(0, 0, r) for r in range(world_size)]
    for j in sorted(range(len(packs)), key=lambda j: (-tokens[j], j)):
        load, count, r = heapq.heappop(heap)
        ranks[r].append(packs[j])
        heapq.heappush(heap, (load + tokens[j], count + 1, r))
    return ranks


def split_to_multiple(packs: list[MicroBatch], lengths: Sequence[int], world_size: int) -> list[MicroBatch]:
    """Split the fullest splittable pack in two (balancing tokens) until the count is a multiple of W.

    >>> split_to_multiple([(0, 1, 2, 3)], [5, 4, 3, 2], 2)
    [(0, 3), (1, 2)]
    """
    packs = list(packs)
    while len(packs) % world_size:
        splittable = [p for p in packs if len(p) > 1]
        if not splittable:
            break
        fullest = max(splittable, key=lambda p: sum(lengths[i] for i in p))
        halves: tuple[list[int], list[int]] = ([], [])
        for i in sorted(fullest, key=lambda i: -lengths[i]):
            min(halves, key=lambda h: (sum(lengths[j] for j in h), len(h))).append(i)
        at = packs.index(fullest)
        packs[at : at + 1] = [tuple(sorted(halves[0])), tuple(sorted(halves[1]))]
    return packs


def even_out(per_rank: list[list[MicroBatch]]) -> tuple[tuple[MicroBatch, ...], ...]:
    """Give every rank the same number of micro-batches by appending fillers ``()``.

    >>> even_out([[(0,), (2,)], [(1,)]])
    (((0,), (2,)), ((1,), ()))
    """
    most = max(len(r) for r in per_rank)
    return tuple(tuple(r) + ((),) * (most - len(r)) for r in per_rank)


class StepSampler:
    """The step plans of a whole run, and the position reached (the only state a resume needs)."""

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        strategy: str,
        global_batch_size: int,
        capacity: int,
        micro_batch_size: int = 1,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        epochs: int = 1,
        max_steps: int | None = None,
    ) -> None:
        if strategy not in ("naive", "packing", "sorted"):
            raise ValueError(f"strategy: unknown {strategy!r}")
        if not lengths:
            raise ValueError("no training sequences")
        self.lengths = list(lengths)
        self.strategy, self.capacity = strategy, capacity
        self.batch, self.micro = global_batch_size, micro_batch_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.steps_per_epoch = math.ceil(len(self.lengths) / global_batch_size)
        self.packs: list[MicroBatch] = []
        if strategy == "packing":
            self.packs = [tuple(p) for p in plan_packs(self.lengths, capacity)]
            self.steps_per_epoch = min(self.steps_per_epoch, len(self.packs))  # never a step without a pack
        self.total_steps = self.steps_per_epoch * epochs
        if max_steps is not None:
            self.total_steps = min(self.total_steps, max_steps)
        self.position = 0  # next step to run
        self._cached: tuple[int, list[StepPlan]] | None = None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep (the plan itself is recomputed from the seed)."""
        return {
            "position": self.position,
            "seed": self.seed,
            "strategy": self.strategy,
            "world_size": self.world_size,
            "num_sequences": len(self.lengths),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; refuses one made for different data, seed or strategy."""
        mine = self.state_dict()
        for key in ("seed", "strategy", "num_sequences"):
            if state[key] != mine[key]:
                raise ValueError(f"checkpoint was made with {key}={state[key]!r}, this run has {mine[key]!r}")
        self.position = int(state["position"])

    def __iter__(self) -> Iterator[StepPlan]:
        """Step plans from the current position to the end; the position advances as each is taken."""
        while self.position < self.total_steps:
            plan = self.plan(self.position)
            self.position += 1
            yield plan

    def my_micro_batches(self, plan: StepPlan) -> tuple[MicroBatch, ...]:
        """This rank's share of a step."""
        return plan.per_rank[self.rank]

    def plan(self, step: int) -> StepPlan:
        """The plan of global step ``step`` (pure: the same for every rank and every resume)."""
        epoch = step // self.steps_per_epoch
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._plan_epoch(epoch))
        return self._cached[1][step % self.steps_per_epoch]

    def _plan_epoch(self, epoch: int) -> list[StepPlan]:
        import numpy as np

        rng = np.random.default_rng([self.seed, epoch])
        if self.strategy == "packing":
            return [self._packing_step(epoch, s, packs) for s, packs in enumerate(self._deal_packs(rng))]
        n = len(self.lengths)
        if self.strategy == "sorted":
            order = sorted(range(n), key=lambda i: (self.lengths[i], i))
            batches = [order[i : i + self.batch] for i in range(0, n, self.batch)]
            batches = [batches[j] for j in rng.permutation(len(batches))]
        else:
            order = rng.permutation(n).tolist()
            batches = [order[i : i + self.batch] for i in range(0, n, self.batch)]
        plans = []
        for s, batch in enumerate(batches):
            micro = [tuple(batch[i : i + self.micro]) for i in range(0, len(batch), self.micro)]
            plans.append(
                StepPlan(epoch, epoch * self.steps_per_epoch + s, even_out(deal_round_robin(micro, self.world_size)))
            )
        return plans

    def _deal_packs(self, rng: Generator) -> list[list[MicroBatch]]:
        """The set's packs in a random order, cut into ``steps_per_epoch`` runs whose sizes differ by at most one."""
        order = rng.permutation(len(self.packs)).tolist()
        cuts = [s * len(order) // self.steps_per_epoch for s in range(self.steps_per_epoch + 1)]
        return [[self.packs[j] for j in order[a:b]] for a, b in zip(cuts, cuts[1:], strict=False)]

    def _packing_step(self, epoch: int, s: int, packs: list[MicroBatch]) -> StepPlan:
        """Step ``s`` of ``epoch``: its packs split to a multiple of the world size and dealt by tokens."""
        packs = split_to_multiple(packs, self.lengths, self.world_size)
        per_rank = deal_by_tokens(packs, [sum(self.lengths[i] for i in p) for p in packs], self.world_size)
        return StepPlan(epoch, epoch * self.steps_per_epoch + s, even_out(per_rank))

    def packing_efficiency(self) -> float | None:
        """Real tokens / pack capacity over one epoch's packs (packing only; None for the other strategies)."""
        if self.strategy != "packing":
            return None
        packs = [mb for step in self._plan_epoch(0) for rank in step.per_rank for mb in rank if mb]
        return sum(self.lengths[i] for p in packs for i in p) / (self.capacity * len(packs))
