#!/usr/bin/env bash
# The full CPU run committed in bench/results/ (about 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
matcalc-jax bench --platform cpu --dtype float32 float64 \
  --out bench/results/cpu.json --csv bench/results/cpu.csv \
  --markdown bench/results/cpu.md --plots bench/results
matcalc-jax bench-models --rounds 15 --out bench/results/models_cpu.json \
  | tee bench/results/models_cpu.txt
