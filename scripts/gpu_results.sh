#!/usr/bin/env bash
# Runs benchmarks/results_matrix.py on a lent GPU within a time budget (see docs/RESULTS.md).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/ns/dpm_align && ln -sfn "$PWD/aligner_core" /tmp/ns/dpm_align/aligner_core && ln -sfn "$PWD/cli" /tmp/ns/dpm_align/cli
export PYTHONPATH=/tmp/site:/tmp/ns PYTHONUNBUFFERED=1
nvidia-smi -L
python3 benchmarks/results_matrix.py --out "$OUT/results.jsonl" --device cuda --samples 256 --budget-s "${BUDGET_S:-300}" \
  --samplers ddim ddpm --nfe 10 5 20 --trajectories uniform quadratic 2>&1 | tee "$OUT/results.log"
