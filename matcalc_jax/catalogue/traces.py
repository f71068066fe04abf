"""Catalogue declarations.

Trace rules: tr(A X), tr(X^T A X) and ||X||_F^2, with Hessians for the last two."""

from __future__ import annotations

from typing import Any

import jax
from jax import Array

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import MATRIX_SIZES, Rule
from matcalc_jax.forms.traces import (
    frobenius_gradient,
    frobenius_hessian,
    frobenius_map,
    trace_linear_gradient,
    trace_linear_map,
    trace_quadratic_gradient,
    trace_quadratic_hessian,
    trace_quadratic_map,
)


def _trace_linear_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    ka, kx = jax.random.split(key)
    return draws.matrix(ka, size + 1, size, dtype), draws.normal(kx, (size, size + 1), dtype)


def _trace_quadratic_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    kx, ka = jax.random.split(key)
    return draws.normal(kx, (size, size + 1), dtype), draws.matrix(ka, size, size, dtype)


def _frobenius_example(key: Array, dtype: Any, size: int) -> tuple[Array]:
    return (draws.normal(key, (size, size + 1), dtype),)


RULES = (
    Rule(
        id="trace_linear",
        fn=trace_linear_map,
        wrt=1,
        gradient=trace_linear_gradient,
        bench_sizes=MATRIX_SIZES,
        quick_size=8,
        make_example=_trace_linear_example,
    ),
    Rule(
        id="trace_quadratic",
        fn=trace_quadratic_map,
        gradient=trace_quadratic_gradient,
        bench_sizes=MATRIX_SIZES,
        quick_size=4,
        make_example=_trace_quadratic_example,
        hessian_form=trace_quadratic_hessian,
    ),
    Rule(
        id="frobenius",
        fn=frobenius_map,
        gradient=frobenius_gradient,
        bench_sizes=MATRIX_SIZES,
        quick_size=4,
        make_example=_frobenius_example,
        hessian_form=frobenius_hessian,
    ),
)
