"""Baseline vs aligned for each demo model x sampler x trajectory x NFE x objective, in one run.

    python benchmarks/results_matrix.py --out results.jsonl [--budget-s 330] [--samples 128]
        [--models demo cifar10 gmm] [--samplers ddim ddpm] [--trajectories uniform quadratic]
        [--nfe 5 10 20] [--objectives paper-golden joint ...] [--reference-nfe 100] [--device auto]

For each setting (model, sampler, trajectory, NFE) every objective is fitted (seed 0), then all
of them are scored side by side on the same held-out seeds against ONE reference (the verdict's:
DPM-Solver-2, log-SNR sub-steps, at least --reference-nfe evaluations) from the same noise, with
the verdict's paired 95% intervals (``verdict.py``):
- ``end_l2``: mean per-sample L2 distance of the end points to the reference's;
- ``kernel``: unbiased MMD^2 of the end points to the reference's end points;
- ``frechet_pixel``: pixel-space Fréchet distance to the reference's end points (shown, not used);
- ``frechet_real``: pixel-space Fréchet distance to real data (MNIST / CIFAR-10 test images, or
  exact samples of the mixture), which does not favour objectives that imitate the reference.
Each row records the fit configuration and the commit measured. Rows are appended to --out as
they finish (JSON lines), so a run cut short by --budget-s keeps what it measured. Feeds docs/RESULTS.md (benchmarks/results_table.py renders the table).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import time
from pathlib import Path

import torch

from dpm_align.aligner_core.api import SamplingPlan
from dpm_align.aligner_core.data import load_data
from dpm_align.aligner_core.fitting.fit import fit_taus, objective_needs_eta0, resolve_config
from dpm_align.aligner_core.models.loading import load_model, resolve_device
from dpm_align.aligner_core.evaluation.metrics import frechet_distance
from dpm_align.aligner_core.sampling.samplers import is_stochastic
from dpm_align.aligner_core.evaluation.compare import paired_trajectories
from dpm_align.aligner_core.evaluation.validation import HELD_OUT_SEED_OFFSET, decide
from dpm_align.aligner_core.evaluation.verdict import kernel_change, mean_ratio_change

MODELS = {"demo": (None, "mnist"), "cifar10": ("models/cifar10/model.safetensors", "cifar10"), "gmm": ("gmm", None)}
# name -> (preset, overrides). "official-60": the paper's optimizer with 60 instead of 500 iterations per step.
OBJECTIVES = {
    "paper-golden": ("golden", {}),
    "paper-golden-parallel": ("golden", {"strategy": "parallel"}),
    "teacher-golden": ("golden", {"objective": "teacher"}),
    "paper-official-60": ("official", {"iterations": 60}),
    "joint": ("joint", {}),
    "default": ("default", {}),
    "default-norm": ("default", {"norm_weight": 1.0}),  # the joint fit with its optional norm-matching term
}


def real_data(name: str, model, count: int = 2000) -> torch.Tensor:
    """Real samples to compare with: the data set the model was trained on, or the exact mixture."""
    path, data = MODELS[name]
    if data is None:
        mixture = model.eps.net.mixture
        return mixture.sample(count, torch.Generator().manual_seed(123)).reshape(count, *model.sample_shape)
    return load_data(data, model.sample_shape)[:count].to(torch.float64)


def commit() -> str:
    """The checked-out commit (``-dirty`` with uncommitted changes to tracked files), for the rows."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    try:
        return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--samplers", nargs="+", default=["ddim", "ddpm"])
    ap.add_argument("--trajectories", nargs="+", default=["uniform", "quadratic"])
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--reference-nfe", type=int, default=100)
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--commit", default=None, help="the commit measured, where the tree has no .git (default: git's)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    start, code = time.time(), args.commit or commit()
    models = {name: load_model(MODELS[name][0], device=device) for name in args.models}
    real = {name: real_data(name, model) for name, model in models.items()}
    with args.out.open("a") as sink:
        for sampler, nfe, trajectory, name in itertools.product(args.samplers, args.nfe, args.trajectories, args.models):
            model = models[name]
            plan = SamplingPlan.make(model.eps.schedule, sampler, None, trajectory, nfe)
            fitted, fit_s, configs = {}, {}, {}
            for objective in args.objectives:
                if time.time() - start > args.budget_s:
                    break
                preset, overrides = OBJECTIVES[objective]
                config = resolve_config(preset, **overrides)
                configs[objective] = config.model_dump()
                if objective_needs_eta0(config.objective) and is_stochastic(sampler, plan.eta):
                    continue
                t0 = time.time()
                data = real[name].to(device) if config.strategy == "parallel" else None
                result = fit_taus(model.eps, model.eps.schedule, plan.grid, plan.sampler, plan.eta, config,
                                  model.sample_shape, seed=0, device=device, data=data)
                fitted[objective] = result.taus if result.grid is None else (result.grid, result.taus)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                fit_s[objective] = round(time.time() - t0, 2)
            if not fitted:
                print(f"budget of {args.budget_s:.0f}s reached; stopping", flush=True)
                break
            ends = {key: [] for key in ("reference", "baseline", *fitted)}
            for states in paired_trajectories(model.eps, plan.grid, plan.sampler, plan.eta, {"baseline": None, **fitted},
                                              model.sample_shape, num_samples=args.samples,
                                              reference_nfe=args.reference_nfe, batch_size=128, seed=HELD_OUT_SEED_OFFSET,
                                              device=device):
                for key in ends:
                    ends[key].append(states[key][-1].cpu())
            points = {key: torch.cat(chunks) for key, chunks in ends.items()}
            error = {key: (points[key] - points["reference"]).flatten(1).norm(dim=1) for key in ("baseline", *fitted)}
            real_fd = {key: frechet_distance(points[key], real[name]) for key in ("reference", "baseline", *fitted)}
            decided_by = ["kernel"] if is_stochastic(sampler, plan.eta) else ["end_l2", "kernel"]
            for objective, chosen in fitted.items():
                changes = {"end_l2": mean_ratio_change(error["baseline"], error[objective], 0.95),
                           "kernel": kernel_change(points["baseline"], points[objective], points["reference"], 0.95)}
                fd = {key: frechet_distance(points[key], points["reference"]) for key in ("baseline", objective)}
                taus = chosen[1] if isinstance(chosen, tuple) else chosen
                row = {"model": name, "sampler": sampler, "trajectory": trajectory, "nfe": nfe, "objective": objective,
                       "fit_s": fit_s[objective], "device": device.type, "commit": code, "config": configs[objective],
                       "baseline": {"end_l2": changes["end_l2"].baseline, "kernel": changes["kernel"].baseline,
                                    "frechet_pixel": fd["baseline"]},
                       "aligned": {"end_l2": changes["end_l2"].aligned, "kernel": changes["kernel"].aligned,
                                   "frechet_pixel": fd[objective]},
                       "intervals": {m: [c.low, c.high] for m, c in changes.items()},
                       "grid": list(chosen[0]) if isinstance(chosen, tuple) else None,
                       "frechet_real": {"reference": real_fd["reference"], "baseline": real_fd["baseline"],
                                        "aligned": real_fd[objective]},
                       "verdict": decide(changes, decided_by), "samples": args.samples,
                       "reference_nfe": args.reference_nfe,
                       "taus_minus_t": [round(a - b, 2) for a, b in zip(taus, plan.eval_times)]}
                row["better"] = row["verdict"] == "better"
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                c = changes["end_l2"]
                k = changes["kernel"]
                print(f"{name:8} {sampler:5} {trajectory:9} nfe={nfe:<3} {objective:22} fit {fit_s[objective]:6.1f}s  "
                      f"L2 {c.baseline:.3f}->{c.aligned:.3f} ({c.change:+.1%} [{c.low:+.1%}, {c.high:+.1%}])  "
                      f"kernel {k.change if k.change is not None else float('nan'):+.1%}  "
                      f"FD {fd['baseline']:.3f}->{fd[objective]:.3f}  {row['verdict']}", flush=True)


if __name__ == "__main__":
    main()
