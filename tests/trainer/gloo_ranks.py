"""Two real ranks on this machine: ``worker(rank, port, *args, out)`` in 2 processes that meet at a free local
port (each sets up its gloo process group there); what they put into ``out`` comes back."""

from __future__ import annotations

from collections.abc import Callable

import torch.multiprocessing as mp

from longalign_trainer.vllm_server import free_port


def run_two_ranks(worker: Callable, *args) -> dict:
    """Run ``worker`` as ranks 0 and 1 and return the dict they filled."""
    out = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), *args, out), nprocs=2, join=True)
    return dict(out)
