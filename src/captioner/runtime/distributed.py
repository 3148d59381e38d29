"""torchrun DDP set-up in one place, in the shape of torchvision's references ``utils.init_distributed_mode``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank, and the device it should use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set); NCCL on CUDA, gloo on CPU."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    )
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


_stores: list[dist.TCPStore] = []  # kept open: without torchrun's agent, rank 0's store serves the others


def same_on_every_rank(key: str, make: Callable[[], str]) -> str:
    """``make()`` run once, on rank 0, and its result on every rank of the launch; ``make()`` when not
    launched by torchrun. Works before the process group exists (Hydra picks the run folder first).

    The value travels through the launch's TCP store at MASTER_ADDR:MASTER_PORT: torchrun's agent
    serves it; otherwise rank 0 starts it multi-tenant, so ``init_process_group`` later shares it.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return make()
    rank = int(os.environ["RANK"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=rank == 0 and not agent,
        multi_tenant=True,
        wait_for_workers=False,
        timeout=timedelta(minutes=10),
    )
    _stores.append(store)
    # an elastic restart starts the workers again: a new value per restart
    key = f"captioner/{key}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if rank == 0:
        store.set(key, make())
    return store.get(key).decode()


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """This rank's device: under DDP on CUDA, the GPU of its local rank."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` on every rank (a list of one element when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0, in rank order; None on the other ranks."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a scalar over ranks (for logging losses)."""
    values = gather_objects(float(value), info)
    return sum(values) / len(values)


def cleanup(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


SINGLE = DistInfo()  # the non-distributed default
