"""How accurate is the verdict's reference (and the fit's teacher)? End-point error of the
few-step DDIM being judged, of DPM-Solver-2 (the 0.2.0 development reference), of the reference
solver (DPM-Solver++(2M)) and of its third-order sibling DPM-Solver++(3M) at several NFE, all with
steps uniform in log-SNR from t_K to t_0, against a much finer solve of the reference solver, in one run.

    python benchmarks/reference_accuracy.py [--model PATH] [--trajectory uniform] [--steps 10]
        [--samples 32] [--truth-nfe 2000] [--threads 2]

Prints the mean per-sample L2 to the truth, and for the reference solver also the error that
``compare.reference_error`` estimates for it (Richardson, from half the steps). The first line
checks the truth against DPM-Solver-2 at the same NFE.
"""

from __future__ import annotations

import argparse
import time

import torch

from dpm_align.aligner_core.evaluation.compare import REFERENCE_SOLVER, reference_error, reference_grid, reference_solve
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sampling.samplers import PerSampleNoise, StepContext, dpm_solver_pp_multistep, run_sampler
from dpm_align.aligner_core.sampling.trajectory import make_grid


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
    ends = [grid[0], grid[-1]]
    x = PerSampleNoise(5, range(args.samples), model.sample_shape)()
    ctx = StepContext(schedule)

    def timed(solve) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        with torch.no_grad():
            out = solve()
        return out, time.perf_counter() - start

    def lam(nfe: int, per_step: int) -> list[float]:
        return reference_grid(ends, nfe // per_step, schedule)[0]

    truth, seconds = timed(lambda: reference_solve(model.eps, x, lam(args.truth_nfe, 1), ctx))
    check, _ = timed(lambda: run_sampler("dpm-solver-2", model.eps, x, lam(args.truth_nfe, 2), None, ctx))
    out = model.eps.delivered  # errors of what the verdict compares: a pixel model's images clamped to [-1, 1]
    err = lambda y: float((out(y) - out(truth)).flatten(1).norm(dim=1).mean())  # noqa: E731
    print(f"{model.info.source}, {args.trajectory} {args.steps} steps, {args.samples} samples; truth: "
          f"{REFERENCE_SOLVER} at {args.truth_nfe} NFE ({seconds:.0f} s); dpm-solver-2 at {args.truth_nfe} NFE "
          f"differs by {err(check):.2e}", flush=True)
    print(f"{'solver':>18} {'NFE':>5} {'error':>8} {'estimated':>10} {'s':>6}")
    y, s = timed(lambda: run_sampler("ddim", model.eps, x, grid, None, ctx))
    print(f"{'ddim (judged)':>18} {args.steps:>5} {err(y):>8.4f} {'':>10} {s:>6.1f}")
    for nfe in (50, 100, 200):
        y, s = timed(lambda: run_sampler("dpm-solver-2", model.eps, x, lam(nfe, 2), None, ctx))
        print(f"{'dpm-solver-2':>18} {nfe:>5} {err(y):>8.4f} {'':>10} {s:>6.1f}", flush=True)
    for nfe in (50, 100, 200):
        y, s = timed(lambda: reference_solve(model.eps, x, lam(nfe, 1), ctx))
        estimate = reference_error(model.eps, ends, nfe, model.sample_shape, out(y), seed=5)
        print(f"{REFERENCE_SOLVER:>18} {nfe:>5} {err(y):>8.4f} {estimate:>10.4f} {s:>6.1f}", flush=True)
    for nfe in (50, 100, 200):
        y, s = timed(lambda: dpm_solver_pp_multistep(model.eps, x, lam(nfe, 1), ctx, order=3))
        print(f"{'dpm-solver++(3m)':>18} {nfe:>5} {err(y):>8.4f} {'':>10} {s:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
