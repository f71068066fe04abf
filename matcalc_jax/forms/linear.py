r"""The page's "three important formulas": dx/dx = I, d(Ax)/dx = A^T, d(x^T A)/dx = A.

They are printed in denominator layout; in numerator layout (JAX's) d(Ax)/dx = A and
d(x^T A)/dx = A^T.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout, check_layout
from matcalc_jax.operators import Dense, Identity


def _matrix_vector(rule_id: str, A: ArrayLike, x: ArrayLike, axis: int) -> tuple[Array, Array]:
    """Check that A is a matrix whose ``axis`` matches the length of the vector x."""
    A = validate.matrix(rule_id, "A", A)
    x = validate.vector(rule_id, "x", x)
    side = "columns" if axis == 1 else "rows"
    validate.shape(rule_id, "x", x, (A.shape[axis],), f"the number of {side} of A, shape {A.shape}")
    return A, x


def identity_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """dx/dx = I, the (n, n) identity in x's dtype.

    >>> import jax.numpy as jnp
    >>> identity_jacobian(jnp.zeros(2, jnp.float32))
    Array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    check_layout("identity", layout)
    x = validate.vector("identity", "x", x)
    return jnp.eye(x.shape[0], dtype=x.dtype)


def linear_jacobian(A: ArrayLike, x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """d(Ax)/dx: A in numerator layout, A^T in denominator layout (the seed's form).

    Args:
      A: shape (n, m).
      x: shape (m,); the Jacobian does not depend on its values, only its shape is checked.

    >>> import jax.numpy as jnp
    >>> A = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    >>> linear_jacobian(A, jnp.zeros(3), layout="denominator").shape
    (3, 2)
    """
    layout = check_layout("linear", layout)
    A, _ = _matrix_vector("linear", A, x, axis=1)
    return A if layout == "numerator" else A.T


def linear_transposed_jacobian(
    x: ArrayLike, A: ArrayLike, *, layout: Layout = "numerator"
) -> Array:
    """d(x^T A)/dx: A^T in numerator layout,
    A in denominator layout (the seed's form).

    Args:
      x: shape (m,).
      A: shape (m, n).
    """
    layout = check_layout("linear_transposed", layout)
    A, _ = _matrix_vector("linear_transposed", A, x, axis=0)
    return A.T if layout == "numerator" else A


# ----------------------------------------------------------- structured twins and maps


def identity_operator(x: ArrayLike, *, layout: Layout = "numerator") -> Identity:
    layout = check_layout("identity", layout)
    x = validate.vector("identity", "x", x)
    return Identity(tuple(x.shape), x.dtype.name, layout)


def linear_operator(A: ArrayLike, x: ArrayLike, *, layout: Layout = "numerator") -> Dense:
    layout = check_layout("linear", layout)
    A, _ = _matrix_vector("linear", A, x, axis=1)
    return Dense(A, 1, layout)


def linear_transposed_operator(
    x: ArrayLike, A: ArrayLike, *, layout: Layout = "numerator"
) -> Dense:
    layout = check_layout("linear_transposed", layout)
    A, _ = _matrix_vector("linear_transposed", A, x, axis=0)
    return Dense(A, 1, layout, stored="denominator")  # A is (m, n) = in + out: no transpose


def linear_map(A: ArrayLike, x: ArrayLike) -> Array:
    """``A @ x`` with the shapes checked."""
    A, x = _matrix_vector("linear", A, x, axis=1)
    return A @ x


def linear_transposed_map(x: ArrayLike, A: ArrayLike) -> Array:
    """``x @ A`` (the row vector x^T A, stored as a vector) with the shapes checked."""
    A, x = _matrix_vector("linear_transposed", A, x, axis=0)
    return x @ A
