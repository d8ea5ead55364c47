"""The verdict's first look at 64 samples (a tenth of the error rate) against the rule before it
(first look at 128, equal shares of three looks), on the same taus and the same held-out seeds.

    python benchmarks/first_look.py --out rows.jsonl [--models demo zoo/NAME heldout/NAME ...]
        [--nfe 5 10] [--trajectories uniform quadratic] [--retry-gain 0] [--budget-s 3000] [--threads 2]

For every model (``demo``, every ``models/zoo`` and ``models/heldout`` model by default) x trajectory
x NFE: the default DDIM fit (seed 0; without the retry by default, ``--retry-gain 0``, to save time:
the verdict, not the fit, is measured here), judged once by each rule. Per rule: the verdict, its
sample count, the end-point and kernel intervals and the seconds it took. Rows are appended to --out
as they finish; the totals (how often the two agree, the samples and seconds of each) end the run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from dpm_align.aligner_core import api
from dpm_align.aligner_core.api import SamplingPlan, align
from dpm_align.aligner_core.evaluation.validation import ValidationSettings
from dpm_align.aligner_core.fitting.fit import resolve_config
from dpm_align.aligner_core.models.loading import load_model
from dpm_align.aligner_core.resources import reuse_freed_host_memory
from zoo import labelled_models

RULES = {"first look 64": ValidationSettings(),
         "first look 128 (before)": ValidationSettings(128, 512, first_look_share=1 / 3)}


def judged_by_every_rule(model, plan, config) -> dict[str, dict]:
    """align's fit, then its verdict once per rule (``api.validate`` called with each rule's settings)."""
    real, rows = api.validate, {}

    def every_rule(*args, **kwargs):
        head, tail = args[:6], args[7:]
        for name, settings in RULES.items():
            start = time.perf_counter()
            v = real(*head, settings, *tail, **kwargs)
            rows[name] = {"verdict": v.verdict, "samples": v.num_samples, "looks": v.looks, "level": v.interval_level,
                          "end_l2": v.changes["end_l2"].model_dump(), "kernel": v.changes["kernel"].model_dump(),
                          "seconds": round(time.perf_counter() - start, 2), "summary": v.summary()}
        return v

    api.validate = every_rule
    try:
        artifact = align(model, plan, config, validation=ValidationSettings())
    finally:
        api.validate = real
    if artifact.validation.verdict == "unchanged":
        rows = {name: {"verdict": "unchanged", "samples": 0, "seconds": 0.0, "summary": artifact.validation.summary()}
                for name in RULES}
    return {"candidate": artifact.fit.candidate, "rules": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=None, help="demo, zoo/NAME or heldout/NAME (default: all)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--trajectories", nargs="+", default=["uniform", "quadratic"])
    ap.add_argument("--retry-gain", type=float, default=0.0)
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_host_memory()  # as the command line runs
    models = {"demo": None, **{name: str(path) for name, path in labelled_models().items()}}
    start, agree, samples, seconds = time.time(), Counter(), Counter(), Counter()
    with args.out.open("a") as sink:
        for name, path in models.items():
            if args.models and name not in args.models:
                continue
            model = load_model(path)
            for trajectory in args.trajectories:
                for nfe in args.nfe:
                    if time.time() - start > args.budget_s:
                        print(f"budget of {args.budget_s:.0f} s reached; stopping", flush=True)
                        break
                    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, trajectory, nfe)
                    config = resolve_config("default", sampler="ddim", nfe=nfe, retry_gain=args.retry_gain)
                    row = {"model": name, "trajectory": trajectory, "nfe": nfe, "retry_gain": args.retry_gain,
                           **judged_by_every_rule(model, plan, config)}
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    verdicts = [r["verdict"] for r in row["rules"].values()]
                    agree["same verdict" if len(set(verdicts)) == 1 else " -> ".join(verdicts)] += 1
                    for rule, r in row["rules"].items():
                        samples[rule] += r["samples"]
                        seconds[rule] += r["seconds"]
                    print(f"{name} {trajectory} {nfe} ({row['candidate']}): "
                          + "; ".join(f"{rule} ({r['seconds']:.1f} s): {r['summary']}" for rule, r in row["rules"].items()),
                          flush=True)
    print(f"verdicts ({', '.join(RULES)}): {dict(agree)}")
    for rule in RULES:
        print(f"{rule}: {samples[rule]} held-out samples, {seconds[rule]:.0f} s of verdicts in all")


if __name__ == "__main__":
    main()
