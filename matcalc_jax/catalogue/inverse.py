"""Catalogue declarations.

The inverse, the determinant, the log-determinant and the two derivatives of a solve."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
from jax import Array

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import COOKBOOK, MATRIX_SIZES, Rule
from matcalc_jax.forms.inverse import (
    det_gradient,
    det_map,
    inverse_jacobian,
    inverse_map,
    logdet_gradient,
    logdet_map,
    solve_jacobian,
    solve_map,
    solve_rhs_jacobian,
)


def _square_example(key: Array, dtype: Any, size: int) -> tuple[Array]:
    return (draws.well_conditioned(key, size, dtype),)


def _solve_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    ka, kb = jax.random.split(key)
    return draws.well_conditioned(ka, size, dtype), draws.normal(kb, (size,), dtype)


_SINGULAR = "NaN in every entry where X is singular to working precision (rcond < eps)."
_EXAMPLE = "Examples are I + G / (2 ||G||_2): singular values in [1/2, 3/2], det > 0."

RULES = (
    Rule(
        id="inverse",
        title="Matrix inverse",
        formula=r"\partial\left(X^{-1}\right)=-X^{-1}(\partial X) X^{-1}",
        numerator_formula=r"\frac{\partial (X^{-1})_{k l}}{\partial X_{i j}}"
        r"=-(X^{-1})_{k i}(X^{-1})_{j l}",
        plain="d(X^-1) = -X^-1 dX X^-1",
        source=f"{COOKBOOK} eq. (40)",
        shapes="X in R^{n x n}, invertible",
        fn=inverse_map,
        closed_form=inverse_jacobian,
        bench_sizes=MATRIX_SIZES,
        quick_size=4,
        make_example=_square_example,
        notes=f"{_SINGULAR} {_EXAMPLE}",
    ),
    Rule(
        id="det",
        title="Determinant",
        formula=r"\frac{\partial \det(X)}{\partial X}=\det(X)\left(X^{-1}\right)^{\mathrm{T}}",
        numerator_formula=r"\det(X) X^{-\mathrm{T}}=\operatorname{adj}(X)^{\mathrm{T}}",
        plain="d det(X)/dX = det(X) X^-T",
        source=f"{COOKBOOK} sec. 2.1.1",
        shapes="X in R^{n x n}",
        fn=det_map,
        gradient=det_gradient,
        bench_sizes=MATRIX_SIZES,
        quick_size=8,
        make_example=_square_example,
        notes="Finite and exact at singular X (the transposed adjugate, from the SVD below "
        "rcond = sqrt(eps)), and where det(X) itself under- or overflows the dtype but the "
        f"adjugate does not (det carried as m 2^E). {_EXAMPLE}",
    ),
    Rule(
        id="logdet",
        title="Log-determinant",
        formula=r"\frac{\partial \ln \det(X)}{\partial X}=\left(X^{-1}\right)^{\mathrm{T}}",
        numerator_formula=r"X^{-\mathrm{T}}",
        plain="d log det(X)/dX = X^-T",
        source=f"{COOKBOOK} sec. 2.1.1",
        shapes="X in R^{n x n}, det(X) > 0",
        fn=logdet_map,
        gradient=logdet_gradient,
        bench_sizes=MATRIX_SIZES,
        quick_size=8,
        make_example=_square_example,
        notes="NaN in every entry where det(X) <= 0 (the map is NaN there); "
        "logdet_gradient(X, absolute=True) is the gradient of log|det X|. "
        f"{_SINGULAR} {_EXAMPLE}",
    ),
    Rule(
        id="solve",
        title="Linear solve, by the matrix",
        formula=r"\frac{\partial\left(A^{-1} \mathbf{b}\right)}{\partial A_{i j}}"
        r"=-A^{-1} J^{i j} A^{-1} \mathbf{b}",
        numerator_formula=r"\frac{\partial y_{k}}{\partial A_{i j}}=-(A^{-1})_{k i} y_{j},\ "
        r"\mathbf{y}=A^{-1} \mathbf{b}",
        plain="dy_k/dA_ij = -(A^-1)_ki y_j, y = A^-1 b",
        source=f"{COOKBOOK} eq. (40) applied to A^-1 b",
        shapes="A in R^{n x n}, b in R^n, y = A^{-1} b in R^n",
        fn=solve_map,
        closed_form=solve_jacobian,
        bench_sizes=MATRIX_SIZES,
        quick_size=8,
        make_example=_solve_example,
        notes=f"{_SINGULAR.replace('X', 'A')} {_EXAMPLE}",
    ),
    Rule(
        id="solve_rhs",
        title="Linear solve, by the right-hand side",
        formula=r"\frac{\partial\left(A^{-1} \mathbf{b}\right)}{\partial \mathbf{b}}"
        r"=A^{-\mathrm{T}}",
        numerator_formula=r"A^{-1}",
        plain="d(A^-1 b)/db = A^-T",
        source=f"{COOKBOOK} sec. 2.4.1 (d(Ax)/dx with A^-1)",
        shapes="A in R^{n x n}, b in R^n",
        fn=partial(solve_map, rule_id="solve_rhs"),
        wrt=1,
        closed_form=solve_rhs_jacobian,
        bench_sizes=(64, 256, 1024),
        make_example=_solve_example,
        notes=f"{_SINGULAR.replace('X', 'A')} {_EXAMPLE}",
    ),
)
