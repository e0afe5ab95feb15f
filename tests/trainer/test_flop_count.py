"""The FLOP count behind MFU: the LM head's work only for the tokens that take a loss, tied heads included."""

from __future__ import annotations

import pytest
import torch

from longalign_trainer.train.recipe import model_shape, training_flops


@pytest.mark.parametrize("tied", [False, True])
def test_the_head_is_counted_apart_from_the_layers_tied_or_not(tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    layers_and_norm = sum(p.numel() for p in model.model.layers.parameters()) + model.model.norm.weight.numel()
    shape = model_shape(model)
    assert shape == {"body_params": layers_and_norm, "head_params": 300 * 32, "layers": 2, "hidden": 32}
    lengths = [40, 10]
    every_token = training_flops(shape, lengths, loss_tokens=50)
    assert every_token == 6 * (layers_and_norm + 300 * 32) * 50 + 6 * 2 * 32 * (40**2 + 10**2)  # the classic 6N
    assert every_token - training_flops(shape, lengths, loss_tokens=20) == 6 * 300 * 32 * 30  # 30 prompt tokens
