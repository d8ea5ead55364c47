"""Do the verdict's intervals hold between disjoint sets of noises? Raw vs delivered end points.

    python benchmarks/kernel_stability.py --model models/zoo/cifar-patch16-diffusers --taus F
        [--samples 2048] [--subset 512] [--seed 7] [--reference-nfe 100] [--threads 2]

Runs the plain and the aligned sampler of artifact F and the verdict's reference (one piece from
t_K to t_0) from the same --samples noises of --seed, then, on each disjoint block of --subset
samples and on all of them, prints the end-point ratio and the kernel distance's relative change
with their 95% intervals (``verdict.py``), computed on the raw end points and on the delivered
ones (clamped to the model's data range, what the verdict compares), and the per-pixel mean
square of each sampler's end points. Intervals that hold their level agree between blocks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dpm_align.aligner_core.api import resolve_plan
from dpm_align.aligner_core.evaluation.compare import paired_trajectories
from dpm_align.aligner_core.evaluation.verdict import kernel_change, mean_ratio_change
from dpm_align.aligner_core.models.loading import load_model


def describe(ends: dict[str, torch.Tensor]) -> str:
    errors = {name: (ends[name] - ends["reference"]).flatten(1).norm(dim=1) for name in ("baseline", "aligned")}
    end = mean_ratio_change(errors["baseline"], errors["aligned"], 0.95)
    kernel = kernel_change(ends["baseline"], ends["aligned"], ends["reference"], 0.95)
    squares = " ".join(f"{name} {float(ends[name].square().mean()):.3f}" for name in ("reference", "baseline", "aligned"))
    return (f"end {end.change:+7.1%} [{end.low:+7.1%}, {end.high:+7.1%}]  kernel {kernel.change:+8.1%} "
            f"[{kernel.low:+8.1%}, {kernel.high:+8.1%}]  mean square: {squares}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--taus", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--subset", type=int, default=512)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--reference-nfe", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    plan, artifact, _ = resolve_plan(model, sampler=None, eta=None, trajectory=None, nfe=None, taus_path=args.taus)
    aligned = (plan.grid, artifact.taus) if artifact.trajectory.fitted else artifact.taus
    chunks: dict[str, list[torch.Tensor]] = {"reference": [], "baseline": [], "aligned": []}
    for states in paired_trajectories(model.eps, plan.baseline_grid, plan.sampler, plan.eta,
                                      {"baseline": None, "aligned": aligned}, model.sample_shape,
                                      num_samples=args.samples, reference_nfe=args.reference_nfe, seed=args.seed,
                                      batch_size=128, ends_only=True):
        for name in chunks:
            chunks[name].append(states[name][-1].cpu())
    raw = {name: torch.cat(c).to(torch.float64) for name, c in chunks.items()}
    print(f"{args.model}, {artifact.key}, {args.samples} noises of seed {args.seed}, "
          f"blocks of {args.subset}; changes aligned vs plain, 95% intervals")
    blocks = [slice(lo, lo + args.subset) for lo in range(0, args.samples, args.subset)] + [slice(0, args.samples)]
    for kind, transform in (("raw", lambda x: x), ("delivered", model.eps.delivered)):
        print(kind)
        for s in blocks:
            ends = {name: transform(x[s]) for name, x in raw.items()}
            print(f"  {s.start:>5}:{s.stop:<5} {describe(ends)}", flush=True)


if __name__ == "__main__":
    main()
