"""Catalogue declarations.

The matrix affine map Y = A X B and the layer y = W x + b, by each argument."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
from jax import Array

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import MATMUL_SIZES, VECTOR_SIZES, Rule
from matcalc_jax.forms.affine import (
    affine_matrix_jacobian,
    affine_matrix_map,
    linear_layer_bias_jacobian,
    linear_layer_input_jacobian,
    linear_layer_map,
    linear_layer_weight_jacobian,
)


def _affine_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    ka, kx, kb = jax.random.split(key, 3)
    p, q, s, t = size, size + 1, size + 2, size + 3
    return (
        draws.matrix(ka, s, p, dtype),
        draws.normal(kx, (p, q), dtype),
        draws.matrix(kb, q, t, dtype),
    )


def _layer_example(key: Array, dtype: Any, size: int, wrt: int) -> tuple[Array, ...]:
    """W (n, m), x (m,), b (n,); ``size`` is the length of the differentiated argument's
    first axis (n for W and b, m for x), the other side one longer."""
    kw, kx, kb = jax.random.split(key, 3)
    n, m = (size, size + 1) if wrt != 1 else (size + 1, size)
    return (
        draws.matrix(kw, n, m, dtype),
        draws.normal(kx, (m,), dtype),
        draws.normal(kb, (n,), dtype),
    )


def _layer_rule(
    rule_id: str,
    wrt: int,
    closed: Any,
    *,
    bench_sizes: tuple[int, ...],
    quick_size: int = 16,
) -> Rule:
    return Rule(
        id=rule_id,
        fn=partial(linear_layer_map, rule_id=rule_id),
        wrt=wrt,
        closed_form=closed,
        make_example=lambda key, dtype, size: _layer_example(key, dtype, size, wrt),
        bench_sizes=bench_sizes,
        quick_size=quick_size,
    )


RULES = (
    Rule(
        id="affine_matrix",
        fn=affine_matrix_map,
        wrt=1,
        closed_form=affine_matrix_jacobian,
        bench_sizes=(8, 16, 32, 48),
        quick_size=4,
        make_example=_affine_example,
    ),
    _layer_rule(
        "linear_layer",
        0,
        linear_layer_weight_jacobian,
        bench_sizes=(16, 32, 64, 128),  # jacfwd pushes an (n m)^2 standard basis
        quick_size=8,
    ),
    _layer_rule(
        "linear_layer_input",
        1,
        linear_layer_input_jacobian,
        bench_sizes=MATMUL_SIZES,
    ),
    _layer_rule(
        "linear_layer_bias",
        2,
        linear_layer_bias_jacobian,
        bench_sizes=VECTOR_SIZES,
    ),
)
