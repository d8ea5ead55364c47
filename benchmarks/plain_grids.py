"""Which plain grid is best for a model? DDIM on the uniform, quadratic and log-SNR grids, paired.

    python benchmarks/plain_grids.py digits8-eps-linear mnist16-v-cosine ... demo [--samples 256] [--nfe 5 10]

For every model (``demo``: the embedded one; ``gmm...``: a mixture spec; other names: ``models/zoo``)
and NFE: the mean end-point L2 of plain DDIM on the uniform grid, and the paired change of the
quadratic and log-SNR grids against it with 95% intervals. All run from the verdict's held-out
noises against one reference (DPM-Solver++(2M), ``--reference-nfe`` evaluations); end points as
delivered (a pixel model's clamped to [-1, 1]).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dpm_align.aligner_core.api import SamplingPlan
from dpm_align.aligner_core.evaluation.verdict import mean_ratio_change
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sampling.trajectory import make_grid
from fit_budget import end_errors, model_path

KINDS = ("quadratic", "logsnr")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--zoo", type=Path, default=Path("models/zoo"))
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--reference-nfe", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        model = load_model(model_path(name, args.zoo))
        for nfe in args.nfe:
            plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", nfe)
            candidates = {"uniform": None}
            for kind in KINDS:  # ddim: one evaluation per step, at the step's start
                grid = make_grid(kind, nfe, model.eps.schedule)
                candidates[kind] = (list(grid), list(grid[:-1]))
            errors = end_errors(model, plan, candidates, args.samples, args.reference_nfe)
            changes = [(k, mean_ratio_change(errors["uniform"], errors[k], 0.95)) for k in KINDS]
            print(f"{name:28s} nfe {nfe:2d}: uniform end L2 {errors['uniform'].mean():.3f}; vs uniform: "
                  + "; ".join(f"{k} {c.change:+.1%} [{c.low:+.1%}, {c.high:+.1%}]" for k, c in changes), flush=True)


if __name__ == "__main__":
    main()
