r"""Scalar functions of a matrix built from traces: tr(A X), tr(X^T A X), ||X||_F^2.

Their gradients have X's shape (in both layouts); the second-order ones have Hessians that
are Kronecker products, (A + A^T) (x) I and 2 I, applied without forming the (p, q, p, q)
tensor.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.operators import Identity, Kronecker, Scaled

# ------------------------------------------------------------------------ tr(A X)


def _trace_linear_args(A: ArrayLike, X: ArrayLike) -> tuple[Array, Array]:
    X = validate.matrix("trace_linear", "X", X)
    A = validate.matrix("trace_linear", "A", A)
    validate.shape(
        "trace_linear", "A", A, X.shape[::-1], f"A @ X square, with X of shape {X.shape}"
    )
    return A, X


def trace_linear_map(A: ArrayLike, X: ArrayLike) -> Array:
    """tr(A X) for A (q, p) and X (p, q)."""
    A, X = _trace_linear_args(A, X)
    return jnp.trace(A @ X)


def trace_linear_gradient(A: ArrayLike, X: ArrayLike) -> Array:
    """d tr(A X)/dX = A^T, of shape (p, q).

    >>> import jax.numpy as jnp
    >>> trace_linear_gradient(jnp.array([[1.0, 2.0]], jnp.float32), jnp.ones((2, 1), jnp.float32))
    Array([[1.],
           [2.]], dtype=float32)
    """
    A, _ = _trace_linear_args(A, X)
    return A.T


# -------------------------------------------------------------------- tr(X^T A X)


def _trace_quadratic_args(X: ArrayLike, A: ArrayLike) -> tuple[Array, Array]:
    X = validate.matrix("trace_quadratic", "X", X)
    A = validate.matrix("trace_quadratic", "A", A)
    p = X.shape[0]
    validate.shape("trace_quadratic", "A", A, (p, p), f"X^T A X with X of shape {X.shape}")
    return X, A


def trace_quadratic_map(X: ArrayLike, A: ArrayLike) -> Array:
    """tr(X^T A X) for X (p, q) and A (p, p)."""
    X, A = _trace_quadratic_args(X, A)
    return jnp.trace(X.T @ A @ X)


def trace_quadratic_gradient(X: ArrayLike, A: ArrayLike) -> Array:
    """d tr(X^T A X)/dX = (A + A^T) X, of shape (p, q)."""
    X, A = _trace_quadratic_args(X, A)
    return A @ X + jnp.einsum("ji,jk->ik", A, X)  # A^T X without forming A^T


def trace_quadratic_hessian(X: ArrayLike, A: ArrayLike, *, structured: bool = False) -> Any:
    """The Hessian of tr(X^T A X): H_ij,kl = (A + A^T)_ik delta_jl, the map V -> (A + A^T) V.

    Returns the (p, q, p, q) array, or with ``structured=True`` the operator
    ``Kronecker(A + A^T, I)`` whose ``mv`` costs one (p, p) x (p, q) product.
    """
    structured = validate.flag("trace_quadratic", "structured", structured)
    X, A = _trace_quadratic_args(X, A)
    op = Kronecker(A + A.T, jnp.eye(X.shape[1], dtype=X.dtype))
    return op if structured else op.to_dense()


# ------------------------------------------------------------------------ ||X||_F^2


def frobenius_map(X: ArrayLike) -> Array:
    """||X||_F^2 = tr(X X^T) = sum of the squared entries."""
    X = validate.matrix("frobenius", "X", X)
    return jnp.sum(jnp.square(X))


def frobenius_gradient(X: ArrayLike) -> Array:
    """d ||X||_F^2 / dX = 2 X."""
    X = validate.matrix("frobenius", "X", X)
    return 2 * X


def frobenius_hessian(X: ArrayLike, *, structured: bool = False) -> Any:
    """The Hessian of ||X||_F^2: 2 I on (p, q) matrices; ``structured=True`` gives
    ``Scaled(2, Identity)``, which stores nothing but the shape."""
    structured = validate.flag("frobenius", "structured", structured)
    X = validate.matrix("frobenius", "X", X)
    op = Scaled(jnp.asarray(2, X.dtype), Identity(tuple(X.shape), X.dtype.name))
    return op if structured else op.to_dense()
