"""What a command used of the machine: peak memory, reported in ``--json`` and on stderr."""

from __future__ import annotations

import resource
import sys
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict


class PeakMemory(BaseModel):
    """The high-water mark of this process: torch's CUDA allocations on a CUDA device (what a model
    and its activations take), else the host's resident set size (all of the process)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["cuda-allocated", "host-rss"]
    mib: float

    def describe(self) -> str:
        return f"peak memory {self.mib:.0f} MiB ({'CUDA, allocated by torch' if self.kind == 'cuda-allocated' else 'host RSS'})"


def peak_memory(device: torch.device | str) -> PeakMemory:
    device = torch.device(device)
    if device.type == "cuda":
        return PeakMemory(kind="cuda-allocated", mib=torch.cuda.max_memory_allocated(device) / 2**20)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return PeakMemory(kind="host-rss", mib=rss / (2**20 if sys.platform == "darwin" else 2**10))
