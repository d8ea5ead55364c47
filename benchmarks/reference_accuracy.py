"""How accurate is the verdict's reference? End-point error of DDIM and of the reference solver
(DPM-Solver-2, log-SNR sub-steps) at several NFE, against a much finer solve, in one run.

    python benchmarks/reference_accuracy.py [--model PATH] [--trajectory uniform] [--steps 10]
        [--samples 32] [--truth-nfe 2000] [--threads 2]

Prints the mean per-sample L2 to the truth of: the few-step DDIM being judged, DDIM with every
interval subdivided (the old reference), the reference solver at each NFE, and the error that
``compare.reference_error`` estimates for it (Richardson, from half the sub-steps).
"""

from __future__ import annotations

import argparse
import time

import torch

from dpm_align.aligner_core.compare import REFERENCE_SOLVER, reference_error, reference_grid, refine_grid
from dpm_align.aligner_core.loading import load_model
from dpm_align.aligner_core.samplers import PerSampleNoise, StepContext, run_sampler
from dpm_align.aligner_core.trajectory import make_grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--trajectory", default="uniform")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--truth-nfe", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    schedule = model.eps.schedule
    grid = make_grid(args.trajectory, args.steps, schedule, None)
    x = PerSampleNoise(5, range(args.samples), model.sample_shape)()
    ctx = StepContext(schedule)

    def solve(name: str, fine) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        with torch.no_grad():
            out = run_sampler(name, model.eps, x, fine, None, ctx)
        return out, time.perf_counter() - start

    truth, seconds = solve(REFERENCE_SOLVER, reference_grid(grid, args.truth_nfe, schedule)[0])
    print(f"{model.info.source}, {args.trajectory} {args.steps} steps, {args.samples} samples; truth: "
          f"{REFERENCE_SOLVER} at {args.truth_nfe} NFE ({seconds:.0f} s)", flush=True)
    err = lambda y: float((y - truth).flatten(1).norm(dim=1).mean())  # noqa: E731
    print(f"{'solver':>34} {'NFE':>5} {'error':>8} {'estimated':>10} {'s':>6}")
    for nfe in (args.steps, 100, 200):
        y, s = solve("ddim", refine_grid(grid, nfe)[0])
        print(f"{'ddim (t-subdivided)':>34} {nfe:>5} {err(y):>8.4f} {'':>10} {s:>6.1f}")
    for nfe in (40, 100, 200):
        fine, per = reference_grid(grid, nfe, schedule)
        y, s = solve(REFERENCE_SOLVER, fine)
        estimate = reference_error(model.eps, grid, nfe, model.sample_shape, y, seed=5)
        print(f"{REFERENCE_SOLVER + ' (log-SNR sub-steps)':>34} {per * 2 * args.steps:>5} {err(y):>8.4f} "
              f"{estimate:>10.4f} {s:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
