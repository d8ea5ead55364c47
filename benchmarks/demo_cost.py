"""The demo's `align --nfe 10` (the README's main job) against issue 6's 60 s, its parts side by side.

    python benchmarks/demo_cost.py [--rounds 2] [--passes 60]

1. The host allocator (``resources.reuse_freed_host_memory``): the demo network's forward pass on
   batches of 64 (no gradients, as the teacher, the held-out losses and the verdict run it) and on
   minibatches of 8 with the backward pass (as the Adam steps run it), each in a fresh process
   with glibc's default allocator and with the command line's setting, alternately: ms per sample
   and minor page faults.
2. The README's command in fresh processes, four arms alternately per round: the verdict's first
   look at 128 samples (before 2026-11-29's ninth change) or 64 (the default since), each with
   glibc's default allocator or the command line's setting. Prints every wall time and peak memory
   (``align --json``), the medians and their ratio to the arm that is the code before (first look
   128, default allocator; its verdict is checked at the same 128 samples, with a 99.5% interval
   where that code used 98.3%), and whether the two allocators' artifacts differ in anything but
   their creation time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORWARD = """
import resource, sys, time, torch
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.resources import reuse_freed_host_memory
if sys.argv[1] == "reuse":
    reuse_freed_host_memory()
torch.set_num_threads(2)
net = load_model(None).eps.net
batch, passes, grad = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "grad"
x, t = torch.randn(batch, 1, 28, 28), torch.full((batch,), 500.0, requires_grad=grad)
with torch.set_grad_enabled(grad):
    net(x, t)
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(passes):
        y = net(x, t)
        if grad:
            y.square().sum().backward()
    ms = (time.perf_counter() - start) / passes / batch * 1e3
print(ms, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""
DEFAULT_ALLOCATOR = ("import dpm_align.aligner_core.resources as r; r.reuse_freed_host_memory = lambda: False; "
                     "from dpm_align.cli.main import run; run()")
ARMS = {  # name -> (glibc's default allocator, first look)
    "first look 128, default allocator (before)": (True, 128),
    "first look 128, reused memory": (False, 128),
    "first look 64, default allocator": (True, 64),
    "first look 64, reused memory (now)": (False, 64),
}


def forward(allocator: str, batch: int, passes: int, kind: str) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", FORWARD, allocator, str(batch), str(passes), kind], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1])


def run_align(entry: list[str], first_look: int, out: Path) -> tuple[float, float]:
    """The README's command (one arm): wall seconds and the peak memory it reports (MiB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *entry, "align", "--nfe", "10", "--no-cache", "--out", str(out),
                           "--validation-samples", str(first_look), "--json"], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, json.loads(done.stdout)["peak_memory"]["mib"]


def same_but_created(a: Path, b: Path) -> bool:
    first, second = (json.loads(p.read_text()) for p in (a, b))
    return {k: v for k, v in first.items() if k != "created"} == {k: v for k, v in second.items() if k != "created"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--passes", type=int, default=60)
    args = ap.parse_args()
    for batch, kind in ((64, "nograd"), (8, "grad")):
        for r in range(args.rounds):
            cells = []
            for allocator in ("default", "reuse"):
                ms, faults = forward(allocator, batch, args.passes, kind)
                cells.append(f"{allocator} {ms:.2f} ms/sample, {faults} minor faults")
            print(f"forward{' + backward' if kind == 'grad' else ''}, batch {batch}, round {r + 1}: {'; '.join(cells)}",
                  flush=True)
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k, (arm, (default_allocator, first_look)) in enumerate(ARMS.items()):
                entry = ["-c", DEFAULT_ALLOCATOR] if default_allocator else ["-m", "dpm_align.cli"]
                seconds, mib = run_align(entry, first_look, Path(tmp) / f"{k}.json")
                times[arm].append(seconds)
                print(f"round {r + 1}: {arm}: {seconds:.1f} s, peak memory {mib:.0f} MiB", flush=True)
        for k in (0, 2):  # the same first look, the two allocators
            print(f"artifacts of '{list(ARMS)[k]}' and '{list(ARMS)[k + 1]}' equal but for their creation time: "
                  f"{same_but_created(Path(tmp) / f'{k}.json', Path(tmp) / f'{k + 1}.json')}")
    before = statistics.median(next(iter(times.values())))
    for arm, walls in times.items():
        median = statistics.median(walls)
        print(f"median {arm}: {median:.1f} s (x{median / before:.3f})")


if __name__ == "__main__":
    main()
