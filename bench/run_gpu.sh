#!/usr/bin/env bash
# The same runs on real accelerators, written beside the CPU ones as bench/results/*_gpu.*.
# Needs jax with CUDA (pip install -U "jax[cuda12]"); exits 3 early when JAX finds no GPU.
# The scale benchmark uses as many of 1, 2, 4, 8 GPUs as the machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results/gpu
matcalc-jax verify --platform gpu --json bench/results/verify_gpu.json \
  | tee bench/results/verify_gpu.txt
matcalc-jax bench --platform gpu --dtype float32 float64 \
  --json bench/results/gpu.json --csv bench/results/gpu.csv \
  --markdown bench/results/gpu.md --plots bench/results/gpu
matcalc-jax bench-models --platform gpu --rounds 15 --json bench/results/models_gpu.json \
  | tee bench/results/models_gpu.txt
matcalc-jax bench-transform --platform gpu --no-peers --json bench/results/transform_gpu.json \
  --markdown bench/results/transform_gpu.md
matcalc-jax bench-scale --platform gpu --json bench/results/scale_gpu.json \
  --markdown bench/results/scale_gpu.md
