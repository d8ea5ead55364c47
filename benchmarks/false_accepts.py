"""Why the verdict accepts some tau sets that are truly (slightly) worse: their per-sample differences.

    python benchmarks/false_accepts.py [--model gmm:dim=16,components=4,seed=3] [--trajectory quadratic]
        [--nfe 10] [--truth-samples 32768] [--repeats 3]

For the calibration family of one grid (``benchmarks/verdict_calibration.py``: the same tau sets,
the same held-out seeds), every set whose true end-point ratio is >= 1 and that some verdict
accepted: its truth, the distribution of the per-sample differences of end-point error (aligned
minus plain, over the truth's noises: quantiles, the share of samples that improve, the share of
the mean difference carried by the largest 1% of |differences|), and each verdict with its
sample count and end-point interval.
"""

from __future__ import annotations

import argparse

import torch

from dpm_align.aligner_core.evaluation.calibration import Truth, perturbed_taus
from dpm_align.aligner_core.evaluation.validation import ValidationSettings, validate
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sampling.samplers import run_sampler
from dpm_align.aligner_core.sampling.trajectory import make_grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gmm:dim=16,components=4,seed=3")
    ap.add_argument("--trajectory", default="quadratic")
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--truth-samples", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    grid = make_grid(args.trajectory, args.nfe, model.eps.schedule)
    family = perturbed_taus(grid, model.eps.schedule, 16, [0.01, 0.03, 0.1, 0.3])  # the calibration's defaults
    truth = Truth(model.eps, grid, model.sample_shape, args.truth_samples)
    err = lambda y: (y - truth.ref).flatten(1).norm(dim=1)  # noqa: E731
    plain = err(truth.plain)
    levels = torch.tensor([0.01, 0.5, 0.99, 0.999], dtype=torch.float64)
    print(f"{args.model}, ddim {args.trajectory} NFE {args.nfe}, truth from {args.truth_samples} noises; d = per-sample "
          "end-point error, aligned - plain")
    for k, taus in enumerate(family):
        ratio, low, kernel = truth(taus)
        if ratio < 1:
            continue
        verdicts = [validate(model.eps, grid, "ddim", 0.0, taus, model.sample_shape, ValidationSettings(),
                             seed=1000 * k + rep) for rep in range(args.repeats)]
        if not any(v.verdict == "better" for v in verdicts):
            continue
        with torch.no_grad():
            d = err(run_sampler("ddim", model.eps, truth.x, grid, taus, truth.ctx)) - plain
        top = d[d.abs().argsort(descending=True)[: max(1, len(d) // 100)]].sum() / d.sum()
        quantiles = ", ".join(f"{float(q):+.2e}" for q in torch.quantile(d, levels))
        print(f"set {k}: truth {ratio:.4f} (95% lower end {low:.4f}), kernel {kernel:+.1%}; d quantiles 1/50/99/99.9%: "
              f"{quantiles}; {float((d < 0).double().mean()):.0%} of samples improve; the largest 1% of |d| carry "
              f"{float(top):.0%} of the mean difference")
        for v in verdicts:
            c = v.changes["end_l2"]
            print(f"    {v.verdict:12s} n={v.num_samples:<4d} end {c.change:+.2%} [{c.interval[0]:+.2%}, {c.interval[1]:+.2%}], "
                  f"kernel {v.changes['kernel'].change:+.1%}")


if __name__ == "__main__":
    main()
