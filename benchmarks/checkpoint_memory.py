"""Gradient checkpointing of the joint fit: peak memory and time, with and without, side by side.

    python benchmarks/checkpoint_memory.py [--model PATH] [--nfe 10] [--batch-size 8] [--iterations 20] [--rounds 1]
        [--prompt TEXT ...] [--guidance-scale W] [--precision fp32] [--set key=value ...]

Fits the taus alone (the joint objective, no verdict: what ``align --no-validate --candidates taus``
fits) with and without ``checkpointing`` alternately, each in a fresh process, and prints each
run's peak memory (CUDA: torch's peak allocation; CPU: the process's peak resident set, which
includes torch, the model and its loading) and the fit's wall time, then the ratios of the medians.
Also checks that both give the same taus. ``--model`` defaults to the CIFAR-10 32x32 zoo model.
``--set`` overrides further ``FitConfig`` fields (``teacher_nfe=2``, ``holdout=1``,
``num_samples=1``): at Stable Diffusion's size on a CPU, a fit with the default teacher and
held-out set takes hours, while one Adam step shows the memory of the backward pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> None:
    import torch

    from fit_budget import config_overrides

    from dpm_align.aligner_core.api import SamplingPlan
    from dpm_align.aligner_core.fitting.fit import fit_taus, resolve_config
    from dpm_align.aligner_core.models.loading import load_model
    from dpm_align.aligner_core.resources import peak_memory

    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, prompts=args.prompt or None, guidance_scale=args.guidance_scale,
                       precision=args.precision)
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", args.nfe)
    overrides = config_overrides(args.set)
    config = resolve_config("joint", iterations=args.iterations, batch_size=args.batch_size).model_copy(
        update={"candidates": ("taus",), "checkpointing": args.checkpointing, **overrides})
    start = time.perf_counter()
    result = fit_taus(model.eps, model.eps.schedule, plan.grid, "ddim", 0.0, config, model.sample_shape,
                      device=args.device)
    seconds = time.perf_counter() - start
    print(json.dumps({"mib": peak_memory(args.device).mib, "seconds": seconds, "taus": list(result.taus)}))


def run(args: argparse.Namespace, checkpointing: bool) -> tuple[float, float, list[float]]:
    command = [sys.executable, __file__, "--child", *(["--checkpointing"] if checkpointing else [])]
    for name, value in vars(args).items():
        if name in ("child", "checkpointing", "rounds") or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            command += [f"--{name.replace('_', '-')}", str(item)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    report = json.loads(done.stdout.splitlines()[-1])
    return report["mib"], report["seconds"], report["taus"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/zoo/cifar32-v-short")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", action="append", help="text-conditioned pipelines: a prompt (repeatable)")
    ap.add_argument("--guidance-scale", type=float)
    ap.add_argument("--precision")
    ap.add_argument("--set", action="append", default=[], help="a further FitConfig field, key=value (JSON value)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    taus: dict[bool, list[float]] = {}
    for r in range(args.rounds):
        for checkpointing in (False, True):
            mib, seconds, taus[checkpointing] = run(args, checkpointing)
            results[checkpointing].append((mib, seconds))
            print(f"round {r + 1} checkpointing={str(checkpointing):5s} peak {mib:8.1f} MiB  fit {seconds:7.1f} s",
                  flush=True)
    memory = {c: statistics.median(m for m, _ in rows) for c, rows in results.items()}
    seconds = {c: statistics.median(s for _, s in rows) for c, rows in results.items()}
    print(f"{args.model} NFE {args.nfe}, Adam minibatch {args.batch_size}, {args.iterations} steps, {args.device}: "
          f"peak memory x{memory[True] / memory[False]:.3f} ({memory[False]:.0f} -> {memory[True]:.0f} MiB), "
          f"time x{seconds[True] / seconds[False]:.2f}; same taus: {taus[True] == taus[False]}")


if __name__ == "__main__":
    main()
