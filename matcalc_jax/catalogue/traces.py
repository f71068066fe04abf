"""Catalogue declarations.

Trace rules: tr(A X), tr(X^T A X) and ||X||_F^2, with Hessians for the last two."""

from __future__ import annotations

from typing import Any

import jax
from jax import Array

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import COOKBOOK, MATRIX_SIZES, Rule
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
        title="Trace of a linear function",
        formula=r"\frac{\partial \operatorname{tr}(A X)}{\partial X}=A^{\mathrm{T}}",
        numerator_formula=r"A^{\mathrm{T}}",
        plain="d tr(AX)/dX = A^T",
        source=f"{COOKBOOK} sec. 2.5.1",
        shapes="A in R^{q x p}, X in R^{p x q}",
        fn=trace_linear_map,
        wrt=1,
        gradient=trace_linear_gradient,
        bench_sizes=MATRIX_SIZES,
        quick_size=8,
        make_example=_trace_linear_example,
    ),
    Rule(
        id="trace_quadratic",
        title="Trace of a quadratic function",
        formula=r"\frac{\partial \operatorname{tr}(X^{\mathrm{T}} A X)}{\partial X}"
        r"=\left(A+A^{\mathrm{T}}\right) X",
        numerator_formula=r"\left(A+A^{\mathrm{T}}\right) X,\ "
        r"\nabla^2: \left(A+A^{\mathrm{T}}\right) \otimes I",
        plain="d tr(X^T A X)/dX = (A + A^T) X; Hessian (A + A^T) (x) I",
        source=f"{COOKBOOK} sec. 2.5.2",
        shapes="X in R^{p x q}, A in R^{p x p}",
        fn=trace_quadratic_map,
        gradient=trace_quadratic_gradient,
        bench_sizes=MATRIX_SIZES,
        quick_size=4,
        make_example=_trace_quadratic_example,
        hessian_form=trace_quadratic_hessian,
    ),
    Rule(
        id="frobenius",
        title="Squared Frobenius norm",
        formula=r"\frac{\partial\|X\|_{F}^{2}}{\partial X}=2 X",
        numerator_formula=r"2 X,\ \nabla^2: 2 I",
        plain="d ||X||_F^2/dX = 2X; Hessian 2I",
        source=f"{COOKBOOK} sec. 2.5.2",
        shapes="X in R^{p x q}",
        fn=frobenius_map,
        gradient=frobenius_gradient,
        bench_sizes=MATRIX_SIZES,
        quick_size=4,
        make_example=_frobenius_example,
        hessian_form=frobenius_hessian,
        notes="Overflows to inf like the map once sum(X^2) exceeds the dtype's range; the "
        "gradient 2X stays finite.",
    ),
)
