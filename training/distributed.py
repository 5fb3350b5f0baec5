"""One process or many: the torchrun environment, the process group, and summed metrics.

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR/PORT); without them this is a
single process and nothing is initialised, so the same command line works both ways. NCCL
needs one GPU per process; on CPU the gloo backend is used. Metrics are sums (loss x images,
correct, images) all-reduced across processes, so every rank computes the same epoch result
and takes the same early-stopping decision without another message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from training.exceptions import ConfigError, DistributedError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among `world_size` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes checkpoints, logs and publishes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def read_environment(env: Mapping[str, str] | None = None) -> tuple[int, int, int, int]:
    """(rank, world_size, local_rank, local_world_size) from torchrun's variables, or a lone process."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError as exc:
        raise DistributedError(f"torchrun variables are not integers: {exc}") from exc
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise DistributedError(f"inconsistent torchrun variables: RANK={rank} WORLD_SIZE={world} "
                               f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}")
    return rank, world, local_rank, local_world


def choose_device(choice: str, local_rank: int = 0) -> torch.device:
    """`auto` takes this process's GPU when there is one, else the CPU."""
    if choice not in DEVICES:
        raise ConfigError(f"--device {choice!r}: expected one of {', '.join(DEVICES)}")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to PyTorch")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"local rank {local_rank} has no GPU: only {count} visible; "
                          f"use --nproc_per_node {count} or fewer")
    return torch.device("cuda", local_rank)


def setup(device_choice: str, timeout_minutes: float = 30.0) -> Context:
    """Join the process group when started by torchrun; pick this process's device."""
    rank, world, local_rank, local_world = read_environment()
    device = choose_device(device_choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"cannot join the {backend} process group as rank {rank}/{world}: {exc}") from exc
    return Context(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world, device=device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sums(values: Sequence[float], ctx: Context) -> list[float]:
    """Element-wise sums over all processes (float64, so image counts stay exact)."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if ctx.distributed:
        # NCCL reduces GPU tensors only; gloo takes CPU tensors.
        tensor = tensor.to(ctx.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.cpu()]


def per_process_batch(global_batch: int, world_size: int) -> int:
    """Split `--batch-size` (the global batch) evenly: the effective batch and hence the learning
    rate's meaning stay the same whether one process or eight run."""
    if global_batch < 1:
        raise ConfigError(f"--batch-size must be positive, not {global_batch}")
    if global_batch % world_size:
        raise ConfigError(f"--batch-size {global_batch} is the global batch and must divide evenly "
                          f"among {world_size} processes")
    return global_batch // world_size
