"""Demo-model benchmark: align time on CPU and trajectory gap, baseline vs aligned, in one run.

    python benchmarks/bench_demo.py [--threads 2] [--nfe 5 10 20] [--samples 128] [--json FILE]

For each NFE (DDIM, uniform trajectory, default preset, seed 0): the wall time of fitting, and the
end-point L2 distance to a 1000-step DDIM reference from the same noise on held-out seeds,
baseline vs aligned, side by side. Budget from the issue: NFE=10 fit <= 60 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dpm_align.aligner_core.api import SamplingPlan, align, trajectory_gap
from dpm_align.aligner_core.fitting.fit import resolve_config
from dpm_align.aligner_core.models.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--trajectory", default="uniform")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(None)
    rows = []
    print(f"demo model, ddim {args.trajectory}, {args.threads} threads, {args.samples} held-out samples (seed 1000+)")
    print(f"{'nfe':>4} {'fit s':>7} {'end L2 base':>12} {'end L2 aligned':>15} {'ratio':>7}")
    for nfe in args.nfe:
        plan = SamplingPlan.make(model.eps.schedule, "ddim", None, args.trajectory, nfe)
        start = time.perf_counter()
        artifact = align(model, plan, resolve_config("default", sampler=plan.sampler, nfe=plan.nfe), seed=0)
        seconds = time.perf_counter() - start
        gap = trajectory_gap(model, plan, artifact.taus, num_samples=args.samples, seed=1000, reference_nfe=1000)
        rows.append({"nfe": nfe, "fit_seconds": round(seconds, 2), "end_gap_baseline": gap.end_gap_baseline,
                     "end_gap_aligned": gap.end_gap_aligned, "ratio": gap.end_gap_ratio, "taus": artifact.taus})
        print(f"{nfe:>4} {seconds:>7.1f} {gap.end_gap_baseline:>12.4f} {gap.end_gap_aligned:>15.4f} {gap.end_gap_ratio:>7.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
