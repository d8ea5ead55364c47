"""What a command used of the machine (peak memory, reported in ``--json`` and on stderr), and how
the host's memory allocator is set for it."""

from __future__ import annotations

import ctypes
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


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
HEAP_BLOCKS_UP_TO = 32 * 2**20  # glibc's largest mmap threshold on 64-bit systems
NEVER_TRIM = 2**31 - 1


def reuse_freed_host_memory() -> bool:
    """Let glibc keep freed host memory for the next allocation instead of handing it back to the
    kernel: blocks up to 32 MiB come from the heap and the heap is never trimmed. By default glibc
    maps larger blocks afresh and trims the heap's top after frees, so on the CPU the activations
    of every batch of 64 samples are page-faulted in anew: 60 forward passes of the demo network
    on batches of 64 took 1.25-1.70 million minor faults and 1.77-1.97 ms per sample, against
    11-16 thousand and 1.27-1.54 ms with this setting (``benchmarks/demo_cost.py``, 4 rounds). The
    results are the same bit for bit. Freed memory stays with the process: the demo's ``align``
    peaked at 622 and 645 MiB, against 659 and 608 MiB without (the same benchmark, one round). A
    process-wide setting, so the command line sets it, not the library. False (nothing set) where
    the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
