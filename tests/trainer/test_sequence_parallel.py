"""Sequence parallelism: 2 real gloo ranks holding halves of each pack compute what 1 rank computes on the
whole packs (loss and every parameter's gradient), with sequences that cross the split point and LongAlign's
loss weighting on, under both attention schemes: Ulysses on the tiny model (4 query, 2 key/value heads) and
all-gathered keys and values on a model with 1 key/value head, which Ulysses cannot split and the automatic
choice gives to ``allgather_kv``; what cannot be split is refused by name."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import run_two_ranks

from longalign_trainer.config_files import InputError
from longalign_trainer.train import attention, checkpointing, linear_loss, sequence_parallel
from longalign_trainer.train.loss import count_step, loss_weights, weighted_loss
from longalign_trainer.train.packing import IGNORE_INDEX, build_pack

SCHEMES = ("ulysses", "allgather_kv")  # the scheme auto picks for each model of the test

# Two packs of 88 and 61 tokens: the halves cut through a sequence in each (the first pack's last sequence
# spans tokens 43..87, cut at 44; the second's spans 27..60, cut at 31), and 61 tokens need the filler that
# pads a pack to a multiple of the SP size.
PACKS = [(3, 40, 45), (7, 18, 2, 34)]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}  # fp32; the halves' gradients are summed in another order


def make_packs(pad_id: int, multiple: int):
    g = torch.Generator().manual_seed(0)
    packs = []
    for lengths in PACKS:
        seqs = []
        for n in lengths:
            ids = torch.randint(10, 4000, (n,), generator=g).tolist()
            prompt = max(1, n // 3)
            seqs.append((ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
        packs.append(sequence_parallel.pad_pack(build_pack(seqs), multiple, pad_id))
    return packs


def load_model(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention.NAME, dtype=torch.float32)
    checkpointing.enable(model, "nothing")  # the all-to-all runs again in the recomputation
    linear_loss.apply(model)
    return model.train()


def step(model, lay, world: int):
    """One step's loss and gradients on this rank, as the recipe computes them."""
    packs = make_packs(0, lay.size)
    counts = count_step(
        [[int((p.targets[p.seq_index == i] != IGNORE_INDEX).sum()) for i in range(p.num_sequences)] for p in packs]
    )
    total = torch.zeros((), dtype=torch.float64)
    for pack in packs:
        mine = sequence_parallel.local_pack(pack, lay)
        with linear_loss.targets(mine.targets):
            token_loss = model(**mine.as_model_inputs()).logits[0]
        part = sequence_parallel.token_slice(pack.num_tokens, lay)
        loss = weighted_loss(token_loss, loss_weights(pack.targets, pack.seq_index, counts, world, True, part=part))
        loss.backward()
        total += loss.detach().double()
    return total, [p.grad.clone() for p in model.parameters()]


def _worker(rank: int, port: int, model_paths, out):
    from transformers import AutoConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        attention.register("sdpa_block_diagonal", "cpu")
        group = sequence_parallel.layout(rank, 2, 2, local_world=2)
        for case, path in model_paths.items():
            lay = sequence_parallel.choose_attention(group, AutoConfig.from_pretrained(path), "auto")
            sequence_parallel.register(lay)
            loss, grads = step(load_model(path), lay, world=2)
            for t in [loss, *grads]:  # DeepSpeed averages over all ranks
                dist.all_reduce(t)
                t /= 2
            out[case, rank] = (float(loss), grads, lay.dp_size, lay.attention)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def model_paths(tiny_model, tmp_path_factory):
    """The tiny model, and the same shape with a single key/value head (random weights, seeded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model)
    config.num_key_value_heads = 1
    torch.manual_seed(0)
    one_kv_head = tmp_path_factory.mktemp("one-kv-head")
    AutoModelForCausalLM.from_config(config).save_pretrained(one_kv_head)
    return dict(zip(SCHEMES, (tiny_model, one_kv_head), strict=True))


@pytest.fixture(scope="module")
def two_ranks(model_paths):
    """Both models' step on 2 SP ranks (one pair of processes for both)."""
    return run_two_ranks(_worker, model_paths)


@pytest.mark.parametrize("case", SCHEMES)
def test_two_sp_ranks_give_the_loss_and_gradients_of_one_rank(case, model_paths, two_ranks):
    attention.register("sdpa_block_diagonal", "cpu")  # 1 rank, whole packs: the reference
    whole = sequence_parallel.Layout(size=1, rank=0, dp_rank=0, dp_size=1)
    loss, grads = step(load_model(model_paths[case]), whole, world=1)
    (sp_loss, sp_grads, dp_size, scheme), (other_loss, *_) = two_ranks[case, 0], two_ranks[case, 1]
    assert scheme == case  # auto: Ulysses where SP 2 divides the heads, else the all-gather
    assert dp_size == 1 and other_loss == sp_loss
    assert sp_loss == pytest.approx(float(loss), rel=1e-6)
    assert any(g.abs().sum() > 0 for g in grads)
    for got, expected in zip(sp_grads, grads, strict=True):
        torch.testing.assert_close(got, expected, **TOLERANCE)


def test_the_split_crosses_sequences_and_pads_with_a_filler():
    """The test above is about split sequences: each half of a pack holds part of a sequence that the other
    half continues, and the filler adds tokens of no loss as a sequence of its own."""
    packs = make_packs(0, 2)
    for pack, lengths in zip(packs, PACKS, strict=True):
        assert pack.num_tokens % 2 == 0 and pack.num_tokens - sum(lengths) == sum(lengths) % 2
        half = pack.num_tokens // 2
        assert pack.seq_index[half - 1] == pack.seq_index[half]  # one sequence on both ranks
        assert (pack.targets[sum(lengths) :] == IGNORE_INDEX).all()


def test_sizes_that_cannot_split_are_refused_by_name():
    """Ulysses asked of heads it cannot split is refused, naming the setting and the fixes; auto takes the
    all-gather there, and Ulysses where it can split."""
    qwen = SimpleNamespace(num_attention_heads=28, num_key_value_heads=4)  # Qwen2.5-7B's heads
    at_8 = sequence_parallel.Layout(size=8, rank=0, dp_rank=0, dp_size=1)
    refused = (
        "sequence_parallel_attention: ulysses splits the attention heads and the key/value heads over the SP ranks, "
        "but sequence_parallel_size 8 does not divide the model's 28 attention heads and 4 key/value heads "
        r"\(num_attention_heads, num_key_value_heads in config.json\): use sequence_parallel_attention auto or "
        "allgather_kv .*, or a sequence_parallel_size that divides 4"
    )
    with pytest.raises(InputError, match=refused):
        sequence_parallel.choose_attention(at_8, qwen, "ulysses")
    assert sequence_parallel.choose_attention(at_8, qwen, "auto").attention == "allgather_kv"
    assert sequence_parallel.choose_attention(at_8, qwen, "allgather_kv").attention == "allgather_kv"
    at_4 = sequence_parallel.Layout(size=4, rank=0, dp_rank=0, dp_size=1)
    assert sequence_parallel.choose_attention(at_4, qwen, "auto").attention == "ulysses"
    with pytest.raises(InputError, match="sequence_parallel_size: 3 does not divide the 8 ranks of a node"):
        sequence_parallel.layout(0, 16, 3, local_world=8)
