"""Catalogue declarations.

The product rules (the seed's three) and the sum rule: instances y = W x, z = tanh(V x)
of the combinators in ``matcalc_jax.forms.products``, checked against autodiff of the whole
composite.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.chains import linear_piece, tanh_layer
from matcalc_jax.catalogue.record import MATMUL_SIZES, Rule
from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout, check_layout
from matcalc_jax.forms.products import (
    product_bilinear,
    product_inner,
    product_scalar_vector,
    sum_rule,
)


def _layers(
    rule_id: str, x: ArrayLike, W: ArrayLike, V: ArrayLike, same_height: bool = True
) -> tuple[Array, Array, Array]:
    """Check x (m,), W (n, m), V (n', m), with n' = n when ``same_height``."""
    x = validate.vector(rule_id, "x", x)
    W = validate.matrix_acting_on(rule_id, "W", W, "x", x)
    V = validate.matrix_acting_on(rule_id, "V", V, "x", x)
    if same_height:
        validate.shape(rule_id, "V", V, W.shape, "the shape of W")
    return x, W, V


def _inner_fn(x: Array, W: Array, V: Array) -> Array:
    x, W, V = _layers("product_inner", x, W, V)
    return (W @ x) @ jnp.tanh(V @ x)


def _inner_jacobian(
    x: Array, W: Array, V: Array, *, layout: Layout = "numerator", structured: bool = False
) -> Any:
    layout = check_layout("product_inner", layout)
    x, W, V = _layers("product_inner", x, W, V)
    z, dz_dx = tanh_layer(V, x, layout, structured)
    dy_dx = linear_piece(W, x, layout, structured)
    return product_inner(W @ x, z, dy_dx, dz_dx, layout=layout)


def _two_layers_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, kw, kv = jax.random.split(key, 3)
    m, n = size, size + 1
    return (
        draws.normal(kx, (m,), dtype),
        draws.matrix(kw, n, m, dtype),
        draws.matrix(kv, n, m, dtype),
    )


def _bilinear_args(x: ArrayLike, A: ArrayLike, W: ArrayLike, V: ArrayLike) -> tuple[Array, ...]:
    x, W, V = _layers("product_bilinear", x, W, V, same_height=False)
    A = validate.floating("product_bilinear", "A", A)
    validate.shape("product_bilinear", "A", A, (W.shape[0], V.shape[0]), "(rows of W, rows of V)")
    return x, A, W, V


def _bilinear_fn(x: Array, A: Array, W: Array, V: Array) -> Array:
    x, A, W, V = _bilinear_args(x, A, W, V)
    return (W @ x) @ A @ jnp.tanh(V @ x)


def _bilinear_jacobian(
    x: Array,
    A: Array,
    W: Array,
    V: Array,
    *,
    layout: Layout = "numerator",
    structured: bool = False,
) -> Any:
    layout = check_layout("product_bilinear", layout)
    x, A, W, V = _bilinear_args(x, A, W, V)
    z, dz_dx = tanh_layer(V, x, layout, structured)
    dy_dx = linear_piece(W, x, layout, structured)
    return product_bilinear(W @ x, A, z, dy_dx, dz_dx, layout=layout)


def _bilinear_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, ka, kw, kv = jax.random.split(key, 4)
    m, n, p = size, size + 1, size + 2
    return (
        draws.normal(kx, (m,), dtype),
        draws.matrix(ka, n, p, dtype),
        draws.matrix(kw, n, m, dtype),
        draws.matrix(kv, p, m, dtype),
    )


def _scalar_vector_args(x: ArrayLike, u: ArrayLike, V: ArrayLike) -> tuple[Array, ...]:
    x = validate.vector("product_scalar_vector", "x", x)
    u = validate.vector("product_scalar_vector", "u", u)
    validate.shape("product_scalar_vector", "u", u, x.shape, "the shape of x")
    V = validate.matrix_acting_on("product_scalar_vector", "V", V, "x", x)
    return x, u, V


def _scalar_vector_fn(x: Array, u: Array, V: Array) -> Array:
    x, u, V = _scalar_vector_args(x, u, V)
    return (u @ x) * jnp.tanh(V @ x)


def _scalar_vector_jacobian(
    x: Array, u: Array, V: Array, *, layout: Layout = "numerator", structured: bool = False
) -> Any:
    layout = check_layout("product_scalar_vector", layout)
    x, u, V = _scalar_vector_args(x, u, V)
    z, dz_dx = tanh_layer(V, x, layout, structured)
    # y = u^T x, so dy/dx = u in both layouts.
    return product_scalar_vector(u @ x, z, u, dz_dx, layout=layout)


def _scalar_vector_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, ku, kv = jax.random.split(key, 3)
    m, n = size, size + 1
    return (
        draws.normal(kx, (m,), dtype),
        draws.normal(ku, (m,), dtype, scale=1 / math.sqrt(m)),
        draws.matrix(kv, n, m, dtype),
    )


def _sum_fn(x: Array, W: Array, V: Array) -> Array:
    x, W, V = _layers("sum", x, W, V)
    return W @ x + jnp.tanh(V @ x)


def _sum_jacobian(
    x: Array, W: Array, V: Array, *, layout: Layout = "numerator", structured: bool = False
) -> Any:
    layout = check_layout("sum", layout)
    x, W, V = _layers("sum", x, W, V)
    _, dz_dx = tanh_layer(V, x, layout, structured)
    return sum_rule(linear_piece(W, x, layout, structured), dz_dx, layout=layout)


RULES = (
    Rule(
        id="product_inner",
        fn=_inner_fn,
        closed_form=_inner_jacobian,
        bench_sizes=MATMUL_SIZES,
        make_example=_two_layers_example,
    ),
    Rule(
        id="product_bilinear",
        fn=_bilinear_fn,
        closed_form=_bilinear_jacobian,
        bench_sizes=MATMUL_SIZES,
        make_example=_bilinear_example,
    ),
    Rule(
        id="product_scalar_vector",
        fn=_scalar_vector_fn,
        closed_form=_scalar_vector_jacobian,
        bench_sizes=MATMUL_SIZES,
        make_example=_scalar_vector_example,
    ),
    Rule(
        id="sum",
        fn=_sum_fn,
        closed_form=_sum_jacobian,
        public="matcalc_jax.sum_rule",
        bench_sizes=MATMUL_SIZES,
        make_example=_two_layers_example,
    ),
)
