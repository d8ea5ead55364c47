"""Issue 10's CPU ratio: the README's `align --nfe 10` against `sample -n 1000 --no-taus --nfe 10`, side by side.

    python benchmarks/cpu_ratio.py [--rounds 2] [--model PATH] [-- extra align options]

Runs the two commands alternately (``--rounds`` times each, in fresh processes, as a user would)
and prints every wall time and the ratio of the medians. Then, in this process, counts the
network evaluations (samples through the network; forward with gradients counted apart) of each
phase of `align` (the fit's teacher, Adam steps and held-out losses; the verdict and its
reference-error estimate) against the 1000 x 10 of `sample`: a ratio of counts that no speed-up of
the network can change.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from dpm_align.aligner_core import api
from dpm_align.aligner_core.api import SamplingPlan, align
from dpm_align.aligner_core.evaluation import validation
from dpm_align.aligner_core.evaluation.validation import ValidationSettings
from dpm_align.aligner_core.fitting import fit
from dpm_align.aligner_core.fitting.fit import resolve_config
from dpm_align.aligner_core.models.loading import load_model


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def count_evaluations(model_path: str | None) -> Counter:
    """Samples through the network in each phase of the default ``align --nfe 10`` (in-process)."""
    model = load_model(model_path)
    counts: Counter = Counter()
    phase = ["fit: teacher, plain held-out loss"]

    def hook(_module, inputs):
        kind = " (with gradients)" if torch.is_grad_enabled() else ""
        counts[phase[0] + kind] += int(inputs[0].shape[0])

    model.eps.net.register_forward_pre_hook(hook)

    def labelled(function, name):
        def wrapper(*args, **kwargs):
            previous, phase[0] = phase[0], name
            try:
                return function(*args, **kwargs)
            finally:
                phase[0] = previous
        return wrapper

    fit._fit_candidate = labelled(fit._fit_candidate, "fit: Adam steps and held-out losses")
    api.validate = labelled(api.validate, "verdict: reference, plain, aligned")
    validation.reference_error = labelled(validation.reference_error, "verdict: reference-error estimate")
    plan = SamplingPlan.make(model.eps.schedule, "ddim", None, "uniform", 10)
    align(model, plan, resolve_config("default", sampler=plan.sampler, nfe=plan.nfe), validation=ValidationSettings())
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2, help="0: only count the evaluations")
    ap.add_argument("--model", default=None)
    ap.add_argument("extra", nargs="*", help="extra align options (after --)")
    args = ap.parse_args()
    model = [] if args.model is None else ["--model", args.model]
    cli = [sys.executable, "-m", "dpm_align.cli"]
    times: dict[str, list[float]] = {"align": [], "sample": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            out = Path(tmp) / f"s{r}"
            times["sample"].append(timed([*cli, "sample", *model, "-n", "1000", "--no-taus", "--nfe", "10", "--out",
                                          str(out), "--quiet"]))
            times["align"].append(timed([*cli, "align", *model, "--nfe", "10", "--no-cache", "--out",
                                         str(Path(tmp) / f"a{r}.json"), "--quiet", "--keep-worse", *args.extra]))
            print(f"round {r + 1}: sample -n 1000 {times['sample'][-1]:.1f} s, align {times['align'][-1]:.1f} s", flush=True)
    if args.rounds:
        a, s = statistics.median(times["align"]), statistics.median(times["sample"])
        print(f"median: align {a:.1f} s / sample -n 1000 {s:.1f} s = {a / s:.2f} (issue 10's target: <= 0.8)")
    counts = count_evaluations(args.model)
    total = sum(counts.values())
    print("network evaluations (samples through the network) of align --nfe 10, in-process:")
    for name, n in sorted(counts.items()):
        print(f"  {name:55s} {n:7d}  ({n / 10000:.2f} x sample -n 1000's 10000)")
    print(f"  {'all':55s} {total:7d}  ({total / 10000:.2f} x)")


if __name__ == "__main__":
    main()
