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


@pytest.mark.parametrize("pad_to", [1, 8])
def test_cudnn_backend_splits_equal_the_block_diagonal_reference(monkeypatch, pad_to):
    """The cuDNN backend's split into long sequences (one SDPA each, padded) and runs of short ones (one varlen
    call each), here on CPU's SDPA with the varlen kernel stood in by the reference: same output and the same
    gradients as the explicit mask, grouped KV heads too."""
    def reference_varlen(q, k, v, cu, max_len, scaling):  # PyTorch's varlen kernel is GPU-only: [T, H, D] in and out
        return attention._sdpa_block_diagonal(*(t.transpose(0, 1)[None] for t in (q, k, v)), cu, scaling)[0].transpose(0, 1)

    monkeypatch.setattr(attention, "CUDNN_MIN_LENGTH", 10)
    monkeypatch.setattr(attention, "CUDNN_PAD", pad_to)
    monkeypatch.setattr(attention, "_torch_varlen", reference_varlen)
    torch.manual_seed(2)
    lengths = [7, 1, 22, 11, 3, 4, 13]  # short run, two long ones, short run, a long one last
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total = sum(lengths)
    # transformers' layout: [1, H, T, D] views of [1, T, H, D] projections
    q, k, v = (torch.randn(1, total, h, 16).transpose(1, 2).requires_grad_() for h in (4, 2, 2))
    grad_out = torch.randn(1, total, 4, 16)
    out = attention._cudnn(q, k, v, cu, 0.25)
    out.backward(grad_out)
    got = [out.detach(), *(t.grad for t in (q, k, v))]
    for t in (q, k, v):
        t.grad = None
    reference = attention._sdpa_block_diagonal(q, k, v, cu, 0.25).transpose(1, 2)
    reference.backward(grad_out)
    for g, r in zip(got, [reference.detach(), *(t.grad for t in (q, k, v))]):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
