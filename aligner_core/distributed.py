"""torch.distributed for ``torchrun``: one process per rank, work split by batch, rank 0 reports.

``torchrun --nproc_per_node N -m dpm_align.cli sample ...`` sets WORLD_SIZE, RANK, LOCAL_RANK and the
rendezvous address; ``World.start`` then joins the process group (NCCL on CUDA, gloo on CPU). Work
is split by *global batch*: batch b (samples b*B .. b*B+B-1 for batch size B) goes to rank
b mod N, so every batch holds the same samples whatever N is and the network sees exactly the
batches of a one-process run. Without WORLD_SIZE > 1 everything here is a no-op (rank 0 of 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import UsageError


def refuse_world(command: str) -> None:
    """``command`` runs in one process only: refuse a torchrun launch (WORLD_SIZE > 1) before any work."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(f"{command} does not run on torchrun yet (every rank would do the same work and write the "
                         f"same files); run it as one process: dpm-align {command} ...")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: torch.device) -> tuple["World", torch.device]:
        """Join the process group that torchrun describes (if WORLD_SIZE > 1) and return the world
        with this rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls(), device
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise UsageError(f"torchrun started local rank {local} but only {torch.cuda.device_count()} CUDA "
                                 "device(s) are visible; lower --nproc_per_node")
            device = torch.device("cuda", local if device.index is None else device.index)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size()), device

    def batches(self, count: int) -> range:
        """The global batch numbers of this rank (b = rank, rank + size, ...)."""
        return range(self.rank, count, self.size)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` (picklable) on rank 0, in rank order; None on the other ranks."""
        if self.size == 1:
            return [value]
        out = [None] * self.size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()
