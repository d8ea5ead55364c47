"""The default `align` on the model zoo (scripts/train_zoo.sh), its verdict against a larger `eval`.

    python benchmarks/zoo.py --table rows.jsonl     # the rows as a markdown table
    python benchmarks/zoo.py --out rows.jsonl [--zoo models/zoo] [--nfe 5 10] [--trajectories uniform quadratic]
        [--eval-samples 512] [--eval-reference-nfe 100] [--eval-trajectories uniform] [--eval-nfe 10] [--budget-s 3000] [--threads 2]
        [--set key=value ...] [--sampler ddim]

For every zoo model x trajectory x NFE (``--sampler``, DDIM by default; seed 0): the default `align` with its default verdict
(held-out seeds, 64 -> 512 samples), then `eval` of the artifact on other seeds (7) with more
samples (only on --eval-trajectories, to save time on CPU): the end-point ratio and the kernel
distance with their 95% intervals. Per model it first prints whether the model's own samples are
sane: RMS and largest |x| of 16 reference samples (data in [-1, 1]; a model whose ODE runs off to
|x| >> 1 makes every distance meaningless). Rows are appended to --out as they finish (JSON
lines), so a run cut short by --budget-s keeps what it measured. ``--set`` changes ``FitConfig`` fields of the
default fit (``--set lr=0.02 --set iterations=80``), to measure a candidate default; the rows record them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dpm_align.aligner_core.api import SamplingPlan, align, trajectory_gap
from dpm_align.aligner_core.evaluation.compare import reference_grid, reference_solve
from dpm_align.aligner_core.fitting.fit import resolve_config
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.sampling.samplers import PerSampleNoise, StepContext, is_stochastic
from dpm_align.aligner_core.evaluation.validation import ValidationSettings, reference_rms
from fit_budget import config_overrides


def zoo_models(root: Path) -> dict[str, Path]:
    """name -> model path (a checkpoint's weights file or a pipeline directory)."""
    found = {}
    for entry in sorted(root.iterdir()):
        weights = entry / "model.safetensors"
        found[entry.name] = weights if weights.is_file() else entry
    return found


def labelled_models(roots: tuple[Path, ...] = (Path("models/zoo"), Path("models/heldout"))) -> dict[str, Path]:
    """"zoo/NAME" or "heldout/NAME" (the folder's name) -> model path, for every model under ``roots``."""
    return {f"{root.name}/{name}": path for root in roots for name, path in zoo_models(root).items()}


def scale_args(samples: int) -> argparse.Namespace:
    """The options of the sample-scale benchmarks (run_off.py, start_rms.py): --samples (default
    ``samples``) and --threads, which it applies."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=samples)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def sample_scale(model, samples: int = 16, start: float | None = None) -> dict[str, float]:
    """RMS and largest |x| of the model's ODE samples (the reference solver, 100 steps) from
    ``start`` (default: the schedule's t_max, where every grid starts)."""
    schedule = model.eps.schedule
    x = PerSampleNoise(0, range(samples), model.sample_shape)()
    ends = [schedule.t_max if start is None else start, 0.0]
    with torch.no_grad():
        y = reference_solve(model.eps, x, reference_grid(ends, 100, schedule)[0], StepContext(schedule))
    return {"rms": reference_rms(y), "max_abs": float(y.abs().max())}


def interval(pair, scale: float = 1.0, shift: float = 0.0) -> str:
    return "—" if pair is None else f"[{(pair[0] + shift) * scale:+.1f}, {(pair[1] + shift) * scale:+.1f}]"


def table(path: Path) -> None:
    print("| model | grid | NFE | winner | held-out × | verdict (n) | end L2 change, % | kernel change, % | eval end L2 change, % (n) "
          "| eval kernel change, % | eval pixel FD ratio | align s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for line in path.read_text().splitlines():
        r = json.loads(line)
        held = "—" if r.get("holdout_ratio") is None else f"{r['holdout_ratio']:.3f}"  # rows before 5f456be lack it
        if r["verdict"] == "unchanged":
            print(f"| {r['model']} | {r['trajectory']} | {r['nfe']} | (plain) | {held} | unchanged (0) | — | — | — | — | — "
                  f"| {r['align_s']:.0f} |")
            continue
        c, k, e = r["changes"]["end_l2"], r["changes"]["kernel"], r["eval"]
        ev = "—" if e is None else f"{(e['end_gap_ratio'] - 1) * 100:+.1f} {interval(e['end_gap_interval'], 100, -1)} ({e['samples']})"
        ek = "—" if e is None else interval(e["kernel_change_interval"], 100)
        fd = "—" if e is None else f"{e['frechet_pixel'][1] / e['frechet_pixel'][0]:.3f}"
        kc = "—" if k["change"] is None else f"{k['change'] * 100:+.0f} {interval(k['interval'], 100)}"
        print(f"| {r['model']} | {r['trajectory']} | {r['nfe']} | {r['candidate']} | {held} | {r['verdict']} ({r['verdict_samples']}) "
              f"| {c['change'] * 100:+.1f} {interval(c['interval'], 100)} | {kc} | {ev} | {ek} | {fd} | {r['align_s']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", type=Path, default=None, help="print the rows of this file as a markdown table")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--zoo", type=Path, default=Path("models/zoo"))
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--trajectories", nargs="+", default=["uniform", "quadratic"])
    ap.add_argument("--eval-samples", type=int, default=512)
    ap.add_argument("--eval-reference-nfe", type=int, default=100)
    ap.add_argument("--eval-trajectories", nargs="+", default=None, help="eval only these (default: all)")
    ap.add_argument("--eval-nfe", type=int, nargs="+", default=None, help="eval only these NFE (default: all)")
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampler", default="ddim", help="the sampler of every row (its default fit and verdict)")
    ap.add_argument("--set", action="append", default=[], help="a FitConfig field of the fit, key=value (JSON value)")
    args = ap.parse_args()
    if args.table is not None:
        return table(args.table)
    if args.out is None:
        ap.error("--out is required (or --table)")
    torch.set_num_threads(args.threads)
    overrides = config_overrides(args.set)
    start = time.time()
    models = zoo_models(args.zoo)
    with args.out.open("a") as sink:
        for name, path in models.items():
            if args.models and name not in args.models:
                continue
            model = load_model(str(path))
            scale = sample_scale(model)
            print(f"{name}: samples rms {scale['rms']:.3f}, max |x| {scale['max_abs']:.2f}", flush=True)
            for trajectory in args.trajectories:
                for nfe in args.nfe:
                    if time.time() - start > args.budget_s:
                        print(f"budget of {args.budget_s:.0f}s reached; stopping", flush=True)
                        return
                    plan = SamplingPlan.make(model.eps.schedule, args.sampler, None, trajectory, nfe)
                    t0 = time.time()
                    config = resolve_config("default", stochastic=is_stochastic(plan.sampler, plan.eta), sampler=plan.sampler,
                                            nfe=plan.nfe, **overrides)  # as align's options would
                    artifact = align(model, plan, config, validation=ValidationSettings())
                    align_s = time.time() - t0
                    plan = plan.with_gammas(model, table=artifact.analytic)  # an analytic sampler's eval: the fit's Gamma_t
                    if artifact.trajectory.fitted:
                        plan = plan.with_grid(artifact.trajectory.timesteps, model.eps.schedule)
                    v = artifact.validation
                    held = artifact.fit.loss_after[0] / artifact.fit.loss_before[0]  # the fit's held-out ratio, winner / plain
                    line = (f"{name:24} {plan.sampler:12} {trajectory:9} nfe={nfe:<3} {artifact.fit.candidate or '-':9} align {align_s:5.0f}s  "
                            f"held-out x{held:.3f}  "
                            f"{v.summary()}")
                    row = {"model": name, "sampler": plan.sampler, "fit_overrides": overrides, "sample_scale": scale, "trajectory": trajectory, "nfe": nfe, "candidate": artifact.fit.candidate,
                           "holdout_ratio": round(held, 4),
                           "candidates": {k: c.model_dump() for k, c in (artifact.fit.candidates or {}).items()},
                           "align_s": round(align_s, 1), "verdict": v.verdict,
                           "verdict_samples": v.num_samples, "changes": {m: c.model_dump() for m, c in v.changes.items()},
                           "reference_error": v.reference.error_l2, "data_range": v.data_range, "eval": None}
                    if (v.verdict != "unchanged" and trajectory in (args.eval_trajectories or [trajectory])
                            and nfe in (args.eval_nfe or [nfe])):
                        e = trajectory_gap(model, plan, artifact.taus, num_samples=args.eval_samples, batch_size=256,
                                           reference_nfe=args.eval_reference_nfe, seed=7)
                        row["eval"] = {"samples": e.num_samples, "reference_nfe": e.reference_nfe, "data_range": e.data_range,
                                       "end_gap_ratio": e.end_gap_ratio, "end_gap_interval": e.end_gap_interval,
                                       "kernel_baseline": e.kernel_baseline, "kernel_aligned": e.kernel_aligned,
                                       "kernel_change_interval": e.kernel_change_interval,
                                       "frechet_pixel": [e.frechet_pixel_baseline, e.frechet_pixel_aligned]}
                        k = e.kernel_change_interval or (float("nan"), float("nan"))
                        line += (f"  eval n={e.num_samples}: L2 x{e.end_gap_ratio:.3f} [{e.end_gap_interval[0]:.3f}, "
                                 f"{e.end_gap_interval[1]:.3f}] kernel [{k[0]:+.0%}, {k[1]:+.0%}]")
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    print(line, flush=True)


if __name__ == "__main__":
    main()
