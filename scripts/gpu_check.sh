#!/usr/bin/env bash
# CUDA smoke check on a lent GPU: align / sample / eval on the embedded demo model with
# --device cuda, the same on cpu, and the CUDA-vs-CPU difference of the fitted taus.
# Expects wheels for pydantic/platformdirs in .whl/ (see README, "GPU check").
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/ns/dpm_align && ln -sfn "$PWD/aligner_core" /tmp/ns/dpm_align/aligner_core && ln -sfn "$PWD/cli" /tmp/ns/dpm_align/cli
export PYTHONPATH=/tmp/site:/tmp/ns PYTHONUNBUFFERED=1 DPM_ALIGN_CACHE_DIR=/tmp/cache
run() { python3 -m dpm_align.cli "$@"; }
nvidia-smi -L
for dev in cuda cpu; do
  start=$EPOCHREALTIME
  run align --nfe 10 --device $dev --quiet --json --no-cache --out "$OUT/taus-$dev.json" > "$OUT/align-$dev.json" || exit 1
  python3 -c "import json; print('align nfe=10 on $dev: fit %.1f s, command %.1f s' % (json.load(open('$OUT/align-$dev.json'))['artifact']['fit']['seconds'], $EPOCHREALTIME - $start))"
done
run sample --taus "$OUT/taus-cuda.json" -n 64 --device cuda --out /tmp/s --quiet --json > /dev/null || exit 1
run eval --taus "$OUT/taus-cuda.json" -n 256 --device cuda --quiet --json > "$OUT/eval-cuda.json" || exit 1
python3 - <<'PY'
import json, os
out = os.environ["OUT"]
a = {d: json.load(open(f"{out}/taus-{d}.json"))["taus"] for d in ("cuda", "cpu")}
print("max |tau_cuda - tau_cpu| =", max(abs(x - y) for x, y in zip(a["cuda"], a["cpu"])))
e = json.load(open(f"{out}/eval-cuda.json"))
print("eval on cuda, 256 samples: end gap baseline %.4f aligned %.4f ratio %.3f" % (e["end_gap_baseline"], e["end_gap_aligned"], e["end_gap_ratio"]))
PY
