"""Baseline vs aligned for each demo model x sampler x trajectory x NFE x objective, in one run.

    python benchmarks/results_matrix.py --out results.jsonl [--budget-s 330] [--samples 512]
        [--models demo cifar10 gmm] [--nfe 5 10 20] [--device auto]

Each row: fit time, then self-validation metrics on held-out seeds (end-point L2 to a 1000-step
DDIM reference from the same noise, pixel Fréchet distance to the reference samples), baseline
and aligned side by side. Rows are appended to --out as they finish (JSON lines), so a run cut
short by --budget-s keeps what it measured. Feeds docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from dpm_align.aligner_core.api import SamplingPlan
from dpm_align.aligner_core.fit import fit_taus, resolve_config
from dpm_align.aligner_core.loading import load_model, resolve_device
from dpm_align.aligner_core.validation import validate

MODELS = {"demo": None, "cifar10": "models/cifar10/model.safetensors", "gmm": "gmm"}
# name -> (preset, overrides); "official-60" is the paper's optimizer with 60 iterations per step.
OBJECTIVES = {
    "paper-golden": ("default", {}),
    "teacher-golden": ("default", {"objective": "teacher"}),
    "paper-official-60": ("official", {"iterations": 60}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--samplers", nargs="+", default=["ddim", "ddpm"])
    ap.add_argument("--trajectories", nargs="+", default=["uniform", "quadratic"])
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--reference-nfe", type=int, default=1000)
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    start = time.time()
    models = {name: load_model(MODELS[name], device=device) for name in args.models}
    # in the order given: sampler, then NFE, trajectory, model, objective
    grid = itertools.product(args.samplers, args.nfe, args.trajectories, args.models, args.objectives)
    with args.out.open("a") as sink:
        for sampler, nfe, trajectory, name, objective in grid:
            if time.time() - start > args.budget_s:
                print(f"budget of {args.budget_s:.0f}s reached; stopping", flush=True)
                break
            preset, overrides = OBJECTIVES[objective]
            if sampler != "ddim" and overrides.get("objective") == "teacher":
                continue
            model = models[name]
            plan = SamplingPlan.make(model.eps.schedule, sampler, None, trajectory, nfe)
            config = resolve_config(preset, **overrides)
            t0 = time.time()
            fitted = fit_taus(model.eps, model.eps.schedule, plan.grid, plan.sampler, plan.eta, config,
                              model.sample_shape, seed=0, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            fit_s = time.time() - t0
            v = validate(model.eps, plan.grid, plan.sampler, plan.eta, fitted.taus, model.sample_shape,
                         num_samples=args.samples, reference_nfe=args.reference_nfe, batch_size=256, seed=0, device=device)
            row = {"model": name, "sampler": sampler, "trajectory": trajectory, "nfe": nfe, "objective": objective,
                   "fit_s": round(fit_s, 2), "device": device.type, "baseline": v.baseline, "aligned": v.aligned,
                   "better": v.better, "samples": v.num_samples, "reference_nfe": v.reference_nfe,
                   "taus_minus_t": [round(a - b, 2) for a, b in zip(fitted.taus, plan.grid)]}
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            ratios = {m: v.aligned[m] / v.baseline[m] for m in v.metrics}
            print(f"{name:8} {sampler:5} {trajectory:9} nfe={nfe:<3} {objective:18} fit {fit_s:6.1f}s  "
                  f"L2 {v.baseline['end_l2']:.3f}->{v.aligned['end_l2']:.3f} ({ratios['end_l2']:.3f})  "
                  f"FD {v.baseline['frechet_pixel']:.3f}->{v.aligned['frechet_pixel']:.3f} ({ratios['frechet_pixel']:.3f})",
                  flush=True)


if __name__ == "__main__":
    main()
