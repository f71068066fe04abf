r"""The page's "three important formulas": dx/dx = I, d(Ax)/dx = A^T, d(x^T A)/dx = A.

They are printed in denominator layout; in numerator layout (JAX's) d(Ax)/dx = A and
d(x^T A)/dx = A^T.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax import _random, _validate
from matcalc_jax._layout import Layout, check_layout
from matcalc_jax._operators import Dense, Identity
from matcalc_jax._rule import Rule


def _matrix_vector(rule_id: str, A: ArrayLike, x: ArrayLike, axis: int) -> tuple[Array, Array]:
    """Check that A is a matrix whose ``axis`` matches the length of the vector x."""
    A = _validate.matrix(rule_id, "A", A)
    x = _validate.vector(rule_id, "x", x)
    side = "columns" if axis == 1 else "rows"
    _validate.shape(
        rule_id, "x", x, (A.shape[axis],), f"the number of {side} of A, shape {A.shape}"
    )
    return A, x


def identity_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """dx/dx = I, the (n, n) identity in x's dtype.

    >>> import jax.numpy as jnp
    >>> identity_jacobian(jnp.zeros(2, jnp.float32))
    Array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    check_layout("identity", layout)
    x = _validate.vector("identity", "x", x)
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


# ---------------------------------------------------------------------------- catalogue


def _identity_structured(x: ArrayLike, *, layout: Layout = "numerator") -> Identity:
    layout = check_layout("identity", layout)
    x = _validate.vector("identity", "x", x)
    return Identity(tuple(x.shape), x.dtype.name, layout)


def _linear_structured(A: ArrayLike, x: ArrayLike, *, layout: Layout = "numerator") -> Dense:
    layout = check_layout("linear", layout)
    A, _ = _matrix_vector("linear", A, x, axis=1)
    return Dense(A, 1, layout)


def _linear_transposed_structured(
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


def _linear_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    ka, kx = jax.random.split(key)
    return _random.matrix(ka, size + 1, size, dtype), _random.normal(kx, (size,), dtype)


def _linear_transposed_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    A, x = _linear_example(key, dtype, size)
    return x, A.T


RULES = (
    Rule(
        id="identity",
        title="Identity",
        formula=r"\frac{\partial \mathbf{x}}{\partial \mathbf{x}}=I",
        numerator_formula=r"I",
        plain="dx/dx = I",
        source="seed",
        shapes="x in R^n",
        fn=lambda x: _validate.vector("identity", "x", x),
        wrt=0,
        closed_form=identity_jacobian,
        structured_form=_identity_structured,
        public="matcalc_jax.identity_jacobian",
        make_example=lambda key, dtype, size: (_random.normal(key, (size,), dtype),),
    ),
    Rule(
        id="linear",
        title="Linear map",
        formula=r"\frac{\partial A \mathbf{x}}{\partial \mathbf{x}}=A^{\mathrm{T}}",
        numerator_formula=r"A",
        plain="d(Ax)/dx = A^T",
        source="seed",
        shapes="A in R^{n x m}, x in R^m",
        fn=linear_map,
        wrt=1,
        closed_form=linear_jacobian,
        structured_form=_linear_structured,
        public="matcalc_jax.linear_jacobian",
        make_example=_linear_example,
    ),
    Rule(
        id="linear_transposed",
        title="Transposed linear map",
        formula=r"\frac{\partial \mathbf{x}^{\mathrm{T}} A}{\partial \mathbf{x}}=A",
        numerator_formula=r"A^{\mathrm{T}}",
        plain="d(x^T A)/dx = A",
        source="seed",
        shapes="x in R^m, A in R^{m x n}",
        fn=linear_transposed_map,
        wrt=0,
        closed_form=linear_transposed_jacobian,
        structured_form=_linear_transposed_structured,
        public="matcalc_jax.linear_transposed_jacobian",
        make_example=_linear_transposed_example,
    ),
)
