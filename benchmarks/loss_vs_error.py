"""Does the paper's per-step loss point at the tau that minimizes the true per-step error?

    python benchmarks/loss_vs_error.py --model demo [--nfe 10] [--trajectory uniform] [--samples 64]

For every step t_i -> t_{i-1} of a DDIM grid, on states x_{t_i} reached by the plain sampler from
fixed noise, tau is swept over t_i + k/4 (t_i - t_{i-1}), k = -2..2, and two numbers are printed
per tau (means over the samples):
- ``paper``: the paper's loss, Eq. 5, || eps(x_{t_{i-1}}(tau), t_{i-1}) - eps(x_{t_i}, t_i) ||^2 / d;
- ``true``:  the per-step error, || x_{t_{i-1}}(tau) - x^teacher_{t_{i-1}} ||^2 / d, the teacher
  being 50 DDIM sub-steps of the same network from the same x_{t_i} (for the exact GMM model,
  the exact ODE up to discretization).
A step where the two minimizers disagree is one where minimizing Eq. 5 moves tau the wrong way.
Output: one line per step, and a JSON document (--out) with every value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dpm_align.aligner_core.api import SamplingPlan
from dpm_align.aligner_core.evaluation.compare import refine_grid
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sampling.samplers import StepContext, ddim_step, run_sampler

MODELS = {"demo": None, "cifar10": "models/cifar10/model.safetensors", "gmm": "gmm"}
OFFSETS = (-0.5, -0.25, 0.0, 0.25, 0.5)  # tau - t_i in units of the step width


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=list(MODELS), default="demo")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--trajectory", default="uniform")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model = load_model(MODELS[args.model])
    eps, schedule = model.eps, model.eps.schedule
    plan = SamplingPlan.make(schedule, "ddim", None, args.trajectory, args.nfe)
    ctx = StepContext(schedule)
    x = torch.randn((args.samples, *model.sample_shape), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rows = []
    with torch.no_grad():
        for i, (t, s) in enumerate(zip(plan.grid[:-1], plan.grid[1:])):
            teacher = run_sampler("ddim", eps, x, refine_grid([t, s], 50)[0], None, ctx)
            target = eps(x, t)
            row = {"step": i + 1, "t": t, "s": s, "offsets": list(OFFSETS), "paper": [], "true": []}
            for offset in OFFSETS:
                tau = max(0.0, t + offset * (t - s))
                x_s = ddim_step(eps, x, t, s, [tau], ctx)
                row["paper"].append(float((eps(x_s, s) - target).square().mean()))
                row["true"].append(float((x_s - teacher).square().mean()))
            best_paper = OFFSETS[min(range(len(OFFSETS)), key=row["paper"].__getitem__)]
            best_true = OFFSETS[min(range(len(OFFSETS)), key=row["true"].__getitem__)]
            row.update(argmin_paper=best_paper, argmin_true=best_true)
            rows.append(row)
            print(f"step {i + 1:2} t={t:6.1f}->{s:6.1f}  argmin paper {best_paper:+.2f}  argmin true {best_true:+.2f}  "
                  f"{'agree' if best_paper == best_true else 'DISAGREE'}  "
                  f"true error at plain tau {row['true'][2]:.3e}, at paper's argmin "
                  f"{row['true'][OFFSETS.index(best_paper)]:.3e}", flush=True)
            x = ddim_step(eps, x, t, s, [t], ctx)  # the plain sampler's next state
    agree = sum(r["argmin_paper"] == r["argmin_true"] for r in rows)
    print(f"{args.model} ddim {args.trajectory} nfe={args.nfe}: the minimizers agree at {agree} of {len(rows)} steps")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "nfe": args.nfe, "trajectory": args.trajectory,
                                        "samples": args.samples, "steps": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
