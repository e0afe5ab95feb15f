"""A pack computes exactly what its sequences compute alone: the packed attention keeps them apart."""

from __future__ import annotations

import pytest
import torch

from longalign_trainer.train import attention
from longalign_trainer.train.packing import build_pack


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    attention.register("sdpa_block_diagonal", "cpu")
    m = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention.NAME,
                                             dtype=torch.float32).eval()
    return m


def test_logits_of_a_pack_equal_each_sequence_alone(model, tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lengths = [37, 5, 120, 1, 64]
    seqs = [torch.randint(10, 4000, (n,)).tolist() for n in lengths]
    pack = build_pack([(s, s) for s in seqs])
    with torch.no_grad():
        packed = model(**pack.as_model_inputs()).logits[0]
        plain = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa",
                                                     dtype=torch.float32).eval()
        alone = torch.cat([plain(input_ids=torch.tensor([s]), use_cache=False).logits[0] for s in seqs])
    assert attention.chosen_backend() == "sdpa_block_diagonal"
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_without_boundaries_sequences_would_leak(model):
    """The check above can fail: the same tokens run as one causal row give different logits."""
    torch.manual_seed(1)
    a, b = torch.randint(10, 4000, (20,)).tolist(), torch.randint(10, 4000, (20,)).tolist()
    pack = build_pack([(a, a), (b, b)])
    with torch.no_grad():
        packed = model(**pack.as_model_inputs()).logits[0, 20:]
        row = model(input_ids=pack.input_ids[None], use_cache=False).logits[0, 20:]
    assert (packed - row).abs().max() > 1e-2


def test_unknown_backend_is_refused_by_name():
    with pytest.raises(ValueError, match="attention_backend: 'flash_attn' is not usable on cpu"):
        attention.register("flash_attn", "cpu")


def test_per_sequence_loop_equals_the_block_diagonal_reference():
    """The cuDNN backend's loop (here on CPU's SDPA), padded or not: same output as the explicit mask, grouped KV
    heads too."""
    torch.manual_seed(2)
    lengths = [7, 1, 22, 11]
    cu = torch.tensor([0, 7, 8, 30, 41], dtype=torch.int32)
    q, k, v = torch.randn(1, 4, 41, 16), torch.randn(1, 2, 41, 16), torch.randn(1, 2, 41, 16)
    reference = attention._sdpa_block_diagonal(q, k, v, cu, 0.25)
    for pad_to in (1, 8):
        loop = attention._per_sequence(q, k, v, lengths, 0.25, pad_to=pad_to)
        torch.testing.assert_close(loop, reference, rtol=1e-5, atol=1e-5)
