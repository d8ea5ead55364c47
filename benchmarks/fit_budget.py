"""How many Adam steps does the default joint fit need? Fit budgets side by side, judged on the same noises.

    python benchmarks/fit_budget.py --out rows.jsonl [--settings demo:uniform:10 cifar-patch16-diffusers:uniform:10 ...]
        [--budgets 50/50 30/30 20/40] [--samples 256] [--reference-nfe 100] [--threads 2]

A budget ``a/b`` is ``a`` Adam steps for the taus alone and ``b`` for grid+taus, which continues
from the taus' fit (``FitConfig.iterations`` / ``continue_iterations``), run to the end; ``a/bpN``
stops a candidate after N held-out checks in a row without a gain (``FitConfig.patience``);
``default`` keeps the setting's own steps; ``a/b,key=value,...`` (or ``default,key=value``) sets further ``FitConfig`` fields (e.g. ``50/50,holdout=128``);
everything else is the default fit for the setting's NFE (80/80 at lr 0.02 for DDIM at NFE <= 5). ``--seeds`` fits every budget with each seed (the fit is chaotic:
bit-level differences change the taus) and also prints each budget's mean over the seeds. For every setting (model:trajectory:NFE, DDIM, seed 0; ``demo`` is the embedded
model, ``gmm...`` a mixture spec, other names are in ``models/zoo``) each budget is fitted, then all of them and the plain
sampler are run from the same ``--samples`` held-out noises (the verdict's seeds) against one
reference. Printed per budget: fit seconds and their ratio to the first budget's (measured in the
same run), the winning candidate, the end-point change against the plain sampler, and the paired
ratio of its end-point error to the first budget's, with 95% intervals. Rows are appended to
``--out`` as they finish.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dpm_align.aligner_core.api import SamplingPlan
from dpm_align.aligner_core.evaluation.compare import paired_trajectories
from dpm_align.aligner_core.evaluation.validation import HELD_OUT_SEED_OFFSET
from dpm_align.aligner_core.evaluation.verdict import mean_ratio_change
from dpm_align.aligner_core.fitting.fit import fit_taus, resolve_config
from dpm_align.aligner_core.models.loading import load_model

DEFAULT_SETTINGS = ["demo:uniform:10", "cifar-patch16-diffusers:uniform:10", "mnist16-v-cosine:uniform:5",
                    "digits8-eps-linear:uniform:5", "textures16-eps-linear:uniform:5", "mnist16-eps-scaledlin:uniform:10"]


def model_path(name: str, zoo: Path) -> str | None:
    if name == "demo":
        return None
    if name.startswith("gmm"):
        return name
    weights = zoo / name / "model.safetensors"
    return str(weights if weights.is_file() else zoo / name)


def end_errors(model, plan: SamplingPlan, candidates: dict, samples: int, reference_nfe: int) -> dict[str, torch.Tensor]:
    """Per candidate (None: plain; taus; (grid, taus)), the end-point L2 of DDIM on ``plan``'s grid
    from the verdict's ``samples`` held-out noises to one reference, end points as delivered."""
    errors: dict[str, list[torch.Tensor]] = {k: [] for k in candidates}
    for states in paired_trajectories(model.eps, plan.grid, "ddim", 0.0, candidates, model.sample_shape,
                                      num_samples=samples, reference_nfe=reference_nfe, seed=HELD_OUT_SEED_OFFSET,
                                      ends_only=True):
        reference = model.eps.delivered(states["reference"][-1])
        for k in candidates:
            errors[k].append((model.eps.delivered(states[k][-1]) - reference).flatten(1).norm(dim=1))
    return {k: torch.cat(v) for k, v in errors.items()}


def config_overrides(pairs: list[str]) -> dict:
    """``key=value`` strings (JSON values) as ``FitConfig`` field overrides."""
    return {k: json.loads(v) for k, v in (pair.split("=", 1) for pair in pairs)}


def parse_budget(text: str) -> dict:
    """``a/b``, ``a/bpN`` or ``default`` (the setting's own steps), then ``,key=value`` pairs: the ``FitConfig``
    overrides of a budget (Adam steps of the taus and of grid+taus, the patience, further fields)."""
    head, *pairs = text.split(",")
    if head == "default":
        return config_overrides(pairs)
    steps, _, patience = head.partition("p")
    taus_steps, grid_steps = (int(v) for v in steps.split("/"))
    return {"iterations": taus_steps, "continue_iterations": grid_steps, "patience": int(patience) if patience else None,
            **config_overrides(pairs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--zoo", type=Path, default=Path("models/zoo"))
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    ap.add_argument("--budgets", nargs="+", default=["50/50", "30/30", "20/40"])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--reference-nfe", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="fit seeds (each budget fitted with each)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [(f"{b}@{seed}" if len(args.seeds) > 1 else b, parse_budget(b), seed)
               for b in args.budgets for seed in args.seeds]
    for setting in args.settings:
        name, trajectory, nfe = setting.rsplit(":", 2)
        model = load_model(model_path(name, args.zoo))
        plan = SamplingPlan.make(model.eps.schedule, "ddim", None, trajectory, int(nfe))
        candidates, fits = {"plain": None}, {}
        for label, overrides, seed in budgets:
            config = resolve_config("default", sampler="ddim", nfe=plan.nfe, **overrides)  # as align's options would
            start = time.perf_counter()
            result = fit_taus(model.eps, model.eps.schedule, plan.grid, "ddim", 0.0, config, model.sample_shape,
                              seed=seed)
            fits[label] = (time.perf_counter() - start, result.candidate,
                           {k: [c.steps, c.best_iteration, c.holdout_loss] for k, c in result.candidates.items()})
            candidates[label] = result.taus if result.grid is None else (result.grid, result.taus)
        errors = end_errors(model, plan, candidates, args.samples, args.reference_nfe)
        first = next(iter(fits))
        for label, (seconds, winner, steps) in fits.items():
            vs_plain = mean_ratio_change(errors["plain"], errors[label], 0.95)
            vs_first = mean_ratio_change(errors[first], errors[label], 0.95)
            row = {"setting": setting, "budget": label, "fit_s": round(seconds, 1),
                   "fit_s_ratio": round(seconds / fits[first][0], 3), "candidate": winner, "steps_best_holdout": steps, "samples": args.samples,
                   "end_change": vs_plain.change, "end_interval": [vs_plain.low, vs_plain.high],
                   "vs_first": vs_first.change, "vs_first_interval": [vs_first.low, vs_first.high]}
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{setting:40s} {label:>6s} fit {seconds:6.1f} s (x{row['fit_s_ratio']:.2f}) {winner:10s} "
                  f"end vs plain {vs_plain.change:+.1%} [{vs_plain.low:+.1%}, {vs_plain.high:+.1%}]  "
                  f"vs {first}: {vs_first.change:+.1%} [{vs_first.low:+.1%}, {vs_first.high:+.1%}]  "
                  f"steps/best: {' '.join(f'{k} {v[0]}/{v[1]}' for k, v in steps.items())}", flush=True)
        if len(args.seeds) > 1:
            for budget in args.budgets:
                mine = [label for label, _, _ in budgets if label.rpartition("@")[0] == budget]
                change = [mean_ratio_change(errors["plain"], errors[label], 0.95).change for label in mine]
                print(f"{setting:40s} {budget:>6s} mean over {len(mine)} seeds: end vs plain "
                      f"{sum(change) / len(change):+.1%} (per seed: {' '.join(f'{c:+.1%}' for c in change)})", flush=True)


if __name__ == "__main__":
    main()
