"""Attention for packs: every packed sequence attends causally to itself only, whatever kernel runs it.

Registered with transformers' ``AttentionInterface`` under ``longalign_packed`` (load the model with
``attn_implementation="longalign_packed"``, then call it with ``Pack.as_model_inputs()``). transformers builds
no mask for an implementation it has no mask function for, so the boundaries reach us only as the
``cu_seq_lens_q/k`` keyword arguments that Llama-style models pass through to attention. Kernels, in the
order ``auto`` tries them:

* ``flash_attn_3``: FlashAttention-3's varlen kernel, on Hopper GPUs when an extension registering
  ``torch.ops.flash_attn_3`` is installed (``FLASH_ATTN_3_MODULES``): the whole pack in one call, grouped KV
  heads as they are, in the projections' own ``[T, H, D]`` layout (no copies).
  ``benchmarks/attention_kernels.py`` on an H100, one layer over issue 9's whole set (21 packs of 64k):
  529 TFLOP/s forward + backward against 452 for ``cudnn`` and 276 for ``torch_varlen``;
* ``cudnn``: on Hopper or newer GPUs, every sequence of at least ``CUDNN_MIN_LENGTH`` tokens gets its own SDPA
  call on cuDNN's fused attention; each run of shorter ones, one ``torch_varlen`` call. Measured on an H100
  (one 64k sequence, 16×128 query heads, 4 KV heads, fwd+bwd): ~480 TFLOP/s against ~320 for the
  FlashAttention-2 kernels behind ``torch_varlen`` and 275 for ``flex`` (a 64k pack). But cuDNN builds an
  execution plan for every new shape and each call costs host time: a plain loop over every sequence lost to
  ``torch_varlen`` over a whole epoch.
  So long sequences are zero-padded at their end to a multiple of ``CUDNN_PAD`` (exact: causal attention never
  lets a real token see the padding), and short ones, where cuDNN gains least, never reach it;
* ``flash_attn``: ``flash_attn_varlen_func`` (the kernel LongAlign itself used), when importable, on a GPU;
* ``torch_varlen``: PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention inside), on a GPU;
* ``flex``: FlexAttention with a document mask, on a GPU (when varlen is missing or refuses the inputs);
* ``sdpa_block_diagonal``: the exact reference, SDPA with an explicit block-diagonal causal mask (memory
  quadratic in the pack length: for CPU runs and tests).

Without ``cu_seq_lens_q`` (plain inference) every backend is ordinary causal attention.

Queries and keys may be different tokens (sequence parallelism with all-gathered keys,
``sequence_parallel.py``): piece ``i`` of ``cu_seq_lens_q`` attends to piece ``i`` of ``cu_seq_lens_k``, the
causal mask aligned bottom-right, so a piece of queries that continues a sequence sees that sequence's earlier
keys (its last query sees the piece's last key). FlashAttention's varlen kernels (2.1 and later, 3, and
PyTorch's ``varlen_attn``, which runs FlashAttention-2) align their causal mask bottom-right themselves; the
mask of ``sdpa_block_diagonal`` and ``flex`` is built so; ``cudnn`` gives such pieces to ``torch_varlen``
(SDPA's ``is_causal`` aligns top-left).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
from functools import lru_cache
from typing import Any

NAME = "longalign_packed"
BACKENDS = ("flash_attn_3", "cudnn", "flash_attn", "torch_varlen", "flex", "sdpa_block_diagonal")
CUDNN_MIN_LENGTH, CUDNN_PAD = 4096, 512
# Extensions that register torch.ops.flash_attn_3: flash-attention's own hopper/ build, and the same kernels as
# xformers bundles them (vLLM's images install xformers).
FLASH_ATTN_3_MODULES = ("flash_attn_3._C", "xformers.flash_attn_3._C")
_chosen: dict[str, str] = {"backend": "sdpa_block_diagonal"}


def available_backends(device_type: str) -> list[str]:
    """The backends usable on ``device_type`` ("cuda" or "cpu"), fastest first."""
    found = []
    if device_type == "cuda":
        if _flash_attn_3_usable():
            found.append("flash_attn_3")
        if _cudnn_attention_usable():
            found.append("cudnn")
        if importlib.util.find_spec("flash_attn") is not None:
            found.append("flash_attn")
        if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
            found.append("torch_varlen")
        found.append("flex")
    found.append("sdpa_block_diagonal")
    return found


def register(backend: str = "auto", device_type: str = "cpu") -> str:
    """Register ``longalign_packed`` with transformers using ``backend`` (or the best one); return its name."""
    usable = available_backends(device_type)
    chosen = usable[0] if backend == "auto" else backend
    if chosen not in usable:
        raise ValueError(f"attention_backend: {chosen!r} is not usable on {device_type} (usable: {usable})")
    _chosen["backend"] = chosen
    install(packed_attention_forward)
    return chosen


def install(forward) -> None:
    """Make ``forward`` transformers' ``longalign_packed`` attention, run outside any compiled graph (``fused_ops``'
    whole layers break their graph there): each backend is its own kernel, or compiles itself (``flex``)."""
    import torch
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, torch.compiler.disable(forward))


def chosen_backend() -> str:
    """The backend ``longalign_packed`` currently runs."""
    return _chosen["backend"]


def packed_attention_forward(
    module,
    query,
    key,
    value,
    attention_mask=None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q=None,
    cu_seq_lens_k=None,
    max_length_q=None,
    max_length_k=None,
    **kwargs,
):
    """transformers' attention signature: q ``[1, Hq, Tq, D]``, k/v ``[1, Hkv, Tk, D]`` → ``([1, Tq, Hq, D], None)``.

    ``cu_seq_lens_k`` (default: ``cu_seq_lens_q``) bounds each query piece's keys (module docstring)."""
    import torch

    if cu_seq_lens_q is None:  # not a pack: ordinary causal attention over the whole row
        cu_seq_lens_q = torch.tensor([0, query.shape[2]], dtype=torch.int32, device=query.device)
        max_length_q = query.shape[2]
    if cu_seq_lens_k is None:
        cu_seq_lens_k, max_length_k = cu_seq_lens_q, max_length_q
    if query.shape[0] != 1:
        raise ValueError(f"{NAME} takes one pack per forward (batch 1), got batch {query.shape[0]}")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    backend = _chosen["backend"]
    if backend == "sdpa_block_diagonal":
        out = _sdpa_block_diagonal(query, key, value, cu_seq_lens_q, cu_seq_lens_k, scaling)
    elif backend == "flex":
        out = _flex(query, key, value, cu_seq_lens_q, cu_seq_lens_k, scaling)
    elif backend == "cudnn":
        return _cudnn(query, key, value, cu_seq_lens_q, cu_seq_lens_k, scaling), None
    else:  # varlen kernels take [T, H, D]
        q, k, v = (_tokens_first(t) for t in (query, key, value))
        cu_q, cu_k = cu_seq_lens_q.to(torch.int32), cu_seq_lens_k.to(torch.int32)
        max_q, max_k = int(max_length_q), int(max_length_k)
        if backend == "flash_attn_3":
            out = _flash_attn_3_function().apply(q, k, v, cu_q, cu_k, max_q, max_k, scaling)
        elif backend == "flash_attn":
            from flash_attn import flash_attn_varlen_func

            out = flash_attn_varlen_func(
                q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=dropout, softmax_scale=scaling, causal=True
            )
        else:
            out = _torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scaling)
        return out[None], None
    return out.transpose(1, 2).contiguous(), None


def _tokens_first(t):
    """``[1, H, T, D]`` → the ``[T, H, D]`` view (the projections' own layout). A view through ``squeeze``, not
    ``t[0]``: indexing's backward pass would zero-fill a whole-pack gradient and copy into it."""
    return t.squeeze(0).transpose(0, 1)


def block_diagonal_causal_mask(cu_q, total_q: int, cu_k=None, total_k: int | None = None):
    """Boolean ``[Tq, Tk]`` mask: True where query i may attend to key j (the same piece, causal aligned
    bottom-right); without ``cu_k`` the keys are the queries' tokens (same sequence, j ≤ i).

    >>> import torch
    >>> block_diagonal_causal_mask(torch.tensor([0, 2, 3]), 3).int().tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    >>> block_diagonal_causal_mask(torch.tensor([0, 1, 3]), 3, torch.tensor([0, 3, 5]), 5).int().tolist()
    [[1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    """
    import torch

    seq_q, last_key, seq_k = _pieces(
        cu_q, total_q, cu_q if cu_k is None else cu_k, total_q if total_k is None else total_k
    )
    keys = torch.arange(len(seq_k), device=cu_q.device)
    return (seq_q[:, None] == seq_k[None, :]) & (keys[None, :] <= last_key[:, None])


def _pieces(cu_q, total_q: int, cu_k, total_k: int):
    """Per query token its piece and the last key it may see (global key index); per key token its piece."""
    import torch

    def piece_of_each_token(cu, total):
        lengths = (cu[1:] - cu[:-1]).long()
        return torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), lengths, output_size=total)

    seq_q, seq_k = piece_of_each_token(cu_q, total_q), piece_of_each_token(cu_k, total_k)
    shift = (cu_k[1:] - cu_q[1:]).long()  # bottom-right: a query piece's last token sees its key piece's last
    last_key = torch.arange(total_q, device=cu_q.device) + shift[seq_q]
    return seq_q, last_key, seq_k


def _sdpa_block_diagonal(query, key, value, cu_q, cu_k, scaling):
    import torch

    mask = block_diagonal_causal_mask(cu_q, query.shape[2], cu_k, key.shape[2])
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )


@lru_cache(maxsize=1)
def _compiled_flex():
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


_block_mask_cache: list = [None, None, None]  # [cu_q, cu_k, BlockMask]: all layers of a forward share one


def _flex(query, key, value, cu_q, cu_k, scaling):
    from torch.nn.attention.flex_attention import create_block_mask

    if _block_mask_cache[0] is not cu_q or _block_mask_cache[1] is not cu_k:
        total_q, total_k = query.shape[2], key.shape[2]
        seq_q, last_key, seq_k = _pieces(cu_q, total_q, cu_k, total_k)

        def document_causal(b, h, q_idx, kv_idx):
            return (seq_q[q_idx] == seq_k[kv_idx]) & (kv_idx <= last_key[q_idx])

        _block_mask_cache[:] = [
            cu_q,
            cu_k,
            create_block_mask(document_causal, None, None, total_q, total_k, device=query.device),
        ]
    return _compiled_flex()(
        query, key, value, block_mask=_block_mask_cache[2], scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )


def _flash_attn_3_usable() -> bool:
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        return False
    for module in FLASH_ATTN_3_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return hasattr(torch.ops.flash_attn_3, "fwd") and hasattr(torch.ops.flash_attn_3, "bwd")
    return False


@lru_cache(maxsize=1)
def _flash_attn_3_function():
    import torch

    class FlashAttn3(torch.autograd.Function):
        """Causal varlen attention through ``torch.ops.flash_attn_3`` (FlashAttention-3's own op schema):
        ``[Tq, Hq, D]``, ``[Tk, Hkv, D]`` × 2 → ``[Tq, Hq, D]``."""

        @staticmethod
        def forward(ctx, q, k, v, cu_q, cu_k, max_q: int, max_k: int, scaling: float):
            out, lse, *_ = torch.ops.flash_attn_3.fwd(
                q,
                k,
                v,
                cu_seqlens_q=cu_q,
                cu_seqlens_k=cu_k,
                max_seqlen_q=max_q,
                max_seqlen_k=max_k,
                softmax_scale=scaling,
                is_causal=True,
                num_splits=1,
            )
            ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
            ctx.max_q, ctx.max_k, ctx.scaling = max_q, max_k, scaling
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
            dq, dk, dv, *_ = torch.ops.flash_attn_3.bwd(
                grad.contiguous(),
                q,
                k,
                v,
                out,
                lse,
                cu_seqlens_q=cu_q,
                cu_seqlens_k=cu_k,
                max_seqlen_q=ctx.max_q,
                max_seqlen_k=ctx.max_k,
                softmax_scale=ctx.scaling,
                is_causal=True,
            )
            return dq, dk, dv, None, None, None, None, None

    return FlashAttn3


def _cudnn_attention_usable() -> bool:
    import torch

    return (
        torch.cuda.is_available()
        and torch.backends.cudnn.is_available()
        and torch.cuda.get_device_capability() >= (9, 0)
        and importlib.util.find_spec("torch.nn.attention.varlen") is not None
    )


_host_lengths_cache: list = [None, None, None]  # [cu_q, cu_k, (q, k) lengths]: one device sync per forward


def _host_lengths(cu_q, cu_k) -> list[tuple[int, int]]:
    """Each piece's (query, key) lengths as host integers."""
    if _host_lengths_cache[0] is not cu_q or _host_lengths_cache[1] is not cu_k:
        lengths = [[b - a for a, b in itertools.pairwise(cu.tolist())] for cu in (cu_q, cu_k)]
        _host_lengths_cache[:] = [cu_q, cu_k, list(zip(*lengths, strict=True))]
    return _host_lengths_cache[2]


def _cudnn(query, key, value, cu_q, cu_k, scaling):
    """Long sequences one by one on cuDNN, runs of short ones through varlen: ``[1, Tq, Hq, D]``. A piece of
    queries shorter than its keys (module docstring) counts as short: SDPA's causal mask aligns top-left.

    Works on ``[T, H, D]`` views (``_tokens_first``) split once per tensor: the backward pass of a
    split is one concatenation, where slicing each piece out would zero-fill and add a whole-pack gradient
    per piece; the output comes out contiguous, so transformers' reshape after attention copies nothing.
    """
    import torch

    segments = []  # (is_long, [(q length, k length)]): each long sequence alone, each run of short ones together
    for is_long, run in itertools.groupby(
        _host_lengths(cu_q, cu_k), key=lambda n: n[0] >= CUDNN_MIN_LENGTH and n[0] == n[1]
    ):
        group = list(run)
        segments += [(True, [n]) for n in group] if is_long else [(False, group)]
    sizes_q, sizes_k = ([sum(n[side] for n in run) for _, run in segments] for side in (0, 1))
    q_pieces = _tokens_first(query).split(sizes_q)
    k_pieces, v_pieces = (_tokens_first(t).split(sizes_k) for t in (key, value))
    outs = []
    for (is_long, run), q, k, v in zip(segments, q_pieces, k_pieces, v_pieces, strict=True):
        if is_long:
            outs.append(_causal_padded(q, k, v, scaling, pad_to=CUDNN_PAD))
        else:
            run_q, run_k = ([0, *itertools.accumulate(n[side] for n in run)] for side in (0, 1))
            cu_run_q, cu_run_k = (
                torch.tensor(c, dtype=torch.int32).to(query.device, non_blocking=True) for c in (run_q, run_k)
            )
            max_q, max_k = (max(n[side] for n in run) for side in (0, 1))
            outs.append(_torch_varlen(q, k, v, cu_run_q, cu_run_k, max_q, max_k, scaling))
    return torch.cat(outs)[None]


def _causal_padded(q, k, v, scaling, pad_to: int = 1):
    """Causal SDPA of one sequence ``[n, H, D]`` (cuDNN's kernel on a GPU, grouped KV heads as they are),
    zero-padded to a multiple of ``pad_to`` at its end, where causal attention hides the padding from every
    real token: ``[n, Hq, D]``."""
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n = q.shape[0]
    if n % pad_to:
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, -n % pad_to)) for t in (q, k, v))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION) if q.is_cuda else contextlib.nullcontext():
        q4, k4, v4 = (t.transpose(0, 1)[None] for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(
            q4, k4, v4, is_causal=True, scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
        )
    return out[0].transpose(0, 1)[:n]


def _torch_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scaling: float):
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs: dict[str, Any] = {"scale": scaling}
    if "window_size" in params:  # torch ≥ 2.12: causal is the window (-1, 0)
        kwargs["window_size"] = (-1, 0)
    else:  # torch 2.11
        kwargs["is_causal" if "is_causal" in params else "causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)


def warm_up_cudnn(lengths, heads: int, kv_heads: int, head_dim: int, dtype, device) -> int:
    """Build cuDNN's execution plans (forward and backward) for every padded shape ``lengths`` will reach.

    cuDNN plans once per new shape, on the host, inside the first step that meets it; a timed run that follows
    another over the same data would inherit its plans. Runs one attention forward and backward per distinct
    padded length (with a real length of that bucket, so the tensors have the model's layout); returns how many.
    Does nothing unless the ``cudnn`` backend is chosen.
    """
    import torch

    if _chosen["backend"] != "cudnn":
        return 0
    buckets: dict[int, int] = {}
    for n in lengths:
        if n >= CUDNN_MIN_LENGTH:
            buckets.setdefault(-(-n // CUDNN_PAD), n)
    for n in buckets.values():
        # transformers' q/k/v: [1, T, H, D] projections viewed as [1, H, T, D]
        q, k, v = (
            torch.randn(1, n, h, head_dim, device=device, dtype=dtype).transpose(1, 2).requires_grad_()
            for h in (heads, kv_heads, kv_heads)
        )
        cu = torch.tensor([0, n], dtype=torch.int32, device=device)
        out, _ = packed_attention_forward(None, q, k, v, cu_seq_lens_q=cu, max_length_q=n)
        out.backward(torch.randn_like(out).contiguous())
    return len(buckets)
