r"""Scalar functions of a matrix built from traces: tr(A X), tr(X^T A X), ||X||_F^2.

Their gradients have X's shape (in both layouts); the second-order ones have Hessians that
are Kronecker products, (A + A^T) (x) I and 2 I, applied without forming the (p, q, p, q)
tensor.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax import _random, _validate
from matcalc_jax._operators import Identity, Kronecker, Scaled
from matcalc_jax._rule import Rule, gradient_forms

COOKBOOK = "matrix-cookbook (Petersen & Pedersen, 2012)"


# ------------------------------------------------------------------------ tr(A X)


def _trace_linear_args(A: ArrayLike, X: ArrayLike) -> tuple[Array, Array]:
    X = _validate.matrix("trace_linear", "X", X)
    A = _validate.matrix("trace_linear", "A", A)
    _validate.shape(
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
    X = _validate.matrix("trace_quadratic", "X", X)
    A = _validate.matrix("trace_quadratic", "A", A)
    p = X.shape[0]
    _validate.shape("trace_quadratic", "A", A, (p, p), f"X^T A X with X of shape {X.shape}")
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
    X, A = _trace_quadratic_args(X, A)
    op = Kronecker(A + A.T, jnp.eye(X.shape[1], dtype=X.dtype))
    return op if structured else op.to_dense()


# ------------------------------------------------------------------------ ||X||_F^2


def frobenius_map(X: ArrayLike) -> Array:
    """||X||_F^2 = tr(X X^T) = sum of the squared entries."""
    X = _validate.matrix("frobenius", "X", X)
    return jnp.sum(jnp.square(X))


def frobenius_gradient(X: ArrayLike) -> Array:
    """d ||X||_F^2 / dX = 2 X."""
    X = _validate.matrix("frobenius", "X", X)
    return 2 * X


def frobenius_hessian(X: ArrayLike, *, structured: bool = False) -> Any:
    """The Hessian of ||X||_F^2: 2 I on (p, q) matrices; ``structured=True`` gives
    ``Scaled(2, Identity)``, which stores nothing but the shape."""
    X = _validate.matrix("frobenius", "X", X)
    op = Scaled(jnp.asarray(2, X.dtype), Identity(tuple(X.shape), X.dtype.name))
    return op if structured else op.to_dense()


# ---------------------------------------------------------------------- catalogue


def _trace_linear_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    ka, kx = jax.random.split(key)
    return _random.matrix(ka, size + 1, size, dtype), _random.normal(kx, (size, size + 1), dtype)


def _trace_quadratic_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    kx, ka = jax.random.split(key)
    return _random.normal(kx, (size, size + 1), dtype), _random.matrix(ka, size, size, dtype)


def _frobenius_example(key: Array, dtype: Any, size: int) -> tuple[Array]:
    return (_random.normal(key, (size, size + 1), dtype),)


_trace_linear_closed, _trace_linear_structured = gradient_forms(
    "trace_linear", trace_linear_gradient
)
_trace_quadratic_closed, _trace_quadratic_structured = gradient_forms(
    "trace_quadratic", trace_quadratic_gradient
)
_frobenius_closed, _frobenius_structured = gradient_forms("frobenius", frobenius_gradient)

RULES = (
    Rule(
        id="trace_linear",
        title="Trace of a linear function",
        formula=r"\frac{\partial \operatorname{tr}(A X)}{\partial X}=A^{\mathrm{T}}",
        numerator_formula=r"A^{\mathrm{T}}",
        plain="d tr(AX)/dX = A^T",
        source=f"{COOKBOOK} sec. 2.5.1",
        shapes="A in R^{q x p}, X in R^{p x q}",
        fn=trace_linear_map,
        wrt=1,
        closed_form=_trace_linear_closed,
        structured_form=_trace_linear_structured,
        public="matcalc_jax.trace_linear_gradient",
        make_example=_trace_linear_example,
    ),
    Rule(
        id="trace_quadratic",
        title="Trace of a quadratic function",
        formula=r"\frac{\partial \operatorname{tr}(X^{\mathrm{T}} A X)}{\partial X}"
        r"=\left(A+A^{\mathrm{T}}\right) X",
        numerator_formula=r"\left(A+A^{\mathrm{T}}\right) X,\ "
        r"\nabla^2: \left(A+A^{\mathrm{T}}\right) \otimes I",
        plain="d tr(X^T A X)/dX = (A + A^T) X; Hessian (A + A^T) (x) I",
        source=f"{COOKBOOK} sec. 2.5.2",
        shapes="X in R^{p x q}, A in R^{p x p}",
        fn=trace_quadratic_map,
        wrt=0,
        closed_form=_trace_quadratic_closed,
        structured_form=_trace_quadratic_structured,
        public="matcalc_jax.trace_quadratic_gradient",
        make_example=_trace_quadratic_example,
        hessian_form=trace_quadratic_hessian,
        structured_hessian_form=partial(trace_quadratic_hessian, structured=True),
    ),
    Rule(
        id="frobenius",
        title="Squared Frobenius norm",
        formula=r"\frac{\partial\|X\|_{F}^{2}}{\partial X}=2 X",
        numerator_formula=r"2 X,\ \nabla^2: 2 I",
        plain="d ||X||_F^2/dX = 2X; Hessian 2I",
        source=f"{COOKBOOK} sec. 2.5.2",
        shapes="X in R^{p x q}",
        fn=frobenius_map,
        wrt=0,
        closed_form=_frobenius_closed,
        structured_form=_frobenius_structured,
        public="matcalc_jax.frobenius_gradient",
        make_example=_frobenius_example,
        hessian_form=frobenius_hessian,
        structured_hessian_form=partial(frobenius_hessian, structured=True),
        notes="Overflows to inf like the map once sum(X^2) exceeds the dtype's range; the "
        "gradient 2X stays finite.",
    ),
)
