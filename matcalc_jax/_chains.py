r"""Chain rules (the seed's four), as combinators on user-supplied pieces.

Printed in denominator layout:

1. dz/dx = (dy/dx)(dz/dy)                  x in R^m, y in R^s, z in R^n
2. dz/dX_ij = tr((dz/dY)^T dY/dX_ij)       X in R^{p x q}, Y in R^{s x t}, z scalar
3. dz/dX_ij = (dz/dy)^T dy/dX_ij           X in R^{p x q}, y in R^s, z scalar
4. dg/dx = (dg/du)^T du/dx                 x scalar, u in R^s, g in R^t

Each combinator takes its pieces and returns the result in one stated ``layout``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax import _activations, _random, _validate
from matcalc_jax._affine import matrix_product_jacobian, matrix_vector_jacobian
from matcalc_jax._layout import Layout, check_layout, multiply_in_layout
from matcalc_jax._linear import linear_jacobian
from matcalc_jax._operators import (
    Dense,
    Diagonal,
    JacobianOperator,
    Kronecker,
    as_operator,
    compose,
    is_operator,
)
from matcalc_jax._rule import Rule


def chain_vector(dz_dy: Any, dy_dx: Any, *, layout: Layout = "numerator") -> Any:
    """Chain rule through a vector y: dz/dx = (dy/dx)(dz/dy) in the seed's layout.

    Denominator layout (the seed): ``dy_dx @ dz_dy``; numerator layout: ``dz_dy @ dy_dx``.

    Args:
      dz_dy: Jacobian of z in R^n with respect to y in R^s: (n, s) numerator, (s, n) denominator.
      dy_dx: Jacobian of y with respect to x (any shape): (s,) + x.shape numerator,
        x.shape + (s,) denominator.
      layout: the layout of both pieces and of the result.

    Either piece may be a structured Jacobian (``matcalc_jax.Diagonal``, ``Dense``, ...);
    then the result is one too, composed with the structure kept (see ``docs/structured.md``).

    Returns:
      dz/dx: (n,) + x.shape numerator, x.shape + (n,) denominator.
    """
    layout = check_layout("chain_vector", layout)
    if is_operator(dz_dy) or is_operator(dy_dx):
        outer = _outer_operator("chain_vector", "dz_dy", dz_dy, layout)
        return compose(outer, as_operator("chain_vector", "dy_dx", dy_dx, outer.in_shape, layout))
    outer = _validate.floating("chain_vector", "dz_dy", dz_dy)
    _validate.rank("chain_vector", "dz_dy", outer, 2, "a matrix (z and y are vectors)")
    s = outer.shape[1] if layout == "numerator" else outer.shape[0]
    inner, _ = _validate.jacobian("chain_vector", "dy_dx", dy_dx, (s,), layout)
    return multiply_in_layout(outer, inner, layout)


def chain_matrix_trace(dz_dY: ArrayLike, dY_dX: Any, *, layout: Layout = "numerator") -> Any:
    """Matrix chain rule: dz/dX_ij = tr((dz/dY)^T dY/dX_ij).

    Computed for every (i, j) at once as ``sum_ab (dz/dY)_ab dY_ab/dX_ij``, which is the trace
    written out, on the real 4-index tensor dY/dX.

    Args:
      dz_dY: (s, t), the derivative of the scalar z with respect to Y (same in both layouts).
      dY_dX: (s, t, p, q) in numerator layout, (p, q, s, t) in denominator layout; or a
        structured Jacobian such as ``matcalc_jax.Kronecker(A, B)`` for Y = A X B, which gives
        dz/dX = A^T (dz/dY) B^T without forming the tensor (returned as a ``Dense``).

    Returns:
      dz/dX of shape (p, q) in both layouts.
    """
    return _gradient_through("chain_matrix_trace", "dz_dY", dz_dY, "dY_dX", dY_dX, 2, layout)


def chain_matrix_vector(dz_dy: ArrayLike, dy_dX: Any, *, layout: Layout = "numerator") -> Any:
    """Chain rule from a matrix through a vector: dz/dX_ij = (dz/dy)^T dy/dX_ij.

    Args:
      dz_dy: (s,), the gradient of the scalar z with respect to y (same in both layouts).
      dy_dX: (s, p, q) in numerator layout, (p, q, s) in denominator layout; or a
        structured Jacobian (then the result is a ``Dense`` holding dz/dX).

    Returns:
      dz/dX of shape (p, q) in both layouts.
    """
    return _gradient_through("chain_matrix_vector", "dz_dy", dz_dy, "dy_dX", dy_dX, 1, layout)


def _gradient_through(
    rule_id: str,
    outer_name: str,
    outer: ArrayLike,
    inner_name: str,
    inner: Any,
    rank: int,
    layout: Layout,
) -> Any:
    """The two matrix chain rules: contract dz/dY (a cotangent) with dY/dX's output axes."""
    layout = check_layout(rule_id, layout)
    outer = _validate.floating(rule_id, outer_name, outer)
    what = "a matrix (dz/dY for scalar z)" if rank == 2 else "a vector (dz/dy for scalar z)"
    _validate.rank(rule_id, outer_name, outer, rank, what)
    op = as_operator(rule_id, inner_name, inner, outer.shape, layout)  # dense: checked, wrapped
    _check_matrix_input(rule_id, inner_name, op.shape, op.in_shape)
    gradient = op.vm(outer)
    return Dense(gradient, 0, layout) if is_operator(inner) else gradient


def chain_scalar(dg_du: Any, du_dx: ArrayLike, *, layout: Layout = "numerator") -> Any:
    """Chain rule from a scalar x through a vector u: dg/dx.

    The seed prints dg/dx = (dg/du)^T du/dx, which holds only when du/dx is read as a
    column; in a consistent layout it is ``dg_du @ du_dx`` (numerator) or
    ``du_dx @ dg_du`` (denominator); see ``docs/errata.md``.

    Args:
      dg_du: Jacobian of g in R^t with respect to u in R^s: (t, s) numerator, (s, t)
        denominator; or a structured Jacobian (then the result is a ``Dense`` holding dg/dx).
      du_dx: (s,), the derivative of u with respect to the scalar x (same in both layouts).

    Returns:
      dg/dx of shape (t,) in both layouts.
    """
    layout = check_layout("chain_scalar", layout)
    inner = _validate.floating("chain_scalar", "du_dx", du_dx)
    if is_operator(dg_du):
        outer = _outer_operator("chain_scalar", "dg_du", dg_du, layout)
        _validate.shape("chain_scalar", "du_dx", inner, outer.in_shape, "the input of dg_du")
        return Dense(outer.mv(inner), len(outer.out_shape), layout)
    outer = _validate.floating("chain_scalar", "dg_du", dg_du)
    _validate.rank("chain_scalar", "dg_du", outer, 2, "a matrix (g and u are vectors)")
    s = outer.shape[1] if layout == "numerator" else outer.shape[0]
    _validate.shape(
        "chain_scalar", "du_dx", inner, (s,), f"the u axis of dg_du, shape {outer.shape}"
    )
    return multiply_in_layout(outer, inner, layout)


def chain_elementwise(derivative: ArrayLike, dy_dx: Any, *, layout: Layout = "numerator") -> Any:
    """Chain rule through an elementwise map z_k = f(y_k): dz/dx = diag(f'(y)) dy/dx.

    The same as ``chain_vector(elementwise_jacobian(derivative), dy_dx, layout=layout)``,
    but computed as a broadcast (row k of dy/dx scaled by f'(y_k)), never forming the
    diagonal matrix or multiplying by it: O(s * x.size) work instead of O(s^2 * x.size).
    With a structured ``dy_dx`` it returns ``Diagonal(derivative)`` composed with it.

    Args:
      derivative: f'(y), shape (s,).
      dy_dx: (s,) + x.shape numerator, x.shape + (s,) denominator.

    Returns:
      dz/dx, the same shape as ``dy_dx``.
    """
    layout = check_layout("chain_elementwise", layout)
    d = _validate.vector("chain_elementwise", "derivative", derivative)
    if is_operator(dy_dx):
        inner = as_operator("chain_elementwise", "dy_dx", dy_dx, d.shape, layout)
        return compose(Diagonal(d, layout), inner)
    inner, x_shape = _validate.jacobian("chain_elementwise", "dy_dx", dy_dx, d.shape, layout)
    if layout == "numerator":
        return d.reshape(d.shape + (1,) * len(x_shape)) * inner
    return inner * d


def _outer_operator(rule_id: str, name: str, piece: Any, layout: Layout) -> JacobianOperator:
    """The outer piece of a chain rule (vector in, vector out) as an operator."""
    if is_operator(piece):
        return as_operator(rule_id, name, piece, piece.out_shape, layout)
    array = _validate.floating(rule_id, name, piece)
    _validate.rank(rule_id, name, array, 2, "a matrix (both sides are vectors)")
    return Dense.from_array(array, 1, layout)


def _check_matrix_input(rule_id: str, name: str, shape: tuple, x_shape: tuple) -> None:
    if len(x_shape) != 2:
        raise ValueError(
            f"rule {rule_id!r}: argument {name!r} has shape {tuple(shape)}, whose "
            f"input axes {x_shape} are not those of a matrix X (p, q)"
        )


# ------------------------------------------------------------ pieces for the catalogue


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
        _activations.tanh_prime(y), linear_piece(V, x, layout, structured), layout=layout
    )
    return z, dz_dx


def _chain_vector_args(x: ArrayLike, W: ArrayLike, V: ArrayLike) -> tuple[Array, ...]:
    x = _validate.vector("chain_vector", "x", x)
    W = _validate.matrix_acting_on("chain_vector", "W", W, "x", x)
    V = _validate.matrix("chain_vector", "V", V)
    _validate.shape("chain_vector", "V", V, (V.shape[0], W.shape[0]), "V @ tanh(W x)")
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
        _random.normal(kx, (m,), dtype),
        _random.matrix(kw, s, m, dtype),
        _random.matrix(kv, n, s, dtype),
    )


def _chain_matrix_trace_fn(X: Array, A: Array, B: Array) -> Array:
    A, X, B = _validate.affine("chain_matrix_trace", A, X, B)
    return jnp.sum(jnp.tanh(A @ X @ B))


def _chain_matrix_trace_jacobian(
    X: Array, A: Array, B: Array, *, layout: Layout = "numerator", structured: bool = False
) -> Any:
    layout = check_layout("chain_matrix_trace", layout)
    A, X, B = _validate.affine("chain_matrix_trace", A, X, B)
    Y = A @ X @ B
    dz_dY = _activations.tanh_prime(Y)
    dY_dX = Kronecker(A, B, layout) if structured else matrix_product_jacobian(A, B, layout)
    return chain_matrix_trace(dz_dY, dY_dX, layout=layout)


def _chain_matrix_trace_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, ka, kb = jax.random.split(key, 3)
    p, q, s, t = size, size + 1, size + 2, size + 3
    return (
        _random.normal(kx, (p, q), dtype),
        _random.matrix(ka, s, p, dtype),
        _random.matrix(kb, q, t, dtype),
    )


def _check_matrix_vector(X: ArrayLike, v: ArrayLike) -> tuple[Array, Array]:
    X = _validate.matrix("chain_matrix_vector", "X", X)
    v = _validate.floating("chain_matrix_vector", "v", v)
    _validate.shape(
        "chain_matrix_vector", "v", v, (X.shape[1],), f"X @ v with X of shape {X.shape}"
    )
    return X, v


def _chain_matrix_vector_fn(X: Array, v: Array) -> Array:
    X, v = _check_matrix_vector(X, v)
    return jnp.sum(jnp.tanh(X @ v))


def _chain_matrix_vector_jacobian(
    X: Array, v: Array, *, layout: Layout = "numerator", structured: bool = False
) -> Any:
    layout = check_layout("chain_matrix_vector", layout)
    X, v = _check_matrix_vector(X, v)
    dz_dy = _activations.tanh_prime(X @ v)
    # y = X v = I X v: dy_a/dX_ij = delta_ai v_j.
    dy_dX = matrix_vector_jacobian(X.shape[0], v, layout, structured)
    return chain_matrix_vector(dz_dy, dy_dX, layout=layout)


def _chain_matrix_vector_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, kv = jax.random.split(key)
    q = size + 1
    return _random.matrix(kx, size, q, dtype), _random.normal(kv, (q,), dtype)


def _chain_scalar_args(x: ArrayLike, a: ArrayLike, W: ArrayLike) -> tuple[Array, ...]:
    x = _validate.scalar("chain_scalar", "x", x)
    a = _validate.vector("chain_scalar", "a", a)
    W = _validate.matrix_acting_on("chain_scalar", "W", W, "a", a)
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
        _random.normal(kx, (), dtype),
        _random.normal(ka, (size,), dtype),
        _random.matrix(kw, size + 1, size, dtype),
    )


RULES = (
    Rule(
        id="chain_vector",
        title="Chain rule, vector",
        formula=r"\frac{\partial \mathbf{z}}{\partial \mathbf{x}}"
        r"=\frac{\partial \mathbf{y}}{\partial \mathbf{x}}"
        r"\frac{\partial \mathbf{z}}{\partial \mathbf{y}}",
        numerator_formula=r"\frac{\partial \mathbf{z}}{\partial \mathbf{y}}"
        r"\frac{\partial \mathbf{y}}{\partial \mathbf{x}}",
        plain="dz/dx = (dy/dx)(dz/dy)",
        source="seed",
        shapes="x in R^m, y in R^s, z in R^n; instance y = tanh(W x), z = V y",
        fn=_chain_vector_fn,
        wrt=0,
        closed_form=_chain_vector_jacobian,
        structured_form=partial(_chain_vector_jacobian, structured=True),
        public="matcalc_jax.chain_vector",
        make_example=_chain_vector_example,
    ),
    Rule(
        id="chain_matrix_trace",
        title="Chain rule, matrix through matrix (trace form)",
        formula=r"\frac{\partial z}{\partial X_{i j}}=\operatorname{tr}\left(\left("
        r"\frac{\partial z}{\partial Y}\right)^{\mathrm{T}}"
        r"\frac{\partial Y}{\partial X_{i j}}\right)",
        numerator_formula=r"\frac{\partial z}{\partial X_{i j}}=\sum_{a b}"
        r"\frac{\partial z}{\partial Y_{a b}} \frac{\partial Y_{a b}}{\partial X_{i j}}",
        plain="dz/dX_ij = tr((dz/dY)^T dY/dX_ij)",
        source="seed",
        shapes="X in R^{p x q}, Y in R^{s x t}, z scalar; instance Y = A X B, z = sum(tanh(Y))",
        fn=_chain_matrix_trace_fn,
        wrt=0,
        closed_form=_chain_matrix_trace_jacobian,
        structured_form=partial(_chain_matrix_trace_jacobian, structured=True),
        public="matcalc_jax.chain_matrix_trace",
        make_example=_chain_matrix_trace_example,
        notes="Builds the real (s, t, p, q) tensor dY/dX, as the seed writes it: O(size^4) memory.",
    ),
    Rule(
        id="chain_matrix_vector",
        title="Chain rule, matrix through vector",
        formula=r"\frac{\partial z}{\partial X_{i j}}=\left(\frac{\partial z}{\partial \mathbf{y}}"
        r"\right)^{\mathrm{T}} \frac{\partial \mathbf{y}}{\partial X_{i j}}",
        numerator_formula=r"\frac{\partial z}{\partial X_{i j}}=\sum_{a}"
        r"\frac{\partial z}{\partial y_{a}} \frac{\partial y_{a}}{\partial X_{i j}}",
        plain="dz/dX_ij = (dz/dy)^T dy/dX_ij",
        source="seed",
        shapes="X in R^{p x q}, y in R^s, z scalar; instance y = X v, z = sum(tanh(y))",
        fn=_chain_matrix_vector_fn,
        wrt=0,
        closed_form=_chain_matrix_vector_jacobian,
        structured_form=partial(_chain_matrix_vector_jacobian, structured=True),
        public="matcalc_jax.chain_matrix_vector",
        make_example=_chain_matrix_vector_example,
    ),
    Rule(
        id="chain_scalar",
        title="Chain rule, scalar through vector",
        formula=r"\frac{\partial \mathbf{g}}{\partial x}=\left(\frac{\partial \mathbf{g}}"
        r"{\partial \mathbf{u}}\right)^{\mathrm{T}} \frac{\partial \mathbf{u}}{\partial x}",
        numerator_formula=r"\frac{\partial \mathbf{g}}{\partial \mathbf{u}}"
        r"\frac{\partial \mathbf{u}}{\partial x}",
        plain="dg/dx = (dg/du)^T du/dx",
        source="seed",
        shapes="x scalar, u in R^s, g in R^t; instance u = tanh(a x), g = W u",
        fn=_chain_scalar_fn,
        wrt=0,
        closed_form=_chain_scalar_jacobian,
        structured_form=partial(_chain_scalar_jacobian, structured=True),
        public="matcalc_jax.chain_scalar",
        make_example=_chain_scalar_example,
        notes="The printed order holds only with du/dx read as a column: see docs/errata.md.",
    ),
)
