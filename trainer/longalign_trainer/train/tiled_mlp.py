"""The MLP a tile of tokens at a time: its wide intermediate activations never exist for the whole pack.

A Llama-style MLP widens every token to the intermediate width (3.5 × hidden for Llama-3.1-8B) three times
(gate, up, their SwiGLU product): at 1M tokens and 14336 wide, 28 GiB per tensor in bf16, even with every
layer checkpointed, because the layer being recomputed holds them. ``apply(model)`` runs each MLP through
DeepSpeed's ``TiledMLP`` (ALST, arXiv 2506.13996): the forward pass computes tiles of ``hidden`` tokens
without keeping anything but the MLP's input, the backward pass recomputes and backpropagates tile by tile
(telling ZeRO to reduce the weights' gradients after the last tile). The price is one more MLP forward per
layer and step. The MLP's own forward (compiled SwiGLU with ``fused_ops``) runs inside each tile. Under
ZeRO-3 each tile gathers the weights, a collective: the ranks agree on the most tiles any of them needs (one
small all-reduce per MLP call), and a pack is padded with zero rows to a whole number of tiles.
"""

from __future__ import annotations

import functools
import math
import types


def apply(model, tile_tokens: int | None = None) -> int:
    """Route every Llama-style MLP of ``model`` (gate/up/down projections) through tiles of ``tile_tokens``
    tokens (default: the hidden size, as ALST does); returns how many MLPs were tiled. Call after
    ``fused_ops.apply``, whose forward the tiles then run."""
    tile = tile_tokens or model.config.hidden_size
    tiled = 0
    for module in model.modules():
        if all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")):
            untiled = module.forward  # the module's own (or fused_ops') forward, bound
            module.forward = types.MethodType(functools.partial(_tiled_forward, untiled=untiled, tile=tile), module)
            tiled += 1
    return tiled


def _tiled_forward(self, x, *, untiled, tile: int):
    import torch
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    weights = [self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight]
    tokens = x.shape[-2]
    tiles = max(1, math.ceil(tokens / tile))
    if hasattr(self.gate_proj.weight, "ds_id"):  # ZeRO-3 gathers the weights per tile: every rank the same count
        tiles = _most_over_ranks(tiles, x.device)
    padded = -tokens % tiles  # zero rows, so that torch.chunk cuts exactly ``tiles`` tiles (they add nothing)
    if padded:
        x = torch.nn.functional.pad(x, (0, 0, 0, padded))
    out = TiledMLP.apply(lambda _module, part: untiled(part), self, x, tiles, weights)
    return out[..., :tokens, :] if padded else out


def _most_over_ranks(value: int, device) -> int:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    t = torch.tensor(value, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)
