"""Gradient checkpointing of the joint fit: peak memory and time, with and without, side by side.

    python benchmarks/checkpoint_memory.py [--model PATH] [--nfe 10] [--batch-size 8] [--iterations 20] [--rounds 1]

Runs ``dpm-align align --no-validate --candidates taus`` with and without
``--gradient-checkpointing`` alternately, each in a fresh process (as a user would), and prints each
run's peak memory as ``align --json`` reports it (CUDA: torch's peak allocation; CPU: the process's
peak resident set, which includes torch itself) and its wall time, then the ratios of the medians.
Also checks that both give the same taus. ``--model`` defaults to the CIFAR-10 32x32 zoo model.
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


def run(args: argparse.Namespace, checkpointing: bool, out: Path) -> tuple[float, float, list[float]]:
    command = [sys.executable, "-m", "dpm_align.cli", "align", "--model", args.model, "--nfe", str(args.nfe),
               "--batch-size", str(args.batch_size), "--iterations", str(args.iterations), "--candidates", "taus",
               "--no-validate", "--no-cache", "--out", str(out), "--json", "--quiet", "--device", args.device,
               *(["--gradient-checkpointing"] if checkpointing else [])]
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    report = json.loads(done.stdout)
    return report["peak_memory"]["mib"], seconds, report["artifact"]["taus"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/zoo/cifar32-v-short")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    taus: dict[bool, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for checkpointing in (False, True):
                mib, seconds, taus[checkpointing] = run(args, checkpointing, Path(tmp) / f"{r}-{checkpointing}.json")
                results[checkpointing].append((mib, seconds))
                print(f"round {r + 1} checkpointing={str(checkpointing):5s} peak {mib:8.1f} MiB  {seconds:7.1f} s",
                      flush=True)
    memory = {c: statistics.median(m for m, _ in rows) for c, rows in results.items()}
    seconds = {c: statistics.median(s for _, s in rows) for c, rows in results.items()}
    print(f"{args.model} NFE {args.nfe}, Adam minibatch {args.batch_size}, {args.iterations} steps, {args.device}: "
          f"peak memory x{memory[True] / memory[False]:.3f} ({memory[False]:.0f} -> {memory[True]:.0f} MiB), "
          f"time x{seconds[True] / seconds[False]:.2f}; same taus: {taus[True] == taus[False]}")


if __name__ == "__main__":
    main()
