"""Render results_matrix.py's JSON lines as the markdown table of docs/RESULTS.md.

    python benchmarks/results_table.py docs/measurements/results-matrix-h200-2026-11-27.jsonl
"""

import json
import sys


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    print("| model | sampler | trajectory | NFE | objective | fit s (device) | end L2 base → aligned (ratio) "
          "| pixel FD base → aligned (ratio) | validated better |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        b, a = r["baseline"], r["aligned"]
        print(f"| {r['model']} | {r['sampler']} | {r['trajectory']} | {r['nfe']} | {r['objective']} | "
              f"{r['fit_s']} ({r['device']}) | {b['end_l2']:.3f} → {a['end_l2']:.3f} ({a['end_l2'] / b['end_l2']:.3f}) | "
              f"{b['frechet_pixel']:.3f} → {a['frechet_pixel']:.3f} ({a['frechet_pixel'] / b['frechet_pixel']:.3f}) | "
              f"{'yes' if r['better'] else '**no**'} |")


if __name__ == "__main__":
    main(sys.argv[1])
