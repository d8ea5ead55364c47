#!/usr/bin/env bash
# Fig. 2 / Fig. 6 (eval --ablation --plot) on the CIFAR-10 and GMM models and for DDPM on the demo
# model, the loss-vs-true-error sweep, and the results-matrix rows of the default joint settings
# and of DDPM, on CPU. Writes docs/measurements/fig-*, loss-vs-error-* and appends to
# results-matrix-cpu-2026-11-27.jsonl. Usage: bash scripts/cpu_figures.sh   (about 35 minutes on 2
# idle cores; run nothing else meanwhile, or the fit times are not clean)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=docs/measurements
export DPM_ALIGN_CACHE_DIR=$(mktemp -d)
run() {  # name, model args..., then sampler
  local name=$1; shift
  dpm-align align "$@" --nfe 10 --keep-worse --quiet --out "$OUT/fig-$name-taus.json" > /dev/null || true
  dpm-align eval "$@" --nfe 10 --taus "$OUT/fig-$name-taus.json" -n 64 --reference-nfe 200 --ablation \
    --plot "$OUT/fig-$name" --json --quiet > "$OUT/fig-$name.json"
}
run cifar10-ddim --model models/cifar10/model.safetensors
run gmm-ddim --model gmm
run demo-ddpm --sampler ddpm
for model in demo cifar10; do
  python benchmarks/loss_vs_error.py --model $model --out "$OUT/loss-vs-error-$model-uniform10.json" \
    > "$OUT/loss-vs-error-$model-uniform10.txt"
done
python benchmarks/loss_vs_error.py --model gmm --out "$OUT/loss-vs-error-gmm-uniform10.json" > "$OUT/loss-vs-error-gmm-uniform10.txt"
# The default preset's final joint settings on the demo model (the matrix's demo rows used 80 iterations,
# batch 16, teacher 10 sub-steps per interval).
python benchmarks/results_matrix.py --out "$OUT/results-matrix-cpu-2026-11-27.jsonl" --device cpu --models demo \
  --samplers ddim --objectives joint --budget-s 1500 >> "$OUT/results-matrix-cpu-2026-11-27.log"
# DDPM (eta = 1) on the demo model, and the missing NFE 20 quadratic golden row.
python benchmarks/results_matrix.py --out "$OUT/results-matrix-cpu-2026-11-27.jsonl" --device cpu --models demo \
  --samplers ddpm --objectives paper-golden --budget-s 1200 >> "$OUT/results-matrix-cpu-2026-11-27.log"
python benchmarks/results_matrix.py --out "$OUT/results-matrix-cpu-2026-11-27.jsonl" --device cpu --models demo \
  --samplers ddim --nfe 20 --trajectories quadratic --objectives paper-golden --budget-s 600 >> "$OUT/results-matrix-cpu-2026-11-27.log"
# The default preset's final joint settings on the mixture.
python benchmarks/results_matrix.py --out "$OUT/results-matrix-cpu-2026-11-27.jsonl" --device cpu --models gmm \
  --samplers ddim --objectives joint --budget-s 600 >> "$OUT/results-matrix-cpu-2026-11-27.log"
