"""LongAlign loss weighting equals the per-sequence mean however sequences are packed, on 1 or 2 ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import run_two_ranks

from longalign_trainer.train.batching import StepSampler
from longalign_trainer.train.linear_loss import per_token_linear_loss
from longalign_trainer.train.loss import count_step, loss_weights, weighted_loss
from longalign_trainer.train.packing import IGNORE_INDEX, build_pack, target_tokens

VOCAB = 50


def make_sequences(seed: int, lengths=(3, 40, 7, 18, 2, 25, 9, 12)):
    """(input_ids, labels) with a prompt of no loss and answers of very different lengths."""
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for n in lengths:
        ids = torch.randint(0, VOCAB, (n,), generator=g).tolist()
        prompt = max(1, n // 3)
        seqs.append((ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return seqs


def per_token_loss(logits, targets):
    """The plain definition: fp32 cross-entropy per position, 0 where the target is ignored."""
    return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")


def fixed_logits(pack, seed: int):
    """Deterministic logits for a pack, a function of each token's (sequence content, position)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(VOCAB, 64, VOCAB, generator=g)
    return table[pack.input_ids, pack.position_ids]


def reference(seqs, seed: int, weighting: bool, layout) -> float:
    """Direct definitions: Eq. 2 (mean over sequences of their mean token loss), or Eq. 3 (mean of pack means)."""
    if weighting:
        means = []
        for s in seqs:
            pack = build_pack([s])
            tl = per_token_loss(fixed_logits(pack, seed), pack.targets)
            means.append(tl.sum() / (pack.targets != IGNORE_INDEX).sum())
        return float(torch.stack(means).mean())
    pack_means = []
    for micro in (mb for rank in layout for mb in rank):
        pack = build_pack([seqs[i] for i in micro])
        tl = per_token_loss(fixed_logits(pack, seed), pack.targets)
        pack_means.append(tl.sum() / (pack.targets != IGNORE_INDEX).sum())
    return float(torch.stack(pack_means).mean())


def rank_loss(seqs, seed, weighting, layout, rank: int) -> float:
    """What rank ``rank`` backpropagates over its micro-batches of ``layout`` (every rank's micro-batches), by the
    recipe's arithmetic: the step's counts from the whole layout, as every rank knows it."""
    counts = count_step([target_tokens(seqs[i][1]) for i in mb] for micro_batches in layout for mb in micro_batches)
    packs = [build_pack([seqs[i] for i in mb]) for mb in layout[rank]]
    total = 0.0
    for p in packs:
        weights = loss_weights(p.targets, p.seq_index, counts, len(layout), weighting)
        total += float(weighted_loss(per_token_loss(fixed_logits(p, seed), p.targets), weights))
    return total


LAYOUT = [[[0, 1, 2], [3]], [[4, 5, 6, 7]]]  # rank 0: two packs; rank 1: one pack


@pytest.mark.parametrize("weighting", [True, False])
def test_one_rank_any_packing_gives_the_reference(weighting):
    seqs = make_sequences(0)
    layout = [[mb for rank in LAYOUT for mb in rank]]
    assert rank_loss(seqs, 0, weighting, layout, 0) == pytest.approx(reference(seqs, 0, weighting, layout), rel=1e-6)


def test_weighting_stays_exact_when_steps_take_whole_packs_of_the_set():
    """The sampler packs the whole set and deals packs to steps (a step's sequence count floats): every step's
    loss is still the mean over that step's sequences of their mean token loss, and each sequence counts in
    exactly one step of each epoch."""
    lengths = (3, 40, 7, 18, 2, 25, 9, 12, 30, 5, 16, 22, 8, 35)
    seqs = make_sequences(3, lengths)
    sampler = StepSampler(list(lengths), strategy="packing", global_batch_size=4, capacity=48, seed=1, epochs=2)
    seen: list[int] = []
    for plan in sampler:
        (micro_batches,) = plan.per_rank
        members = [i for mb in micro_batches for i in mb]
        seen += members
        expected = reference([seqs[i] for i in members], 0, True, None)
        assert rank_loss(seqs, 0, True, plan.per_rank, 0) == pytest.approx(expected, rel=1e-6)
    assert sorted(seen) == sorted(list(range(len(lengths))) * 2)


def test_the_counts_from_the_plan_are_those_of_the_packs_targets():
    """M, K and the target tokens counted from each sequence's labels, as every rank counts them from the plan,
    are what the built packs' shifted targets hold: a sequence whose only label is its first token takes no loss,
    nor does a micro-batch of such sequences or a filler."""
    seqs = [*make_sequences(2), ([4, 5, 6], [4, IGNORE_INDEX, IGNORE_INDEX]), ([7, 8], [IGNORE_INDEX, 8])]
    layout = [[(0, 1), (2,), ()], [(3, 4, 5), (8,)], [(6, 7, 9)]]
    counts = count_step([target_tokens(seqs[i][1]) for i in mb] for rank in layout for mb in rank)
    packs = [build_pack([seqs[i] for i in mb]) for rank in layout for mb in rank if mb]
    valid = [p.targets != IGNORE_INDEX for p in packs]
    assert counts.target_tokens == sum(int(v.sum()) for v in valid)
    assert counts.sequences == sum(len(set(p.seq_index[v].tolist())) for p, v in zip(packs, valid, strict=True))
    assert counts.micro_batches == sum(bool(v.any()) for v in valid) == 4
    assert counts.sequences == 9  # ten sequences, sequence 8 (its label on its first token) takes no loss


def test_weighting_on_differs_from_plain_packing():
    seqs = make_sequences(0)
    layout = [[mb for rank in LAYOUT for mb in rank]]
    assert abs(reference(seqs, 0, True, layout) - reference(seqs, 0, False, layout)) > 1e-3


def _worker(rank: int, port: int, weighting: bool, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        seqs = make_sequences(0)
        local = torch.tensor(rank_loss(seqs, 0, weighting, LAYOUT, rank), dtype=torch.float64)
        dist.all_reduce(local)  # DeepSpeed averages gradients over ranks: the step loss is the mean
        out[rank] = float(local) / 2
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("weighting", [True, False])
def test_two_real_ranks_give_the_reference(weighting):
    out = run_two_ranks(_worker, weighting)
    expected = reference(make_sequences(0), 0, weighting, LAYOUT)
    assert out[0] == pytest.approx(expected, rel=1e-6)
    assert out[1] == out[0]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_chunked_linear_loss_equals_the_whole_one_with_its_gradients(compiled):
    """Chunks of rows (each one's logits recomputed in the backward pass), eager or compiled (the trainer's
    ``fused_ops`` on GPUs; here on CPU): the same losses and gradients as the cross-entropy of all logits."""
    torch.manual_seed(3)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = torch.randn(VOCAB, 16, requires_grad=True)
    targets = torch.randint(0, VOCAB, (23,))
    targets[::4] = IGNORE_INDEX
    whole = per_token_loss(hidden @ weight.t(), targets)
    grads = torch.autograd.grad(whole.square().sum(), [hidden, weight])
    chunked = per_token_linear_loss(hidden, weight, targets, compiled=compiled, chunk=5)
    chunked_grads = torch.autograd.grad(chunked.square().sum(), [hidden, weight])
    torch.testing.assert_close(chunked, whole)
    for got, expected in zip(
        chunked_grads, grads, strict=True
    ):  # the weight's gradient sums the chunks in another order
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_the_head_computes_logits_only_for_the_rows_that_take_a_loss():
    """A prompt token's logits are never computed: the head's matmul work (forward, its recomputation, both
    gradients) scales with the answer tokens, not the pack's; a pack without any answer token (a rank's filler)
    still gives a loss to run the backward pass through."""
    from torch.utils.flop_counter import FlopCounterMode

    hidden = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(VOCAB, 16, requires_grad=True)
    targets = torch.randint(0, VOCAB, (40,))
    targets[6:] = IGNORE_INDEX
    with FlopCounterMode(display=False) as counter:
        per_token_linear_loss(hidden, weight, targets, chunk=4).sum().backward()
    assert counter.get_total_flops() == 4 * (2 * 6 * 16 * VOCAB)  # 6 rows of 40

    none = per_token_linear_loss(hidden, weight, torch.full((40,), IGNORE_INDEX))
    none.sum().backward()
    assert none.tolist() == [0.0] * 40


def test_the_loss_inside_the_head_equals_the_loss_of_the_logits_with_its_gradients():
    """linear_loss: the LM head returns per-token losses chunk by chunk, never the full logits; the same losses
    and parameter gradients as the cross-entropy of the model's own logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from longalign_trainer.train import linear_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    )
    pack = build_pack(make_sequences(0))
    logits = model(**pack.as_model_inputs()).logits[0]
    expected = per_token_loss(logits, pack.targets)
    expected_grads = torch.autograd.grad(expected.sum(), list(model.parameters()))
    linear_loss.apply(model)
    torch.testing.assert_close(model(**pack.as_model_inputs()).logits[0], logits)  # outside targets: logits
    with linear_loss.targets(pack.targets):
        got = model(**pack.as_model_inputs()).logits[0]
    grads = torch.autograd.grad(got.sum(), list(model.parameters()))
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)
