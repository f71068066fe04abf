#!/usr/bin/env bash
# The full CPU runs committed in bench/results/ (about 25 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results/matrix
# The seed page and the rest of its appendix.
matcalc-jax bench --platform cpu --dtype float32 float64 \
  --rules product_inner product_bilinear product_scalar_vector chain_vector \
  chain_matrix_trace chain_matrix_vector chain_scalar identity linear linear_transposed \
  elementwise logistic_scalar logistic_vector sum power exp log logistic_general softmax \
  --json bench/results/cpu.json --csv bench/results/cpu.csv \
  --markdown bench/results/cpu.md --plots bench/results
# The matrix-argument rules and the Hessians (float32).
matcalc-jax bench --platform cpu --dtype float32 \
  --rules affine_matrix linear_layer linear_layer_input linear_layer_bias trace_linear \
  trace_quadratic frobenius quadratic_form least_squares inverse det logdet solve solve_rhs \
  logistic_regression softmax_cross_entropy \
  --json bench/results/matrix_cpu.json --csv bench/results/matrix_cpu.csv \
  --markdown bench/results/matrix_cpu.md --plots bench/results/matrix
matcalc-jax bench-models --rounds 15 --json bench/results/models_cpu.json \
  | tee bench/results/models_cpu.txt
# The transform on the corpus, beside asdex and sparsejac (pip install -e ".[bench]").
matcalc-jax bench-transform --json bench/results/transform_cpu.json \
  --markdown bench/results/transform_cpu.md
# Hessians of programs, Laplacian, Gauss-Newton, beside asdex and folx (the bench extra).
matcalc-jax bench-hessian --json bench/results/hessian_cpu.json \
  --markdown bench/results/hessian_cpu.md --plot bench/results/hessian/speedup_float32.png
# Sharded Jacobians and Gram Hessians on 1, 2, 4, 8 emulated devices; chunk_size memory.
matcalc-jax bench-scale --json bench/results/scale_cpu.json --markdown bench/results/scale_cpu.md
# The latest verification, read by the site's rule pages.
matcalc-jax verify --json bench/results/verify_cpu.json
