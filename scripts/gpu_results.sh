#!/usr/bin/env bash
# The results matrix on a lent GPU, in passes of decreasing priority, within DEADLINE_S seconds
# of the script's start (see docs/RESULTS.md, "GPU table"):
#   0. `align --nfe 10 --device cuda` on the embedded demo model (the default preset): fit time;
#   1. DDIM, NFE 5/10/20, uniform/quadratic, demo + cifar10: joint (the default), paper-golden, teacher-golden;
#   2. DDPM, the same settings: paper-golden (the default for stochastic samplers);
#   3. DDIM NFE 20: the paper's official optimizer (60 iterations per step).
# Expects wheels for pydantic/platformdirs in .whl/ (NO_WHEELS=1 skips them, for a dry run on CPU)
# and a copy of ../shared/data in .gpu_data/data; COMMIT names the commit measured (the copy has no .git). Rows are appended to $OUT/results.jsonl as they finish.
set -u
start=$SECONDS
[ -n "${NO_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/ns/dpm_align && ln -sfn "$PWD/aligner_core" /tmp/ns/dpm_align/aligner_core && ln -sfn "$PWD/cli" /tmp/ns/dpm_align/cli
export PYTHONPATH=/tmp/site:/tmp/ns PYTHONUNBUFFERED=1 DPM_ALIGN_DATA_DIR="$PWD/.gpu_data/data" DPM_ALIGN_CACHE_DIR=/tmp/cache
DEVICE=${DEVICE:-cuda} DEADLINE_S=${DEADLINE_S:-500} SAMPLES=${SAMPLES:-256}
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi: $DEVICE"
left() { echo $((DEADLINE_S - (SECONDS - start))); }
t0=$EPOCHREALTIME
python3 -m dpm_align.cli align --nfe 10 --device "$DEVICE" --quiet --json --no-cache --out /tmp/taus.json > "$OUT/align.json"
echo "align rc=$? command $(python3 -c "print(round($EPOCHREALTIME - $t0, 1))") s"
matrix() {  # budget cap, then results_matrix arguments
  local budget=$(( $(left) < $1 ? $(left) : $1 )); shift
  [ "$budget" -gt 20 ] || { echo "skipped (deadline): $*"; return; }
  echo "== budget ${budget}s: $*"
  python3 benchmarks/results_matrix.py --out "$OUT/results.jsonl" --device "$DEVICE" --samples "$SAMPLES" \
    --budget-s "$budget" ${COMMIT:+--commit "$COMMIT"} --models demo cifar10 --trajectories uniform quadratic "$@" 2>&1 | tee -a "$OUT/results.log"
}
matrix 260 --samplers ddim --nfe 5 10 20 --objectives joint paper-golden teacher-golden
matrix 120 --samplers ddpm --nfe 5 10 20 --objectives paper-golden
matrix 200 --samplers ddim --nfe 20 --objectives paper-official-60
echo "done in $((SECONDS - start)) s"
