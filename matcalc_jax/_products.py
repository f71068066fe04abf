r"""Product rules (the seed's three) and the sum rule, as combinators on user-supplied pieces.

Printed in denominator layout:

1. d(y^T z)/dx = (dy/dx) z + (dz/dx) y
2. d(y^T A z)/dx = (dy/dx) A z + (dz/dx) A^T y
3. d(y z)/dx = y dz/dx + (dy/dx) z^T                (y scalar)

x may have any shape; y and z are vectors (a scalar for y in rule 3).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax import _random, _validate
from matcalc_jax._chains import linear_piece, tanh_layer
from matcalc_jax._layout import Layout, check_layout
from matcalc_jax._operators import Dense, LowRank, Scaled, as_operator, is_operator
from matcalc_jax._rule import Rule


def product_inner(
    y: ArrayLike,
    z: ArrayLike,
    dy_dx: ArrayLike,
    dz_dx: ArrayLike,
    *,
    layout: Layout = "numerator",
) -> Array:
    """Gradient of the inner product y^T z with respect to x.

    Denominator layout (the seed): ``dy_dx @ z + dz_dx @ y``; numerator layout:
    ``z @ dy_dx + y @ dz_dx``. The result has x's shape in both layouts.

    Args:
      y, z: the vectors, shape (n,).
      dy_dx, dz_dx: their Jacobians with respect to x: (n,) + x.shape numerator,
        x.shape + (n,) denominator.
      layout: the layout of the pieces.

    >>> import jax.numpy as jnp
    >>> y, z = jnp.array([1.0, 2.0], jnp.float32), jnp.array([3.0, 4.0], jnp.float32)
    >>> I = jnp.eye(2, dtype=jnp.float32)  # y = x + a, z = x + b: dy/dx = dz/dx = I
    >>> product_inner(y, z, I, I)
    Array([4., 6.], dtype=float32)
    """
    layout = check_layout("product_inner", layout)
    y = _validate.vector("product_inner", "y", y)
    z = _validate.vector("product_inner", "z", z)
    _validate.shape("product_inner", "z", z, y.shape, "the shape of y")
    return _gradient("product_inner", [(z, "dy_dx", dy_dx), (y, "dz_dx", dz_dx)], layout)


def _gradient(rule_id: str, terms: list[tuple[Array, str, Any]], layout: Layout) -> Any:
    """sum over terms of cotangent^T (dpiece/dx), the gradient of a scalar product.

    Every piece is taken as an operator (a dense array is checked and wrapped in ``Dense``,
    whose ``vm`` is the plain contraction) and contracted with its ``vm``. The gradient is
    an array for dense pieces, and a ``Dense`` operator with no output axes if any piece was
    structured.
    """
    x_shape = None
    gradient = 0
    for cotangent, name, piece in terms:
        op = as_operator(rule_id, name, piece, cotangent.shape, layout, x_shape)
        x_shape = op.in_shape
        gradient = gradient + op.vm(cotangent)
    if any(is_operator(piece) for _, _, piece in terms):
        return Dense(gradient, 0, layout)
    return gradient


def product_bilinear(
    y: ArrayLike,
    A: ArrayLike,
    z: ArrayLike,
    dy_dx: ArrayLike,
    dz_dx: ArrayLike,
    *,
    layout: Layout = "numerator",
) -> Array:
    """Gradient of the bilinear form y^T A z (A constant) with respect to x.

    Denominator layout (the seed): ``dy_dx @ (A z) + dz_dx @ (A^T y)``; the result has x's
    shape in both layouts.

    Args:
      y: shape (n,); A: shape (n, p); z: shape (p,).
      dy_dx: (n,) + x.shape numerator, x.shape + (n,) denominator.
      dz_dx: (p,) + x.shape numerator, x.shape + (p,) denominator.
    """
    layout = check_layout("product_bilinear", layout)
    y = _validate.vector("product_bilinear", "y", y)
    z = _validate.vector("product_bilinear", "z", z)
    A = _validate.floating("product_bilinear", "A", A)
    _validate.shape("product_bilinear", "A", A, y.shape + z.shape, "(len(y), len(z))")
    terms = [(A @ z, "dy_dx", dy_dx), (y @ A, "dz_dx", dz_dx)]  # y @ A = A^T y, no transpose
    return _gradient("product_bilinear", terms, layout)


def product_scalar_vector(
    y: ArrayLike,
    z: ArrayLike,
    dy_dx: ArrayLike,
    dz_dx: ArrayLike,
    *,
    layout: Layout = "numerator",
) -> Array:
    """Jacobian of a scalar times a vector, y z, with respect to x.

    Denominator layout (the seed): y dz/dx + (dy/dx) z^T, shape x.shape + (n,). Numerator
    layout: y dz/dx + z (dy/dx)^T, shape (n,) + x.shape; the seed's (dy/dx) z^T has the
    wrong shape there (see ``docs/errata.md``).

    Args:
      y: the scalar, a 0-d array.
      z: the vector, shape (n,).
      dy_dx: the gradient of y, shape x.shape in both layouts.
      dz_dx: (n,) + x.shape numerator, x.shape + (n,) denominator.
    """
    layout = check_layout("product_scalar_vector", layout)
    y = _validate.floating("product_scalar_vector", "y", y)
    _validate.rank("product_scalar_vector", "y", y, 0, "a scalar (0-d array)")
    z = _validate.vector("product_scalar_vector", "z", z)
    if is_operator(dz_dx):
        dz = as_operator("product_scalar_vector", "dz_dx", dz_dx, z.shape, layout)
        dy = _validate.floating("product_scalar_vector", "dy_dx", dy_dx)
        _validate.shape("product_scalar_vector", "dy_dx", dy, dz.in_shape, "the input of dz_dx")
        if dy.ndim == 1:  # the rank-one term z (dy/dx)^T stays rank one
            outer = LowRank(z[:, None], dy[:, None], layout)
        else:
            outer = Dense(jnp.tensordot(z, dy, axes=0), 1, layout)
        return Scaled(y, dz) + outer
    dz_dx, x_shape = _validate.jacobian("product_scalar_vector", "dz_dx", dz_dx, z.shape, layout)
    dy_dx, _ = _validate.jacobian("product_scalar_vector", "dy_dx", dy_dx, (), layout, x_shape)
    if layout == "numerator":
        outer = jnp.tensordot(z, dy_dx, axes=0)
    else:
        outer = jnp.tensordot(dy_dx, z, axes=0)
    return y * dz_dx + outer


def sum_rule(dy_dx: ArrayLike, dz_dx: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """Sum rule: d(y + z)/dx = dy/dx + dz/dx.

    The pieces must have the same shape (and the same layout, which is not visible in a
    shape: it is the caller's to keep).
    """
    layout = check_layout("sum", layout)
    if is_operator(dy_dx) or is_operator(dz_dx):
        first = dy_dx if is_operator(dy_dx) else dz_dx
        dy = as_operator("sum", "dy_dx", dy_dx, first.out_shape, layout, first.in_shape)
        dz = as_operator("sum", "dz_dx", dz_dx, first.out_shape, layout, first.in_shape)
        return dy + dz
    dy_dx = _validate.floating("sum", "dy_dx", dy_dx)
    dz_dx = _validate.floating("sum", "dz_dx", dz_dx)
    _validate.shape("sum", "dz_dx", dz_dx, dy_dx.shape, "the shape of dy_dx")
    return dy_dx + dz_dx


# ---------------------------------------------------------------------------- catalogue


def _layers(
    rule_id: str, x: ArrayLike, W: ArrayLike, V: ArrayLike, same_height: bool = True
) -> tuple[Array, Array, Array]:
    """Check x (m,), W (n, m), V (n', m), with n' = n when ``same_height``."""
    x = _validate.vector(rule_id, "x", x)
    W = _validate.matrix_acting_on(rule_id, "W", W, "x", x)
    V = _validate.matrix_acting_on(rule_id, "V", V, "x", x)
    if same_height:
        _validate.shape(rule_id, "V", V, W.shape, "the shape of W")
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
        _random.normal(kx, (m,), dtype),
        _random.matrix(kw, n, m, dtype),
        _random.matrix(kv, n, m, dtype),
    )


def _bilinear_args(x: ArrayLike, A: ArrayLike, W: ArrayLike, V: ArrayLike) -> tuple[Array, ...]:
    x, W, V = _layers("product_bilinear", x, W, V, same_height=False)
    A = _validate.floating("product_bilinear", "A", A)
    _validate.shape("product_bilinear", "A", A, (W.shape[0], V.shape[0]), "(rows of W, rows of V)")
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
        _random.normal(kx, (m,), dtype),
        _random.matrix(ka, n, p, dtype),
        _random.matrix(kw, n, m, dtype),
        _random.matrix(kv, p, m, dtype),
    )


def _scalar_vector_args(x: ArrayLike, u: ArrayLike, V: ArrayLike) -> tuple[Array, ...]:
    x = _validate.vector("product_scalar_vector", "x", x)
    u = _validate.vector("product_scalar_vector", "u", u)
    _validate.shape("product_scalar_vector", "u", u, x.shape, "the shape of x")
    V = _validate.matrix_acting_on("product_scalar_vector", "V", V, "x", x)
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
    scale = jnp.asarray(1 / jnp.sqrt(m), dtype)
    return (
        _random.normal(kx, (m,), dtype),
        scale * _random.normal(ku, (m,), dtype),
        _random.matrix(kv, n, m, dtype),
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
        title="Product rule, inner product",
        formula=r"\frac{\partial \mathbf{y}^{\mathrm{T}} \mathbf{z}}{\partial \mathbf{x}}"
        r"=\frac{\partial \mathbf{y}}{\partial \mathbf{x}} \mathbf{z}"
        r"+\frac{\partial \mathbf{z}}{\partial \mathbf{x}} \mathbf{y}",
        numerator_formula=r"\left(\frac{\partial \mathbf{y}}{\partial \mathbf{x}}"
        r"\right)^{\mathrm{T}}\mathbf{z}"
        r"+\left(\frac{\partial \mathbf{z}}{\partial \mathbf{x}}\right)^{\mathrm{T}}\mathbf{y}",
        plain="d(y^T z)/dx = (dy/dx) z + (dz/dx) y",
        source="seed",
        shapes="x in R^m; y, z in R^n; instance y = W x, z = tanh(V x)",
        fn=_inner_fn,
        wrt=0,
        closed_form=_inner_jacobian,
        structured_form=partial(_inner_jacobian, structured=True),
        public="matcalc_jax.product_inner",
        make_example=_two_layers_example,
    ),
    Rule(
        id="product_bilinear",
        title="Product rule, bilinear form",
        formula=r"\frac{\partial \mathbf{y}^{\mathrm{T}} A \mathbf{z}}{\partial \mathbf{x}}"
        r"=\frac{\partial \mathbf{y}}{\partial \mathbf{x}} A \mathbf{z}"
        r"+\frac{\partial \mathbf{z}}{\partial \mathbf{x}} A^{\mathrm{T}} \mathbf{y}",
        numerator_formula=r"\left(\frac{\partial \mathbf{y}}{\partial \mathbf{x}}"
        r"\right)^{\mathrm{T}}A \mathbf{z}"
        r"+\left(\frac{\partial \mathbf{z}}{\partial \mathbf{x}}\right)^{\mathrm{T}}"
        r"A^{\mathrm{T}} \mathbf{y}",
        plain="d(y^T A z)/dx = (dy/dx) A z + (dz/dx) A^T y",
        source="seed",
        shapes="x in R^m, y in R^n, z in R^p, A in R^{n x p}; instance y = W x, z = tanh(V x)",
        fn=_bilinear_fn,
        wrt=0,
        closed_form=_bilinear_jacobian,
        structured_form=partial(_bilinear_jacobian, structured=True),
        public="matcalc_jax.product_bilinear",
        make_example=_bilinear_example,
    ),
    Rule(
        id="product_scalar_vector",
        title="Product rule, scalar times vector",
        formula=r"\frac{\partial y \mathbf{z}}{\partial \mathbf{x}}"
        r"=y \frac{\partial \mathbf{z}}{\partial \mathbf{x}}"
        r"+\frac{\partial y}{\partial \mathbf{x}} \mathbf{z}^{\mathrm{T}}",
        numerator_formula=r"y \frac{\partial \mathbf{z}}{\partial \mathbf{x}}"
        r"+\mathbf{z}\left(\frac{\partial y}{\partial \mathbf{x}}\right)^{\mathrm{T}}",
        plain="d(y z)/dx = y dz/dx + (dy/dx) z^T",
        source="seed",
        shapes="x in R^m, y scalar, z in R^n; instance y = u^T x, z = tanh(V x)",
        fn=_scalar_vector_fn,
        wrt=0,
        closed_form=_scalar_vector_jacobian,
        structured_form=partial(_scalar_vector_jacobian, structured=True),
        public="matcalc_jax.product_scalar_vector",
        make_example=_scalar_vector_example,
        notes="The printed (dy/dx) z^T holds in denominator layout only: see docs/errata.md.",
    ),
    Rule(
        id="sum",
        title="Sum rule",
        formula=r"\frac{\partial(\mathbf{y}+\mathbf{z})}{\partial \mathbf{x}}"
        r"=\frac{\partial \mathbf{y}}{\partial \mathbf{x}}"
        r"+\frac{\partial \mathbf{z}}{\partial \mathbf{x}}",
        numerator_formula=r"\frac{\partial \mathbf{y}}{\partial \mathbf{x}}"
        r"+\frac{\partial \mathbf{z}}{\partial \mathbf{x}}",
        plain="d(y + z)/dx = dy/dx + dz/dx",
        source="nndl",
        shapes="x in R^m; y, z in R^n; instance y = W x, z = tanh(V x)",
        fn=_sum_fn,
        wrt=0,
        closed_form=_sum_jacobian,
        structured_form=partial(_sum_jacobian, structured=True),
        public="matcalc_jax.sum_rule",
        make_example=_two_layers_example,
    ),
)
