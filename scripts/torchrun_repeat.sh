#!/bin/bash
# Runs the command of tests/test_batch_generation.py::test_torchrun_align_writes_the_artifact_of_one_process
# (torchrun, 2 gloo ranks on CPU) RUNS times and counts the runs that fail: a non-zero exit, no JSON
# document on stdout, or no artifact. Keeps the stdout/stderr of failed runs in DIR.
#     bash scripts/torchrun_repeat.sh [RUNS=100] [DIR=torchrun-repeat]
# Used to measure a rare gloo abort at exit (docs/RELIABILITY.md); one run takes about 5-10 s.
runs=${1:-100}
dir=${2:-torchrun-repeat}
mkdir -p "$dir"
fails=0
for i in $(seq 1 "$runs"); do
  port=$((20000 + RANDOM % 20000))
  OMP_NUM_THREADS=1 timeout 120 python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 \
    --master_port "$port" -m dpm_align.cli align --model "gmm:dim=16,components=3" --nfe 4 --iterations 6 \
    --num-samples 96 --validation-samples 128 --validation-max-samples 128 --validation-reference-nfe 20 \
    --no-cache --keep-worse --device cpu --quiet --json --out "$dir/t$i.json" > "$dir/out$i.txt" 2> "$dir/err$i.txt"
  rc=$?
  if [ "$rc" -ne 0 ] || [ ! -s "$dir/t$i.json" ] || \
     ! python -c "import json, sys; assert json.load(open(sys.argv[1]))['written']" "$dir/out$i.txt" 2>/dev/null; then
    fails=$((fails + 1))
    echo "run $i: exit $rc" >> "$dir/failures.txt"
  else
    rm -f "$dir/t$i.json" "$dir/out$i.txt" "$dir/err$i.txt"
  fi
done
echo "$fails of $runs runs failed"
[ "$fails" -eq 0 ]
