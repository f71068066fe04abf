r"""Product rules (the seed's three) and the sum rule, as combinators on user-supplied pieces.

Printed in denominator layout:

1. d(y^T z)/dx = (dy/dx) z + (dz/dx) y
2. d(y^T A z)/dx = (dy/dx) A z + (dz/dx) A^T y
3. d(y z)/dx = y dz/dx + (dy/dx) z^T                (y scalar)

x may have any shape; y and z are vectors (a scalar for y in rule 3).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout, check_layout
from matcalc_jax.operators import Dense, LowRank, Scaled, as_operator, is_operator


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
      y: the first vector, shape (n,).
      z: the second vector, shape (n,).
      dy_dx: y's Jacobian with respect to x: (n,) + x.shape numerator, x.shape + (n,)
        denominator.
      dz_dx: z's Jacobian with respect to x, shaped as ``dy_dx``.
      layout: the layout of the pieces.

    >>> import jax.numpy as jnp
    >>> y, z = jnp.array([1.0, 2.0], jnp.float32), jnp.array([3.0, 4.0], jnp.float32)
    >>> I = jnp.eye(2, dtype=jnp.float32)  # y = x + a, z = x + b: dy/dx = dz/dx = I
    >>> product_inner(y, z, I, I)
    Array([4., 6.], dtype=float32)
    """
    layout = check_layout("product_inner", layout)
    y = validate.vector("product_inner", "y", y)
    z = validate.vector("product_inner", "z", z)
    validate.shape("product_inner", "z", z, y.shape, "the shape of y")
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
    y = validate.vector("product_bilinear", "y", y)
    z = validate.vector("product_bilinear", "z", z)
    A = validate.floating("product_bilinear", "A", A)
    validate.shape("product_bilinear", "A", A, y.shape + z.shape, "(len(y), len(z))")
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
    y = validate.floating("product_scalar_vector", "y", y)
    validate.rank("product_scalar_vector", "y", y, 0, "a scalar (0-d array)")
    z = validate.vector("product_scalar_vector", "z", z)
    if is_operator(dz_dx):
        dz = as_operator("product_scalar_vector", "dz_dx", dz_dx, z.shape, layout)
        dy = validate.floating("product_scalar_vector", "dy_dx", dy_dx)
        validate.shape("product_scalar_vector", "dy_dx", dy, dz.in_shape, "the input of dz_dx")
        if dy.ndim == 1:  # the rank-one term z (dy/dx)^T stays rank one
            outer = LowRank(z[:, None], dy[:, None], layout)
        else:
            outer = Dense(jnp.tensordot(z, dy, axes=0), 1, layout)
        return Scaled(y, dz) + outer
    dz_dx, x_shape = validate.jacobian("product_scalar_vector", "dz_dx", dz_dx, z.shape, layout)
    dy_dx, _ = validate.jacobian("product_scalar_vector", "dy_dx", dy_dx, (), layout, x_shape)
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
    dy_dx = validate.floating("sum", "dy_dx", dy_dx)
    dz_dx = validate.floating("sum", "dz_dx", dz_dx)
    validate.shape("sum", "dz_dx", dz_dx, dy_dx.shape, "the shape of dy_dx")
    return dy_dx + dz_dx
