"""The default `align` on the model zoo (scripts/train_zoo.sh), its verdict against a larger `eval`.

    python benchmarks/zoo.py --out rows.jsonl [--zoo models/zoo] [--nfe 5 10] [--trajectories uniform quadratic]
        [--eval-samples 512] [--eval-reference-nfe 120] [--budget-s 3000] [--threads 2]

For every zoo model x trajectory x NFE (DDIM, seed 0): the default `align` with its default verdict
(held-out seeds, 128 -> 512 samples), then `eval` of the artifact on other seeds (7) with more
samples: the end-point ratio and the kernel distance with their 95% intervals. Rows are appended to
--out as they finish (JSON lines), so a run cut short by --budget-s keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dpm_align.aligner_core.api import SamplingPlan, align, trajectory_gap
from dpm_align.aligner_core.fit import resolve_config
from dpm_align.aligner_core.loading import load_model
from dpm_align.aligner_core.validation import ValidationSettings


def zoo_models(root: Path) -> dict[str, Path]:
    """name -> model path (a checkpoint's weights file or a pipeline directory)."""
    found = {}
    for entry in sorted(root.iterdir()):
        weights = entry / "model.safetensors"
        found[entry.name] = weights if weights.is_file() else entry
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--zoo", type=Path, default=Path("models/zoo"))
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--trajectories", nargs="+", default=["uniform", "quadratic"])
    ap.add_argument("--eval-samples", type=int, default=512)
    ap.add_argument("--eval-reference-nfe", type=int, default=120)
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    models = zoo_models(args.zoo)
    with args.out.open("a") as sink:
        for name, path in models.items():
            if args.models and name not in args.models:
                continue
            model = load_model(str(path))
            for trajectory in args.trajectories:
                for nfe in args.nfe:
                    if time.time() - start > args.budget_s:
                        print(f"budget of {args.budget_s:.0f}s reached; stopping", flush=True)
                        return
                    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, trajectory, nfe)
                    t0 = time.time()
                    artifact = align(model, plan, resolve_config("default"), validation=ValidationSettings())
                    align_s = time.time() - t0
                    if artifact.trajectory.fitted:
                        plan = plan.with_grid(artifact.trajectory.timesteps, model.eps.schedule)
                    report = trajectory_gap(model, plan, artifact.taus, num_samples=args.eval_samples, batch_size=256,
                                            reference_nfe=args.eval_reference_nfe, seed=7)
                    v = artifact.validation
                    row = {"model": name, "trajectory": trajectory, "nfe": nfe, "candidate": artifact.fit.candidate,
                           "fit_s": artifact.fit.seconds, "align_s": round(align_s, 1), "verdict": v.verdict,
                           "verdict_samples": v.num_samples, "changes": {m: c.model_dump() for m, c in v.changes.items()},
                           "reference_error": v.reference.error_l2,
                           "eval": {"samples": report.num_samples, "end_gap_ratio": report.end_gap_ratio,
                                    "end_gap_interval": report.end_gap_interval,
                                    "kernel_baseline": report.kernel_baseline, "kernel_aligned": report.kernel_aligned,
                                    "kernel_change_interval": report.kernel_change_interval,
                                    "frechet_pixel": [report.frechet_pixel_baseline, report.frechet_pixel_aligned]}}
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    c, e = v.changes["end_l2"], report
                    k = e.kernel_change_interval or (float("nan"), float("nan"))
                    print(f"{name:24} {trajectory:9} nfe={nfe:<3} {artifact.fit.candidate or '-':9} align {align_s:5.0f}s  "
                          f"verdict {v.verdict:12} L2 {c.change:+.1%} (n={v.num_samples})  eval n={e.num_samples}: "
                          f"L2 x{e.end_gap_ratio:.3f} [{e.end_gap_interval[0]:.3f}, {e.end_gap_interval[1]:.3f}] "
                          f"kernel [{k[0]:+.0%}, {k[1]:+.0%}]", flush=True)


if __name__ == "__main__":
    main()
