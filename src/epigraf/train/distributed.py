"""Multi-process training under ``torchrun``: gloo on CPU, NCCL on GPU, any number of nodes.

No DDP wrapper (as the original): parameters are broadcast once from rank 0, gradients are averaged
with one all-reduce over a flattened buffer per optimiser step, so every rank applies the same update.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from epigraf.devices import parse_device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int) -> torch.device:
    """``--device`` for this process: a bare ``cuda`` (or ``auto`` on a GPU machine) is the local rank's GPU."""
    try:
        device = parse_device(name)
    except ValueError as err:
        raise ValueError(f"--device {err}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def setup(device_name: str) -> DistEnv:
    """Join the process group that ``torchrun`` describes in the environment (or run alone)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistEnv(rank, world_size, device)


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, env: DistEnv) -> None:
    """Make every rank hold rank 0's parameters and buffers."""
    if env.enabled:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(params: list[nn.Parameter], env: DistEnv) -> None:
    """Average the gradients of ``params`` over ranks. Parameters without a gradient (the same ones on every rank:
    the ranks run the same graph) keep none, so the optimiser skips them, as the original's does."""
    if not env.enabled:
        return
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p)
        offset += n


def all_reduce_mean(tensor: Tensor, env: DistEnv) -> Tensor:
    """Mean of ``tensor`` over ranks (a copy)."""
    out = tensor.detach().clone()
    if env.enabled:
        dist.all_reduce(out)
        out /= env.world_size
    return out


def all_gather_cat(tensor: Tensor, env: DistEnv) -> Tensor:
    """Concatenate equally shaped ``tensor``s [n, ...] of all ranks along dim 0 → [world·n, ...]."""
    if not env.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(env.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
