#!/usr/bin/env bash
# Trains the demo models on a lent GPU (see README "Regenerating the demo models").
# Expects wheels for pydantic/platformdirs in .whl/ and a copy of ../shared/data in .gpu_data/data.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/ns/dpm_align && ln -sfn "$PWD/aligner_core" /tmp/ns/dpm_align/aligner_core
export PYTHONPATH=/tmp/site:/tmp/ns PYTHONUNBUFFERED=1 DPM_ALIGN_DATA_DIR="$PWD/.gpu_data/data"
nvidia-smi -L
python3 scripts/train_demo.py --data mnist --out "$OUT/mnist/model.safetensors" --minutes 4 --batch-size 256 --seed 0 > "$OUT/mnist.log" 2>&1 &
python3 scripts/train_demo.py --data cifar10 --channels 64,128,128 --out "$OUT/cifar10/model.safetensors" --minutes 4.5 --batch-size 256 --seed 0 > "$OUT/cifar10.log" 2>&1 &
wait
tail -n 4 "$OUT/mnist.log" "$OUT/cifar10.log"
