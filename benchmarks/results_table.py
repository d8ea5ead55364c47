"""Render results_matrix.py's JSON lines as the markdown tables of docs/RESULTS.md.

    python benchmarks/results_table.py docs/measurements/results-matrix-cpu-2026-11-27.jsonl [--summary]

One row per (model, sampler, trajectory, NFE, objective); ``joint*`` marks joint rows fitted with
today's ``--preset joint`` (= the default for deterministic samplers), ``joint°`` rows with its settings
but before the cosine learning-rate decay (rows measured since then record their ``commit``). The real-data column (pixel FD of the
end points to real images / exact mixture samples) appears for runs that measured it. With
--summary: per model and objective, in how many settings validation said "better", and the
median ratios.
"""

import json
import statistics
import sys
from collections import defaultdict

from dpm_align.aligner_core.fitting.fit import PRESETS


def objective(row: dict) -> str:
    """The row's objective; joint rows fitted with today's default settings are marked ``joint*``,
    those with its settings from before the learning-rate decay ``joint°``."""
    if row["objective"] != "joint" or row.get("config") != PRESETS["joint"].model_dump():
        return row["objective"]
    return "joint*" if "commit" in row else "joint°"


def ratio(row: dict, metric: str) -> float:
    return row["aligned"][metric] / row["baseline"][metric]


def table(rows: list[dict]) -> None:
    real = any("frechet_real" in r for r in rows)
    print("| model | sampler | trajectory | NFE | objective | fit s (device) | end L2 base → aligned (ratio) "
          "| pixel FD to reference, base → aligned (ratio) |" + (" pixel FD to real data, base → aligned (reference) |" if real else "")
          + " validated better |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if real else "") + " --- |")
    for r in rows:
        b, a = r["baseline"], r["aligned"]
        cells = [r["model"], r["sampler"], r["trajectory"], str(r["nfe"]), objective(r), f"{r['fit_s']} ({r['device']})",
                 f"{b['end_l2']:.3f} → {a['end_l2']:.3f} ({ratio(r, 'end_l2'):.3f})",
                 f"{b['frechet_pixel']:.3f} → {a['frechet_pixel']:.3f} ({ratio(r, 'frechet_pixel'):.3f})"]
        if real:
            f = r.get("frechet_real")
            cells.append(f"{f['baseline']:.2f} → {f['aligned']:.2f} ({f['reference']:.2f})" if f else "")
        cells.append("yes" if r["better"] else "**no**")
        print("| " + " | ".join(cells) + " |")


def summary(rows: list[dict]) -> None:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["sampler"], objective(r))].append(r)
    print("| model | sampler | objective | settings | validated better | median end-L2 ratio | median pixel-FD ratio | median fit s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (model, sampler, name), group in groups.items():
        print(f"| {model} | {sampler} | {name} | {len(group)} | {sum(r['better'] for r in group)} | "
              f"{statistics.median(ratio(r, 'end_l2') for r in group):.3f} | "
              f"{statistics.median(ratio(r, 'frechet_pixel') for r in group):.3f} | "
              f"{statistics.median(r['fit_s'] for r in group):.1f} |")


def main(argv: list[str]) -> None:
    rows = [json.loads(line) for line in open(argv[0])]
    (summary if "--summary" in argv else table)(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
