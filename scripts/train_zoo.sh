#!/usr/bin/env bash
# The model zoo of issue 9: six small models the default was not tuned on, trained on CPU
# (2 threads) with scripts/train_demo.py. Different data, resolutions, schedules, prediction types,
# sizes and training lengths (cifar32-v-short is deliberately under-trained: 1 minute).
# Budgets are wall-clock minutes (--minutes) for some, step counts (--max-steps, reproducible on any
# machine) for the eps-prediction models that need longer training for a sane ODE (under-trained,
# their samples ran off to |x| >> 1); each model's description in its config / README.md and the
# logs in docs/training-logs/zoo/ give the steps taken.
#   bash scripts/train_zoo.sh [OUT_DIR=models/zoo]
#   bash scripts/train_zoo.sh heldout   # the held-out models (models/heldout), trained after the NFE-5 default was chosen
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-models/zoo}
logs=docs/training-logs/zoo
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
train() { name=$1; shift; python scripts/train_demo.py --device cpu "$@" 2>&1 | tee "$logs/$name.log"; }
if [ "$out" = heldout ]; then
  # 10 minutes ran out at 2083 of 4000 steps (2 cores shared with a test run): the step count is in its log
  out=models/heldout logs=docs/training-logs/heldout
  mkdir -p "$out" "$logs"
  train digits8-v-cosine --data digits --schedule squaredcos_cap_v2 --prediction-type v_prediction --channels 16,32,32 --max-steps 4000 --minutes 10 --seed 7 --out "$out/digits8-v-cosine/model.safetensors"
  # three more, trained on 2026-11-29 after the default of 80e500c was frozen (step budgets, so any machine repeats them)
  train cifar16-eps-cosine --data cifar10 --size 16 --schedule squaredcos_cap_v2 --channels 32,64,64 --max-steps 1500 --minutes 20 --seed 8 --out "$out/cifar16-eps-cosine/model.safetensors"
  train textures8-v-scaledlin --data textures --crop 8 --schedule scaled_linear --prediction-type v_prediction --channels 16,32,32 --max-steps 3000 --minutes 20 --seed 9 --out "$out/textures8-v-scaledlin/model.safetensors"
  train mnist28-eps-linear --data mnist --channels 16,32,32 --max-steps 2000 --minutes 20 --seed 10 --out "$out/mnist28-eps-linear/model.safetensors"
  # two eps models on the cosine schedule, trained on 2026-11-29 after grids of that schedule began at log-SNR -5.1
  # (the rule was diagnosed on cifar16-eps-cosine; these test it)
  train textures8-eps-cosine --data textures --crop 8 --schedule squaredcos_cap_v2 --channels 16,32,32 --max-steps 3000 --minutes 20 --seed 11 --out "$out/textures8-eps-cosine/model.safetensors"
  train mnist16-eps-cosine --data mnist --size 16 --schedule squaredcos_cap_v2 --channels 32,64,64 --max-steps 2000 --minutes 20 --seed 12 --out "$out/mnist16-eps-cosine/model.safetensors"
  # two v models on the cosine schedule, trained on 2026-11-29 after taus were bounded by the clipped start (3ecc02c)
  train textures8-v-cosine --data textures --crop 8 --schedule squaredcos_cap_v2 --prediction-type v_prediction --channels 16,32,32 --max-steps 3000 --minutes 20 --seed 13 --out "$out/textures8-v-cosine/model.safetensors"
  train cifar8-v-cosine --data cifar10 --crop 8 --schedule squaredcos_cap_v2 --prediction-type v_prediction --channels 16,32,32 --max-steps 3000 --minutes 20 --seed 14 --out "$out/cifar8-v-cosine/model.safetensors"
  # a v model on the cosine schedule (the kind whose fits gained least), trained on 2026-11-29 after the larger
  # retry (1000 Adam steps, 512 + 256 noises) was chosen: the check of that retry on a model it was not chosen on
  train mnist8-v-cosine --data mnist --size 8 --schedule squaredcos_cap_v2 --prediction-type v_prediction --channels 16,32,32 --max-steps 3000 --minutes 20 --seed 15 --out "$out/mnist8-v-cosine/model.safetensors"
  exit 0
fi
mkdir -p "$out" "$logs"
train digits8-eps-linear     --data digits --channels 16,32,32 --minutes 3 --seed 1 --out "$out/digits8-eps-linear/model.safetensors"
train mnist16-v-cosine       --data mnist --size 16 --schedule squaredcos_cap_v2 --prediction-type v_prediction --channels 32,64,64 --minutes 4 --seed 2 --out "$out/mnist16-v-cosine/model.safetensors"
train cifar-patch16-diffusers --data cifar10 --crop 16 --arch diffusers --channels 32,64 --max-steps 2500 --warmup 100 --minutes 60 --seed 3 --out "$out/cifar-patch16-diffusers"
train cifar32-v-short        --data cifar10 --prediction-type v_prediction --channels 32,64,64 --minutes 1 --seed 4 --out "$out/cifar32-v-short/model.safetensors"
train textures16-eps-linear  --data textures --channels 32,48,48 --max-steps 2000 --warmup 100 --minutes 60 --seed 5 --out "$out/textures16-eps-linear/model.safetensors"
train mnist16-eps-scaledlin  --data mnist --size 16 --schedule scaled_linear --channels 48,96,96 --minutes 4 --seed 6 --out "$out/mnist16-eps-scaledlin/model.safetensors"
