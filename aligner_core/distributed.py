"""torch.distributed for ``torchrun``: one process per rank, work split by batch, rank 0 reports.

``torchrun --nproc_per_node N -m dpm_align.cli sample|eval|align ...`` sets WORLD_SIZE, RANK, LOCAL_RANK and the
rendezvous address; ``World.start`` then joins the process group (NCCL on CUDA, gloo on CPU). Work
is split by *global batch*: batch b (samples b*B .. b*B+B-1 for batch size B) goes to rank
b mod N, so every batch holds the same samples whatever N is and the network sees exactly the
batches of a one-process run. Without WORLD_SIZE > 1 everything here is a no-op (rank 0 of 1). ``align`` also splits each Adam minibatch over the ranks and sums the gradients
(``all_reduce``), so every rank takes the same optimizer steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import UsageError


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

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable) on every rank, in rank order."""
        if self.size == 1:
            return [value]
        out = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks, in place (and returned)."""
        if self.size > 1:
            dist.all_reduce(tensor)
        return tensor

    def all_gather_batches(self, mine: list[tuple[int, Any]]) -> list[Any]:
        """Every rank's (global batch number, value) pairs, on every rank: the values in batch order."""
        pairs = [pair for part in self.all_gather(mine) for pair in part]
        return [value for _, value in sorted(pairs, key=lambda item: item[0])]

    def sum(self, value: float) -> float:
        """The sum of a number over the ranks."""
        if self.size == 1:
            return value
        return float(sum(self.all_gather(float(value))))

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self, *, wait: bool = True) -> None:
        """Leave the process group. ``wait``: first wait for every rank, so that no rank tears its
        connections down while another still works. Not after an error, when the other ranks may
        never arrive. (A rare gloo abort at exit, after this, is avoided by the CLI leaving a rank
        with ``os._exit``: ``cli.main.run``.)"""
        if self.size > 1 and dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()
