"""Multi-process training helpers for ``torchrun`` (gloo on CPU, nccl on GPU); outside ``torchrun`` (no
``WORLD_SIZE`` in the environment) everything here is a no-op for one process."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: torch.device) -> Context:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Context()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    reduce_device = torch.device("cuda", local) if device.type == "cuda" else torch.device("cpu")
    return Context(dist.get_rank(), dist.get_world_size(), reduce_device)


def teardown(ctx: Context) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(ctx: Context, values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 tensor over processes (identity for one process)."""
    if ctx.active:
        reduced = values.to(ctx.device, copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(values.device)
    return values


def all_max(ctx: Context, value: float) -> float:
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()
