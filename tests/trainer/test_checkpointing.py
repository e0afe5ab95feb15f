"""Selective checkpointing changes what is kept for the backward pass, never the gradients."""

from __future__ import annotations

import pytest
import torch

from longalign_trainer.train import attention, checkpointing, fused_ops, tiled_mlp
from longalign_trainer.train.packing import build_pack


def pack_gradients(
    tiny_model,
    keep: str | None,
    layers: int | None = None,
    offload: bool = False,
    tile: int | None = None,
    whole_layers: bool = False,
) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss of one pack and every parameter's gradient, with the given checkpointing and MLP tiling (and
    with ``whole_layers``, fused_ops' compiled layers)."""
    from transformers import AutoModelForCausalLM

    attention.register("sdpa_block_diagonal", "cpu")
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention.NAME, dtype=torch.float32)
    model.train()
    if keep is not None:
        checkpointing.enable(model, keep, layers, offload)
        offloaded = [
            layer._gradient_checkpointing_func is checkpointing.offloaded_checkpoint
            for layer in checkpointing.decoder_layers(model)
        ]
        assert offloaded == [offload] * model.config.num_hidden_layers
    if tile is not None:
        assert tiled_mlp.apply(model, tile) == model.config.num_hidden_layers
    if whole_layers:
        fused_ops.apply(model, whole_layers=True)
        compiled = [getattr(m, "_compiled_call_impl", None) is not None for m in checkpointing.decoder_layers(model)]
        checkpointed = [m.gradient_checkpointing for m in checkpointing.decoder_layers(model)]
        assert compiled == [not c for c in checkpointed]
    torch.manual_seed(0)
    pack = build_pack([(s, s) for s in (torch.randint(10, 4000, (n,)).tolist() for n in (30, 9, 51))])
    loss = model(**pack.as_model_inputs()).logits.square().mean()
    loss.backward()
    return float(loss.detach()), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("keep", checkpointing.KEEPS)
def test_gradients_equal_those_without_checkpointing(tiny_model, keep):
    (_, plain), (_, checkpointed) = pack_gradients(tiny_model, None), pack_gradients(tiny_model, keep)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "keep,offload,tile",
    [("nothing", True, None), (None, False, 16), ("nothing", False, 16), ("nothing", True, 16)],
    ids=["offloaded-checkpoints", "tiled-mlp", "tiled-mlp-checkpointed", "tiled-mlp-offloaded"],
)
def test_offloaded_checkpoints_and_tiled_mlp_compute_the_plain_loss_and_gradients(tiny_model, keep, offload, tile):
    """Checkpoints kept in CPU memory, and the MLP in tiles of 16 tokens (a 90-token pack: 6 tiles, the last
    one shorter), recomputed in the backward pass: the loss and every gradient of the plain computation."""
    loss, plain = pack_gradients(tiny_model, None)
    got_loss, got = pack_gradients(tiny_model, keep, offload=offload, tile=tile)
    assert got_loss == pytest.approx(loss, rel=1e-6)
    for name, grad in plain.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_whole_layers_compute_the_plain_loss_and_gradients_and_leave_checkpointed_layers_be(
    tiny_model, monkeypatch
):
    """fused_ops' ``whole_layers``: every layer that is not checkpointed runs through torch.compile (Inductor, as on
    GPUs) with the packed attention outside its graph; a checkpointed layer keeps the per-module kernels (run
    eagerly here). The pack's loss and every gradient are those of the plain model."""
    monkeypatch.setattr(fused_ops, "compiled", lambda fn: fn)
    loss, plain = pack_gradients(tiny_model, None)
    got_loss, got = pack_gradients(tiny_model, "nothing", layers=1, whole_layers=True)  # the first checkpointed
    assert got_loss == pytest.approx(loss, rel=1e-5)
    for name, grad in plain.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "settings, layers",
    [
        ({}, 8),
        ({"checkpoint_layers": 2}, 6),
        ({"checkpoint_layers": None}, 0),  # every layer checkpointed
        ({"zero_stage": 3}, 0),
        ({"cuda": False}, 0),
        ({"compile_layers": False}, 0),
        ({"tiled_mlp": True}, 0),
        ({"gradient_checkpointing": False, "checkpoint_layers": None}, 8),
    ],
)
def test_the_layers_compiled_whole_are_those_not_checkpointed_where_compiling_applies(settings, layers):
    from types import SimpleNamespace

    from longalign_trainer.train.config import TrainConfig
    from longalign_trainer.train.recipe import Recipe

    cfg_keys = {"compile_layers", "tiled_mlp", "gradient_checkpointing"}
    cfg = TrainConfig.model_validate(
        {"model_path": "m", "data": [{"path": "a.jsonl"}], "output_dir": "o"}
        | {k: v for k, v in settings.items() if k in cfg_keys}
    )
    state = {"cuda": True, "zero_stage": 2, "checkpoint_layers": 0} | {
        k: v for k, v in settings.items() if k not in cfg_keys
    }
    assert Recipe._compiled_layers(SimpleNamespace(cfg=cfg, **state), 8) == layers


@pytest.mark.parametrize("elements", [1, 90 * 64, 3 << 29, (1 << 31) + 4097])
def test_offloaded_checkpoints_are_pinned_in_power_of_two_pieces_that_cover_the_tensor_exactly(elements):
    """torch's pinned allocator rounds each allocation up to a power of two: pieces of such sizes waste nothing
    (3 << 29 bf16 values, a Llama-3.1-8B layer's input at 384k tokens: 2 GiB + 1 GiB, not 4 GiB)."""
    pieces = checkpointing.pinned_pieces(elements)
    assert all(n & (n - 1) == 0 for _, n in pieces)
    assert [start for start, _ in pieces] == [sum(n for _, n in pieces[:k]) for k in range(len(pieces))]
    assert sum(n for _, n in pieces) == elements
    assert len(pieces) == bin(elements).count("1")


def test_offloaded_checkpoints_refuse_selective_checkpointing(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with pytest.raises(ValueError, match="offload_checkpoints: recomputes every layer in full"):
        checkpointing.enable(model, "matmuls", offload=True)


def test_checkpoint_layers_checkpoints_the_first_n_only(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    layers = checkpointing.decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers >= 2
    assert checkpointing.enable(model, "matmuls", 1) == 1
    assert [layer.gradient_checkpointing for layer in layers] == [True] + [False] * (len(layers) - 1)
    (_, plain), (_, partial) = pack_gradients(tiny_model, None), pack_gradients(tiny_model, "matmuls", 1)
    for name, grad in plain.items():
        torch.testing.assert_close(partial[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_matmuls_policy_keeps_every_projection_but_down():
    from torch.utils.checkpoint import CheckpointPolicy

    policy, mm = checkpointing._policy, torch.ops.aten.mm.default
    x, h = torch.empty(8, 16), torch.empty(8, 48)  # activations of hidden 16, MLP width 48
    q, kv, gate_up, down = torch.empty(16, 16), torch.empty(16, 4), torch.empty(16, 48), torch.empty(48, 16)
    for a, w in ((x, q), (x, kv), (x, gate_up)):
        assert policy(None, mm, a, w, mlp_width=48, all_matmuls=True) == CheckpointPolicy.MUST_SAVE
    assert policy(None, mm, h, down, mlp_width=48, all_matmuls=True) == CheckpointPolicy.PREFER_RECOMPUTE
    assert (
        policy(None, torch.ops.aten.mul.Tensor, x, x, mlp_width=48, all_matmuls=True)
        == CheckpointPolicy.PREFER_RECOMPUTE
    )


def test_policy_keeps_attention_and_mlp_projections_only():
    from torch.utils.checkpoint import CheckpointPolicy

    x, w_mlp, w_attn = torch.empty(8, 16), torch.empty(16, 48), torch.empty(16, 16)
    policy = checkpointing._policy
    assert policy(None, torch.ops.aten._scaled_dot_product_cudnn_attention.default) == CheckpointPolicy.MUST_SAVE
    assert policy(None, torch.ops.aten.mm.default, x, w_mlp, mlp_width=48) == CheckpointPolicy.MUST_SAVE
    assert policy(None, torch.ops.aten.mm.default, x, w_attn, mlp_width=48) == CheckpointPolicy.PREFER_RECOMPUTE
    assert policy(None, torch.ops.aten.mm.default, x, w_mlp) == CheckpointPolicy.PREFER_RECOMPUTE
    assert policy(None, torch.ops.aten.mul.Tensor, x, x) == CheckpointPolicy.PREFER_RECOMPUTE


def test_fused_ops_compute_what_the_llama_modules_compute():
    """The pointwise functions fused_ops compiles on GPUs, run eagerly: the same numbers as transformers' modules."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    from longalign_trainer.train import fused_ops

    torch.manual_seed(4)
    x = torch.randn(2, 5, 16)
    norm = LlamaRMSNorm(16, eps=1e-5)
    norm.weight.data.normal_()
    torch.testing.assert_close(fused_ops.rms_norm(x, norm.weight, norm.variance_epsilon), norm(x))
    mlp = LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=24, num_attention_heads=2, hidden_act="silu"))
    torch.testing.assert_close(mlp.down_proj(fused_ops.silu_mul(mlp.gate_proj(x), mlp.up_proj(x))), mlp(x))


def test_fused_rotary_runs_only_in_the_patched_model_and_changes_nothing(monkeypatch):
    """fused_ops routes Llama's rotary embedding through ``rotary`` (compiled on GPUs; recorded here) inside the
    model it patched only: another model of the same class in the process keeps transformers' own function,
    and both compute the same logits."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    from longalign_trainer.train import fused_ops

    calls = []

    def recording(fn):
        def run(*args):
            calls.append(fn.__name__)
            return fn(*args)

        return run

    monkeypatch.setattr(fused_ops, "compiled", recording)
    transformers_rotary = modeling_llama.apply_rotary_pos_emb
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", transformers_rotary)  # restored after the test
    torch.manual_seed(5)
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    patched = LlamaForCausalLM(cfg).eval()
    plain = copy.deepcopy(patched)
    assert fused_ops.apply(patched) == 4 * cfg.num_hidden_layers + 1  # attention, MLP, 2 norms; the final norm
    ids = torch.randint(0, 100, (1, 33))
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
        assert "rotary" not in calls
        got = patched(input_ids=ids).logits
    assert calls.count("rotary") == cfg.num_hidden_layers
    torch.testing.assert_close(got, expected)
    q, k, cos, sin = torch.randn(1, 4, 7, 16), torch.randn(1, 2, 7, 16), torch.randn(1, 7, 16), torch.randn(1, 7, 16)
    for mine, theirs in zip(fused_ops.rotary(q, k, cos, sin), transformers_rotary(q, k, cos, sin), strict=True):
        torch.testing.assert_close(mine, theirs)
