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


_COOKBOOK_VEC = "matrix-cookbook sec. 10.2.2 (vec(AXB) = (B^T (x) A) vec(X))"
_LAYER_SHAPES = "W in R^{n x m}, x in R^m, b in R^n, y = W x + b in R^n"


def _layer_rule(
    rule_id: str,
    wrt: int,
    title: str,
    formula: str,
    numerator: str,
    plain: str,
    closed: Any,
    *,
    bench_sizes: tuple[int, ...],
    quick_size: int = 16,
) -> Rule:
    return Rule(
        id=rule_id,
        title=title,
        formula=formula,
        numerator_formula=numerator,
        plain=plain,
        source="standard (the layer y = W x + b)",
        shapes=_LAYER_SHAPES,
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
        title="Matrix affine map Y = A X B",
        formula=r"\operatorname{vec}(A X B)=\left(B^{\mathrm{T}} \otimes A\right) "
        r"\operatorname{vec}(X)",
        numerator_formula=r"\frac{\partial Y_{a b}}{\partial X_{i j}}=A_{a i} B_{j b},\ "
        r"\frac{\partial z}{\partial X}=A^{\mathrm{T}} \frac{\partial z}{\partial Y} "
        r"B^{\mathrm{T}}",
        plain="dY_ab/dX_ij = A_ai B_jb; dz/dX = A^T (dz/dY) B^T",
        source=_COOKBOOK_VEC,
        shapes="A in R^{s x p}, X in R^{p x q}, B in R^{q x t}, Y in R^{s x t}",
        fn=affine_matrix_map,
        wrt=1,
        closed_form=affine_matrix_jacobian,
        bench_sizes=(8, 16, 32, 48),
        quick_size=4,
        make_example=_affine_example,
        notes="The dense Jacobian is the (s, t, p, q) tensor; the structured form is "
        "Kronecker(A, B) and its vm is affine_matrix_gradient.",
    ),
    _layer_rule(
        "linear_layer",
        0,
        "Linear layer, by the weights",
        r"\frac{\partial y_{a}}{\partial W_{i j}}=\delta_{a i} x_{j}",
        r"I \otimes \mathbf{x}^{\mathrm{T}}",
        "dy_a/dW_ij = delta_ai x_j",
        linear_layer_weight_jacobian,
        bench_sizes=(16, 32, 64, 128),  # jacfwd pushes an (n m)^2 standard basis
        quick_size=8,
    ),
    _layer_rule(
        "linear_layer_input",
        1,
        "Linear layer, by the input",
        r"\frac{\partial (W \mathbf{x}+\mathbf{b})}{\partial \mathbf{x}}=W^{\mathrm{T}}",
        r"W",
        "d(Wx + b)/dx = W^T",
        linear_layer_input_jacobian,
        bench_sizes=MATMUL_SIZES,
    ),
    _layer_rule(
        "linear_layer_bias",
        2,
        "Linear layer, by the bias",
        r"\frac{\partial (W \mathbf{x}+\mathbf{b})}{\partial \mathbf{b}}=I",
        r"I",
        "d(Wx + b)/db = I",
        linear_layer_bias_jacobian,
        bench_sizes=VECTOR_SIZES,
    ),
)
