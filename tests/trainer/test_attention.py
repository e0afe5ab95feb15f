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
    m = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention.NAME, dtype=torch.float32).eval()
    return m


def test_logits_of_a_pack_equal_each_sequence_alone(model, tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lengths = [37, 5, 120, 1, 64]
    seqs = [torch.randint(10, 4000, (n,)).tolist() for n in lengths]
    pack = build_pack([(s, s) for s in seqs])
    with torch.no_grad():
        packed = model(**pack.as_model_inputs()).logits[0]
        plain = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa", dtype=torch.float32).eval()
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


def reference_varlen(q, k, v, cu_q, cu_k, scale):
    """The exact reference in the varlen kernels' ``[T, H, D]`` layout, in and out."""
    four_d = (t.transpose(0, 1)[None] for t in (q, k, v))
    return attention._sdpa_block_diagonal(*four_d, cu_q, cu_k, scale)[0].transpose(0, 1)


def cudnn_on_cpu(monkeypatch, pad_to: int) -> None:
    """The cuDNN backend's split on CPU: SDPA for long sequences (from 10 tokens), the reference for varlen."""
    monkeypatch.setattr(attention, "CUDNN_MIN_LENGTH", 10)
    monkeypatch.setattr(attention, "CUDNN_PAD", pad_to)
    monkeypatch.setattr(
        attention,
        "_torch_varlen",  # PyTorch's varlen kernel is GPU-only
        lambda q, k, v, cu_q, cu_k, max_q, max_k, scaling: reference_varlen(q, k, v, cu_q, cu_k, scaling),
    )


@pytest.mark.parametrize("pad_to", [1, 8])
def test_cudnn_backend_splits_equal_the_block_diagonal_reference(monkeypatch, pad_to):
    """The cuDNN backend's split into long sequences (one SDPA each, padded) and runs of short ones (one varlen
    call each), here on CPU's SDPA with the varlen kernel stood in by the reference: same output and the same
    gradients as the explicit mask, grouped KV heads too."""
    cudnn_on_cpu(monkeypatch, pad_to)
    torch.manual_seed(2)
    lengths = [7, 1, 22, 11, 3, 4, 13]  # short run, two long ones, short run, a long one last
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total = sum(lengths)
    # transformers' layout: [1, H, T, D] views of [1, T, H, D] projections
    q, k, v = (torch.randn(1, total, h, 16).transpose(1, 2).requires_grad_() for h in (4, 2, 2))
    grad_out = torch.randn(1, total, 4, 16)
    out = attention._cudnn(q, k, v, cu, cu, 0.25)
    out.backward(grad_out)
    got = [out.detach(), *(t.grad for t in (q, k, v))]
    for t in (q, k, v):
        t.grad = None
    reference = attention._sdpa_block_diagonal(q, k, v, cu, cu, 0.25).transpose(1, 2)
    reference.backward(grad_out)
    for g, r in zip(got, [reference.detach(), *(t.grad for t in (q, k, v))], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


# FlashAttention-3's op schemas as its library registers them (alias annotations left out: the stand-in below
# allocates its outputs); the trainer calls them by these names.
FA3_SCHEMAS = {
    "fwd": "fwd(Tensor q, Tensor k, Tensor v, Tensor? k_new=None, Tensor? v_new=None, Tensor? q_v=None, "
    "Tensor? out=None, Tensor? cu_seqlens_q=None, Tensor? cu_seqlens_k=None, Tensor? cu_seqlens_k_new=None, "
    "Tensor? seqused_q=None, Tensor? seqused_k=None, int? max_seqlen_q=None, int? max_seqlen_k=None, "
    "Tensor? page_table=None, Tensor? kv_batch_idx=None, Tensor? leftpad_k=None, Tensor? rotary_cos=None, "
    "Tensor? rotary_sin=None, Tensor? seqlens_rotary=None, Tensor? q_descale=None, Tensor? k_descale=None, "
    "Tensor? v_descale=None, float? softmax_scale=None, bool is_causal=False, int window_size_left=-1, "
    "int window_size_right=-1, int attention_chunk=0, float softcap=0.0, bool is_rotary_interleaved=False, "
    "Tensor? scheduler_metadata=None, int num_splits=0, bool? pack_gqa=None, int sm_margin=0) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    "bwd": "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse, Tensor? dq=None, "
    "Tensor? dk=None, Tensor? dv=None, Tensor? cu_seqlens_q=None, Tensor? cu_seqlens_k=None, "
    "Tensor? seqused_q=None, Tensor? seqused_k=None, int? max_seqlen_q=None, int? max_seqlen_k=None, "
    "float? softmax_scale=None, bool is_causal=False, int window_size_left=-1, int window_size_right=-1, "
    "float softcap=0.0, bool deterministic=False, int sm_margin=0) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
}


@pytest.fixture(scope="module")
def fa3_stand_in():
    """``torch.ops.flash_attn_3`` on CPU (FlashAttention-3 needs a Hopper GPU): the exact reference behind the
    real op names and arguments; counts the forward calls. The trainer's side of the protocol is what is tested."""
    calls = {"fwd": 0}

    def named(op, args, kwargs):  # the dispatcher may pass any argument by position
        schema = getattr(torch.ops.flash_attn_3, op).default._schema
        return {
            **{a.name: a.default_value for a in schema.arguments},
            **dict(zip((a.name for a in schema.arguments), args, strict=False)),
            **kwargs,
        }

    def fwd(*args, **kwargs):
        kw = named("fwd", args, kwargs)
        q, k, v = kw["q"], kw["k"], kw["v"]
        cu_q, cu_k = kw["cu_seqlens_q"], kw["cu_seqlens_k"]
        assert kw["is_causal"] and kw["num_splits"] == 1
        assert kw["max_seqlen_q"] == int(cu_q.diff().max()) and kw["max_seqlen_k"] == int(cu_k.diff().max())
        calls["fwd"] += 1
        out = reference_varlen(q, k, v, cu_q, cu_k, kw["softmax_scale"]).contiguous()
        return out, torch.zeros(q.shape[1], q.shape[0]), torch.empty(0), torch.empty(0)

    def bwd(*args, **kwargs):
        kw = named("bwd", args, kwargs)
        dout, q, k, v = kw["dout"], kw["q"], kw["k"], kw["v"]
        assert kw["is_causal"]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            out = reference_varlen(*leaves, kw["cu_seqlens_q"], kw["cu_seqlens_k"], kw["softmax_scale"])
            grads = torch.autograd.grad(out, leaves, dout)
        return (*grads, *(torch.empty(0) for _ in range(5)))

    lib = torch.library.Library("flash_attn_3", "DEF")
    for name, fn in (("fwd", fwd), ("bwd", bwd)):
        lib.define(FA3_SCHEMAS[name])
        lib.impl(name, fn, "CPU")
    yield calls
    lib._destroy()


def test_flash_attn_3_backend_equals_the_reference_and_is_not_recomputed(model, fa3_stand_in, monkeypatch):
    """The FlashAttention-3 backend hands the whole pack to one varlen call per layer in the projections'
    [T, H, D] layout: the packed model's logits and gradients equal the reference backend's, and selective
    checkpointing keeps the kernel's output, so the backward pass runs no second forward."""
    from longalign_trainer.train import checkpointing

    torch.manual_seed(3)
    lengths = [37, 5, 120, 1, 64]
    seqs = [torch.randint(10, 4000, (n,)).tolist() for n in lengths]
    pack = build_pack([(s, s) for s in seqs])
    checkpointing.enable(model, "attention")
    model.train()
    results = {}
    try:
        for backend in ("sdpa_block_diagonal", "flash_attn_3"):
            monkeypatch.setitem(attention._chosen, "backend", backend)
            model.zero_grad()
            calls_before = fa3_stand_in["fwd"]
            logits = model(**pack.as_model_inputs()).logits
            logits.square().mean().backward()
            results[backend] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
            expected_calls = model.config.num_hidden_layers if backend == "flash_attn_3" else 0
            assert fa3_stand_in["fwd"] - calls_before == expected_calls
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
    (ref_logits, ref_grads), (logits, grads) = results["sdpa_block_diagonal"], results["flash_attn_3"]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["sdpa_block_diagonal", "cudnn", "flash_attn_3", "flex"])
def test_a_slice_of_queries_with_its_sequences_earlier_keys_gives_the_whole_packs_rows(
    backend, monkeypatch, fa3_stand_in
):
    """Sequence parallelism with all-gathered keys: each of 3 slices of a pack runs its queries against its
    pieces' keys from each sequence's start (a piece that continues a sequence sees the keys before the slice:
    the causal mask aligned bottom-right). Together the slices give the whole pack's output and gradients, on
    every backend that runs on CPU (cuDNN's split on CPU's SDPA; FlashAttention-3 through its op protocol;
    FlexAttention uncompiled, its output only: on CPU it has no backward pass, and torch 2.13's CPU compiler
    fails on query and key lengths that differ)."""
    from torch.nn.attention.flex_attention import flex_attention

    from longalign_trainer.train import sequence_parallel

    cudnn_on_cpu(monkeypatch, pad_to=8)
    monkeypatch.setattr(attention, "_compiled_flex", lambda: flex_attention)
    monkeypatch.setitem(attention._chosen, "backend", backend)
    torch.manual_seed(4)
    lengths = [25, 4, 30, 1, 12]  # slices of 24: a long piece that continues its sequence, long and short ones
    pack = build_pack([([1] * n, [1] * n) for n in lengths])
    needs_grad = backend != "flex"
    q, k, v = (torch.randn(1, pack.num_tokens, h, 16).transpose(1, 2).requires_grad_(needs_grad) for h in (4, 1, 1))
    grad_out = torch.randn(1, pack.num_tokens, 4, 16)
    outs = []
    for rank in range(3):
        lay = sequence_parallel.Layout(size=3, rank=rank, dp_rank=0, dp_size=1, attention="allgather_kv")
        mine, part = sequence_parallel.local_pack(pack, lay), sequence_parallel.token_slice(pack.num_tokens, lay)
        start, stop = int(mine.cu_seqlens_k[0]), int(mine.cu_seqlens_k[-1])
        out, _ = attention.packed_attention_forward(
            None,
            q[:, :, part],
            k[:, :, start:stop],
            v[:, :, start:stop],
            scaling=0.25,
            cu_seq_lens_q=mine.cu_seqlens,
            cu_seq_lens_k=mine.cu_seqlens_k - start,
            max_length_q=mine.max_seqlen,
            max_length_k=mine.max_seqlen_k,
        )
        outs.append(out)
    assert [int(o.shape[1]) for o in outs] == [24, 24, 24]
    sliced = torch.cat(outs, dim=1)
    reference = attention._sdpa_block_diagonal(q, k, v, pack.cu_seqlens, pack.cu_seqlens, 0.25).transpose(1, 2)
    torch.testing.assert_close(sliced, reference, rtol=1e-5, atol=1e-5)
    if not needs_grad:
        return
    sliced.backward(grad_out)
    got = [t.grad for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    reference.backward(grad_out)
    for g, r in zip(got, [t.grad for t in (q, k, v)], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
