"""Plain DDIM with diffusers' ``clip_sample`` beside plain DDIM as dpm-align runs it, and the taus.

diffusers' DDPMScheduler and DDIMScheduler clip the predicted x0 to [-1, 1] at every step when
their config says ``clip_sample: true`` (their default, and what a DDPMPipeline saves). Here eps is
recomputed from the clipped x0, as diffusers' DDIM does with ``use_clipped_model_output=True`` (its
default, False, keeps the unclipped eps in the direction term; not measured). dpm-align's samplers
and its fit do not clip. Per model and NFE
on the uniform grid, from the same noises, four DDIM samplers against the model's ODE
(DPM-Solver++(2M), 100 evaluations, unclipped): plain; plain with the clip; the default ``align``'s
taus (fitted without the clip, no verdict); and taus fitted by the default ``align`` on the
clipped model, sampled with the clip. Each row gives the mean per-sample end-point L2 (images
clamped to [-1, 1], as the verdict's) and each sampler's ratio to plain with its paired 95%
interval:

    python benchmarks/clip_sample.py [--models PATH ...] [--nfe 5 10] [--samples 512]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from dpm_align.aligner_core.api import SamplingPlan, align
from dpm_align.aligner_core.evaluation.compare import reference_grid, reference_solve
from dpm_align.aligner_core.fitting.fit import resolve_config
from dpm_align.aligner_core.evaluation.verdict import mean_ratio_change
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sampling.samplers import PerSampleNoise, StepContext, run_sampler
from dpm_align.aligner_core.sampling.trajectory import make_grid
from zoo import labelled_models


class _Clipped:
    """Mixin over an EpsModel: diffusers' clip_sample, x0 = (x - sigma eps) / alpha clipped to
    [-1, 1] and eps recomputed from it, in the model wrapper (every sampler sees it)."""

    def __call__(self, x: torch.Tensor, t, labels=None) -> torch.Tensor:
        e = super().__call__(x, t, labels)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        alpha, sigma = (f(t).reshape(shape).to(x.dtype) for f in (self.schedule.alpha, self.schedule.sigma))
        x0 = ((x - sigma * e) / alpha).clamp(-1.0, 1.0)
        return (x - alpha * x0) / sigma


def clipped(model):
    """A copy of a loaded model whose eps applies clip_sample."""
    eps = copy.copy(model.eps)
    eps.__class__ = type("Clipped" + type(eps).__name__, (_Clipped, type(eps)), {})
    out = copy.copy(model)
    out.eps = eps
    return out


def fitted(model, nfe: int):
    """(grid, taus) of the default align (no verdict) for DDIM on the uniform grid."""
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", nfe)
    artifact = align(model, plan, resolve_config("default", sampler="ddim", nfe=nfe), validation=None)
    return artifact.trajectory.timesteps, artifact.taus


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=None, help="model paths (default: every zoo and held-out model)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = args.models or [str(p) for p in labelled_models().values()]
    arms = ("plain + clip", "taus", "taus fitted with clip + clip")  # columns: end L2 ratio to plain [95%]
    print(f"| model | NFE | plain end L2 | {' | '.join(arms)} |\n| --- | --- | --- |"
          + " --- |" * len(arms), flush=True)
    for path in paths:
        model = load_model(path)
        clip = clipped(model)
        schedule = model.eps.schedule
        ctx = StepContext(schedule)
        x = PerSampleNoise(7, range(args.samples), model.sample_shape)()
        with torch.no_grad():
            truth = reference_solve(model.eps, x, reference_grid([schedule.t_max, 0.0], 100, schedule)[0], ctx)
        for nfe in args.nfe:
            plain_grid = make_grid("uniform", nfe, schedule)
            runs = {"plain": (model.eps, plain_grid, None), "plain + clip": (clip.eps, plain_grid, None),
                    "taus": (model.eps, *fitted(model, nfe)), "taus fitted with clip + clip": (clip.eps, *fitted(clip, nfe))}
            errors = {}
            with torch.no_grad():
                for name, (eps, grid, taus) in runs.items():
                    y = run_sampler("ddim", eps, x, grid, taus, ctx)
                    errors[name] = (model.eps.delivered(y) - model.eps.delivered(truth)).flatten(1).norm(dim=1)
            cells = []
            for name in arms:
                c = mean_ratio_change(errors["plain"], errors[name], 0.95)
                cells.append(f"{1 + c.change:.3f} [{1 + c.low:.3f}, {1 + c.high:.3f}]")
            label = Path(path).parent.name if Path(path).is_file() else Path(path).name
            print(f"| {label} | {nfe} | {errors['plain'].mean():.4g} | {' | '.join(cells)} |", flush=True)

if __name__ == "__main__":
    main()
