"""Does a joint fit's gain hold on fresh noise? Fit (seed 0) on one model, then compare the fitted
and the plain DDIM end points on 256 fresh noises (seed 999) against DPM-Solver++(2M) at 100
evaluations: mean L2 ratio, median ratio, share of samples better, mean squares.

    python benchmarks/fresh_noise_check.py models/zoo/cifar-patch16-diffusers uniform 5 '{}' '{"norm_weight": 1}'

Each JSON argument is a set of overrides of the default fit settings (``resolve_config``).
"""

from __future__ import annotations

import json
import sys

import torch

from dpm_align.aligner_core.api import SamplingPlan
from dpm_align.aligner_core.evaluation.compare import reference_grid, reference_solve
from dpm_align.aligner_core.fitting.fit import fit_joint, resolve_config
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sampling.samplers import StepContext, run_sampler


def main() -> None:
    torch.set_num_threads(1)
    path, trajectory, nfe = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = load_model(path)
    schedule = model.eps.schedule
    plan = SamplingPlan.make(schedule, "ddim", None, trajectory, nfe)
    ctx = StepContext(schedule, 0.0)
    x = torch.randn((256, *model.sample_shape), generator=torch.Generator().manual_seed(999), dtype=torch.float64)
    fine, _ = reference_grid([plan.grid[0], plan.grid[-1]], 100, schedule)

    def run(grid, times) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([run_sampler("ddim", model.eps, b, list(grid), list(times), ctx) for b in x.split(64)])

    with torch.no_grad():
        ref = torch.cat([reference_solve(model.eps, b, fine, ctx) for b in x.split(64)])
    plain = run(plan.grid, plan.eval_times)
    d_plain = (plain - ref).flatten(1).norm(dim=1)
    print(f"plain: mean L2 {float(d_plain.mean()):.4f}, median {float(d_plain.median()):.4f}", flush=True)
    for overrides in map(json.loads, sys.argv[4:]):
        result = fit_joint(model.eps, schedule, plan.grid, "ddim", resolve_config("default", **overrides),
                           model.sample_shape, seed=0)
        out = run(result.grid or plan.grid, result.taus)
        d = (out - ref).flatten(1).norm(dim=1)
        print(json.dumps({"overrides": overrides, "winner": result.candidate,
                          "mean_ratio": round(float(d.mean() / d_plain.mean()), 4),
                          "median_ratio": round(float(d.median() / d_plain.median()), 4),
                          "share_better": round(float((d < d_plain).double().mean()), 3),
                          "mean_square": [round(float(v.square().mean()), 4) for v in (out, plain, ref)]}), flush=True)


if __name__ == "__main__":
    main()
