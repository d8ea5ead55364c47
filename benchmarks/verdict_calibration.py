"""The verdict's error rates on the exact Gaussian mixture, with a bound on the false-accept rate.

    python benchmarks/verdict_calibration.py [--model gmm:dim=16,components=4,seed=3] [--nfe 5 10]
        [--trajectories uniform quadratic] [--directions 16] [--scales 0.01 0.03 0.1 0.3] [--repeats 3]
        [--samples 64 512] [--reference-nfe 100] [--truth-samples 2048] [--threads 2]

Per grid: tau sets perturbed around the plain times (``calibration.perturbed_taus``), each one's
truth from --truth-samples noises (the kernel's from 2048 of them), each judged --repeats times on fresh held-out seeds by the default rule
(first look and last look from --samples). Prints the counts and the one-sided 95% Clopper-Pearson
upper bound of the false-accept rate over all grids. False accepts count tau sets whose end-point
error is truly not lower; kernel misses, accepted sets whose kernel distance is truly higher, and
beyond the margin, by more than the rule's 10% (what its kernel guard bounds).
"""

from __future__ import annotations

import argparse
import math

import torch

from dpm_align.aligner_core.evaluation.calibration import Rates, Truth, perturbed_taus, verdict_rates
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sampling.trajectory import make_grid
from dpm_align.aligner_core.evaluation.validation import ValidationSettings


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial rate after k of n (bisection)."""
    if n == 0:
        return 1.0
    cdf = lambda p: sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))  # noqa: E731
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1 - level else (lo, mid)
    return hi


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gmm:dim=16,components=4,seed=3")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--trajectories", nargs="+", default=["uniform", "quadratic"])
    ap.add_argument("--directions", type=int, default=16)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, nargs=2, default=[64, 512], help="first and last look (align's default)")
    ap.add_argument("--reference-nfe", type=int, default=100, help="evaluations of the verdict's reference (align's default)")
    ap.add_argument("--truth-samples", type=int, default=2048,
                    help="noises of each tau set's truth (more: fewer near-ties the truth cannot place on a side of 1)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    settings = ValidationSettings(args.samples[0], args.samples[1], args.reference_nfe)
    total = Rates()
    print(f"{args.model}, ddim, verdict looks {settings.looks()}, reference {args.reference_nfe} evaluations, "
          f"{args.repeats} verdicts per tau set, truth from {args.truth_samples} noises")
    for trajectory in args.trajectories:
        for nfe in args.nfe:
            grid = make_grid(trajectory, nfe, model.eps.schedule)
            family = perturbed_taus(grid, model.eps.schedule, args.directions, args.scales)
            r = verdict_rates(model.eps, grid, model.sample_shape, family, Truth(model.eps, grid, model.sample_shape, args.truth_samples),
                              settings, args.repeats)
            for name in ("null_trials", "false_accepts", "worse_trials", "worse_accepts", "kernel_worse_trials", "kernel_misses", "margin_trials",
                         "margin_misses", "better_trials", "false_rejects", "clear_trials", "clear_accepts"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
            print(f"{trajectory:9} nfe={nfe:<3} {len(family)} tau sets: false accepts {r.false_accepts}/{r.null_trials} "
                  f"(of sets shown worse by the truth: {r.worse_accepts}/{r.worse_trials}), "
                  f"kernel misses {r.kernel_misses}/{r.kernel_worse_trials} (beyond the margin "
                  f"{r.margin_misses}/{r.margin_trials}), false rejects {r.false_rejects}/{r.better_trials}, "
                  f"clearly better accepted "
                  f"{r.clear_accepts}/{r.clear_trials}", flush=True)
            accepted = sorted((ratio, low) for ratio, low, _, verdicts in r.rows if ratio >= 1 and "better" in verdicts)
            if accepted:
                print("  true end-point ratios of the falsely accepted sets (95% lower end): "
                      + ", ".join(f"{ratio:.4f} ({low:.4f})" for ratio, low in accepted))
    print(f"all: false accepts {total.false_accepts}/{total.null_trials} (95% upper bound of the rate "
          f"{upper_bound(total.false_accepts, total.null_trials):.2%}; the rule's own bound 2.5%; of sets shown worse "
          f"by the truth {total.worse_accepts}/{total.worse_trials}, upper bound "
          f"{upper_bound(total.worse_accepts, total.worse_trials):.2%}), kernel misses "
          f"{total.kernel_misses}/{total.kernel_worse_trials}, beyond the margin {total.margin_misses}/"
          f"{total.margin_trials} (95% upper bound {upper_bound(total.margin_misses, total.margin_trials):.2%}), false rejects "
          f"{total.false_rejects}/{total.better_trials}, clearly better accepted {total.clear_accepts}/{total.clear_trials}")


if __name__ == "__main__":
    main()
