"""Packing plans and step plans: every sequence exactly once, capacity respected, ranks in lockstep."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from longalign_trainer.train.batching import StepSampler
from longalign_trainer.train.packing import build_pack, packing_efficiency, plan_packs


def longalign_like_lengths(n: int, seed: int, cap: int = 65536) -> list[int]:
    """12 % uniform 8k..64k, the rest log-normal around 900 clipped to 32..8192 (the issue's benchmark mix)."""
    rng = random.Random(seed)
    long_lo, short_hi = min(8192, cap // 8), min(8192, cap)
    return [
        rng.randint(long_lo, cap)
        if rng.random() < 0.12
        else int(min(short_hi, max(32, rng.lognormvariate(math.log(900), 1.0))))
        for _ in range(n)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_plan_packs_places_every_sequence_once_within_capacity(seed):
    lengths = longalign_like_lengths(300, seed)
    packs = plan_packs(lengths, 65536)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 65536 for p in packs)
    # Never more than one pack above the volume bound plus the long sequences that cannot share much.
    assert len(packs) <= math.ceil(sum(lengths) / 65536) + 1
    assert packing_efficiency(lengths, packs, 65536) >= 0.97


def test_plan_packs_refuses_a_sequence_longer_than_a_pack():
    with pytest.raises(ValueError, match="sequence 1 has 11 tokens"):
        plan_packs([3, 11], 10)


def test_build_pack_never_targets_across_a_boundary():
    pack = build_pack([([1, 2, 3], [1, 2, 3]), ([4, 5], [4, 5])])
    # the last token of the first sequence must not learn to predict the second sequence's first token (4)
    assert pack.targets.tolist() == [2, 3, -100, 5, -100]


def all_steps(strategy, world_size=2, epochs=2, **kw):
    lengths = kw.pop("lengths", longalign_like_lengths(103, 0, cap=4096))
    samplers = [
        StepSampler(
            lengths,
            strategy=strategy,
            global_batch_size=16,
            capacity=4096,
            world_size=world_size,
            rank=r,
            seed=7,
            epochs=epochs,
            **kw,
        )
        for r in range(world_size)
    ]
    return lengths, samplers, list(samplers[0])


@pytest.mark.parametrize("strategy", ["naive", "packing", "sorted"])
def test_each_epoch_uses_every_sequence_once_and_ranks_stay_in_lockstep(strategy):
    lengths, samplers, steps = all_steps(strategy)
    assert len(steps) == samplers[0].total_steps == 2 * math.ceil(103 / 16)
    for epoch in (0, 1):
        seen = [i for s in steps if s.epoch == epoch for rank in s.per_rank for mb in rank for i in mb]
        assert sorted(seen) == list(range(103))
    for s in steps:
        assert len({len(rank) for rank in s.per_rank}) == 1  # same number of micro-steps on every rank
        assert all(sum(lengths[i] for i in mb) <= 4096 for rank in s.per_rank for mb in rank)
    assert steps[0].per_rank != steps[len(steps) // 2].per_rank  # a new order each epoch


def test_sorted_batches_hold_similar_lengths_and_their_order_is_shuffled():
    lengths, _, steps = all_steps("sorted", epochs=1)
    batches = [sorted(lengths[i] for rank in s.per_rank for mb in rank for i in mb) for s in steps]
    # consecutive in sorted order: batches do not overlap in length
    ranges = sorted((b[0], b[-1]) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in itertools.pairwise(ranges))
    assert [b[0] for b in batches] != sorted(b[0] for b in batches)  # but not run shortest first


def test_naive_runs_one_sequence_per_micro_step():
    _, _, steps = all_steps("naive")
    assert all(len(mb) == 1 for s in steps for rank in s.per_rank for mb in rank if mb)


def test_packing_balances_tokens_over_ranks():
    lengths, _, steps = all_steps("packing", lengths=[100] * 64)
    for s in steps:
        loads = [sum(lengths[i] for mb in rank for i in mb) for rank in s.per_rank]
        assert max(loads) - min(loads) <= 100


def test_packing_fills_packs_to_the_sets_bound_across_step_boundaries():
    """The issue's benchmark mix (200 sequences, 64k packs, 96 per step, the trainer's seed): packing each step's
    batch alone gave 0.916 against the set's bound of 0.959; packs of the whole set, dealt to steps, reach it."""
    lengths = longalign_like_lengths(200, 0)
    sampler = StepSampler(lengths, strategy="packing", global_batch_size=96, capacity=65536, seed=42)
    bound = sum(lengths) / (math.ceil(sum(lengths) / 65536) * 65536)
    assert sampler.packing_efficiency() >= bound - 0.01
    assert sampler.total_steps == math.ceil(200 / 96)


def test_resumed_sampler_continues_the_same_plan_and_refuses_another_seed():
    lengths, samplers, steps = all_steps("packing")
    again = StepSampler(
        lengths, strategy="packing", global_batch_size=16, capacity=4096, world_size=2, rank=0, seed=7, epochs=2
    )
    partial = StepSampler(
        lengths, strategy="packing", global_batch_size=16, capacity=4096, world_size=2, rank=0, seed=7, epochs=2
    )
    for _ in zip(range(5), partial, strict=False):
        pass
    again.load_state_dict(partial.state_dict())
    assert list(again) == steps[5:]
    other = StepSampler(lengths, strategy="packing", global_batch_size=16, capacity=4096, seed=8, epochs=2)
    with pytest.raises(ValueError, match="seed=7"):
        other.load_state_dict(partial.state_dict())
