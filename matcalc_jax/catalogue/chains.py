"""Catalogue declarations.

The chain rules (the seed's four): instances through tanh, linear maps and Y = A X B of the
combinators in ``matcalc_jax.forms.chains``, and the pieces the product rules share.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import MATMUL_SIZES, VECTOR_SIZES, Rule
from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout, check_layout
from matcalc_jax.forms import activations
from matcalc_jax.forms.affine import matrix_product_jacobian, matrix_vector_jacobian
from matcalc_jax.forms.chains import (
    chain_elementwise,
    chain_matrix_trace,
    chain_matrix_vector,
    chain_scalar,
    chain_vector,
)
from matcalc_jax.forms.linear import linear_jacobian
from matcalc_jax.operators import (
    Dense,
    Kronecker,
)

# ------------------------------------------- pieces shared with the product rules


def linear_piece(M: Array, x: Array, layout: Layout, structured: bool) -> Any:
    """d(M x)/dx: the seed's linear rule, dense or as a ``Dense`` operator."""
    if structured:
        return Dense(M, 1, layout)
    return linear_jacobian(M, x, layout=layout)


def tanh_layer(V: Array, x: Array, layout: Layout, structured: bool = False) -> tuple[Array, Any]:
    """z = tanh(V x) and dz/dx = diag(tanh'(V x)) V: the chain rule through the seed's
    elementwise rule and its linear rule (``chain_elementwise``, so never a dense diagonal)."""
    y = V @ x
    z = jnp.tanh(y)
    dz_dx = chain_elementwise(
        activations.tanh_prime(y), linear_piece(V, x, layout, structured), layout=layout
    )
    return z, dz_dx


def _chain_vector_args(x: ArrayLike, W: ArrayLike, V: ArrayLike) -> tuple[Array, ...]:
    x = validate.vector("chain_vector", "x", x)
    W = validate.matrix_acting_on("chain_vector", "W", W, "x", x)
    V = validate.matrix("chain_vector", "V", V)
    validate.shape("chain_vector", "V", V, (V.shape[0], W.shape[0]), "V @ tanh(W x)")
    return x, W, V


def _chain_vector_fn(x: Array, W: Array, V: Array) -> Array:
    x, W, V = _chain_vector_args(x, W, V)
    return V @ jnp.tanh(W @ x)


def _chain_vector_jacobian(
    x: Array, W: Array, V: Array, *, layout: Layout = "numerator", structured: bool = False
) -> Any:
    layout = check_layout("chain_vector", layout)
    x, W, V = _chain_vector_args(x, W, V)
    y, dy_dx = tanh_layer(W, x, layout, structured)
    return chain_vector(linear_piece(V, y, layout, structured), dy_dx, layout=layout)


def _chain_vector_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, kw, kv = jax.random.split(key, 3)
    m, s, n = size, size + 1, size + 2
    return (
        draws.normal(kx, (m,), dtype),
        draws.matrix(kw, s, m, dtype),
        draws.matrix(kv, n, s, dtype),
    )


def _chain_matrix_trace_fn(X: Array, A: Array, B: Array) -> Array:
    A, X, B = validate.affine("chain_matrix_trace", A, X, B)
    return jnp.sum(jnp.tanh(A @ X @ B))


def _chain_matrix_trace_jacobian(
    X: Array, A: Array, B: Array, *, layout: Layout = "numerator", structured: bool = False
) -> Any:
    layout = check_layout("chain_matrix_trace", layout)
    A, X, B = validate.affine("chain_matrix_trace", A, X, B)
    Y = A @ X @ B
    dz_dY = activations.tanh_prime(Y)
    dY_dX = Kronecker(A, B, layout) if structured else matrix_product_jacobian(A, B, layout)
    return chain_matrix_trace(dz_dY, dY_dX, layout=layout)


def _chain_matrix_trace_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, ka, kb = jax.random.split(key, 3)
    p, q, s, t = size, size + 1, size + 2, size + 3
    return (
        draws.normal(kx, (p, q), dtype),
        draws.matrix(ka, s, p, dtype),
        draws.matrix(kb, q, t, dtype),
    )


def _check_matrix_vector(X: ArrayLike, v: ArrayLike) -> tuple[Array, Array]:
    X = validate.matrix("chain_matrix_vector", "X", X)
    v = validate.floating("chain_matrix_vector", "v", v)
    validate.shape("chain_matrix_vector", "v", v, (X.shape[1],), f"X @ v with X of shape {X.shape}")
    return X, v


def _chain_matrix_vector_fn(X: Array, v: Array) -> Array:
    X, v = _check_matrix_vector(X, v)
    return jnp.sum(jnp.tanh(X @ v))


def _chain_matrix_vector_jacobian(
    X: Array, v: Array, *, layout: Layout = "numerator", structured: bool = False
) -> Any:
    layout = check_layout("chain_matrix_vector", layout)
    X, v = _check_matrix_vector(X, v)
    dz_dy = activations.tanh_prime(X @ v)
    # y = X v = I X v: dy_a/dX_ij = delta_ai v_j.
    dy_dX = matrix_vector_jacobian(X.shape[0], v, layout, structured)
    return chain_matrix_vector(dz_dy, dy_dX, layout=layout)


def _chain_matrix_vector_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, kv = jax.random.split(key)
    q = size + 1
    return draws.matrix(kx, size, q, dtype), draws.normal(kv, (q,), dtype)


def _chain_scalar_args(x: ArrayLike, a: ArrayLike, W: ArrayLike) -> tuple[Array, ...]:
    x = validate.scalar("chain_scalar", "x", x)
    a = validate.vector("chain_scalar", "a", a)
    W = validate.matrix_acting_on("chain_scalar", "W", W, "a", a)
    return x, a, W


def _chain_scalar_fn(x: Array, a: Array, W: Array) -> Array:
    x, a, W = _chain_scalar_args(x, a, W)
    return W @ jnp.tanh(x * a)


def _chain_scalar_jacobian(
    x: Array, a: Array, W: Array, *, layout: Layout = "numerator", structured: bool = False
) -> Any:
    layout = check_layout("chain_scalar", layout)
    x, a, W = _chain_scalar_args(x, a, W)
    u = jnp.tanh(x * a)
    du_dx = a * (1 - jnp.square(u))
    return chain_scalar(linear_piece(W, u, layout, structured), du_dx, layout=layout)


def _chain_scalar_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, ka, kw = jax.random.split(key, 3)
    return (
        draws.normal(kx, (), dtype),
        draws.normal(ka, (size,), dtype),
        draws.matrix(kw, size + 1, size, dtype),
    )


RULES = (
    Rule(
        id="chain_vector",
        fn=_chain_vector_fn,
        closed_form=_chain_vector_jacobian,
        bench_sizes=MATMUL_SIZES,
        make_example=_chain_vector_example,
    ),
    Rule(
        id="chain_matrix_trace",
        fn=_chain_matrix_trace_fn,
        closed_form=_chain_matrix_trace_jacobian,
        bench_sizes=(8, 16, 32, 48),
        quick_size=4,
        make_example=_chain_matrix_trace_example,
    ),
    Rule(
        id="chain_matrix_vector",
        fn=_chain_matrix_vector_fn,
        closed_form=_chain_matrix_vector_jacobian,
        bench_sizes=(16, 32, 64, 96),
        quick_size=8,
        make_example=_chain_matrix_vector_example,
    ),
    Rule(
        id="chain_scalar",
        fn=_chain_scalar_fn,
        closed_form=_chain_scalar_jacobian,
        bench_sizes=VECTOR_SIZES,
        make_example=_chain_scalar_example,
    ),
)
