r"""Scalar objectives with closed-form gradients and Hessians.

============================  ============================  ==================================
objective                     gradient                      Hessian (structured form)
============================  ============================  ==================================
x^T A x                       (A + A^T) x                   A + A^T (a sum of two ``Dense``)
||A x - b||^2                 2 A^T (A x - b)               2 A^T A (``WeightedGram``)
logistic regression NLL       X^T (s - y)                   X^T diag(s(1 - s)) X
                                                            (``WeightedGram``)
softmax cross-entropy         sum(t) softmax(z) - t         sum(t) (diag(p) - p p^T)
                                                            (``DiagonalPlusLowRank``)
============================  ============================  ==================================

The structured Hessians are never multiplied out: a Hessian-vector product of logistic
regression is X^T (w * (X v)), O(n d), where the dense Hessian costs O(n d^2) to form.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.sharding import sum_over_rows
from matcalc_jax.forms import activations
from matcalc_jax.forms.elementwise import logistic_prime
from matcalc_jax.forms.softmax import softmax_jacobian, softmax_operator
from matcalc_jax.operators import Dense, DiagonalPlusLowRank, Sum, WeightedGram

# ---------------------------------------------------------------------- x^T A x


def _quadratic_args(x: ArrayLike, A: ArrayLike) -> tuple[Array, Array]:
    x = validate.vector("quadratic_form", "x", x)
    A = validate.matrix("quadratic_form", "A", A)
    n = x.shape[0]
    validate.shape("quadratic_form", "A", A, (n, n), f"x^T A x with x of shape {x.shape}")
    return x, A


def quadratic_form(x: ArrayLike, A: ArrayLike) -> Array:
    """x^T A x for x (n,) and a square A (n, n), not necessarily symmetric."""
    x, A = _quadratic_args(x, A)
    return x @ (A @ x)


def quadratic_form_gradient(x: ArrayLike, A: ArrayLike) -> Array:
    """d(x^T A x)/dx = (A + A^T) x = A x + x A (``x @ A`` is A^T x without a transpose)."""
    x, A = _quadratic_args(x, A)
    return A @ x + x @ A


def quadratic_form_hessian(x: ArrayLike, A: ArrayLike, *, structured: bool = False) -> Any:
    """The Hessian of x^T A x: A + A^T, constant in x.

    ``structured=True`` gives ``Dense(A) + Dense(A^T)`` (A stored once, read both ways), whose
    ``mv`` is A v + v A: the Hessian-vector product without forming A + A^T.
    """
    structured = validate.flag("quadratic_form", "structured", structured)
    x, A = _quadratic_args(x, A)
    op = Sum((Dense(A, 1), Dense(A, 1, stored="denominator")))
    return op if structured else op.to_dense()


# --------------------------------------------------------------------- ||Ax - b||^2


def _least_squares_args(x: ArrayLike, A: ArrayLike, b: ArrayLike) -> tuple[Array, ...]:
    x = validate.vector("least_squares", "x", x)
    A = validate.matrix_acting_on("least_squares", "A", A, "x", x)
    b = validate.vector("least_squares", "b", b)
    validate.shape("least_squares", "b", b, (A.shape[0],), f"the rows of A, {tuple(A.shape)}")
    return x, A, b


def least_squares(x: ArrayLike, A: ArrayLike, b: ArrayLike) -> Array:
    """||A x - b||^2 for A (m, n), x (n,), b (m,)."""
    x, A, b = _least_squares_args(x, A, b)
    return jnp.sum(jnp.square(A @ x - b))


def least_squares_gradient(x: ArrayLike, A: ArrayLike, b: ArrayLike) -> Array:
    """d||A x - b||^2/dx = 2 A^T (A x - b)."""
    x, A, b = _least_squares_args(x, A, b)
    return 2 * sum_over_rows("k,kd->d", A @ x - b, A)  # rows of A may be sharded


def least_squares_hessian(
    x: ArrayLike, A: ArrayLike, b: ArrayLike, *, structured: bool = False
) -> Any:
    """The Hessian of ||A x - b||^2: 2 A^T A, constant in x.

    ``structured=True`` gives ``WeightedGram(A, 2)``, whose ``mv`` is 2 A^T (A v): O(m n)
    instead of the O(m n^2) of forming A^T A.
    """
    structured = validate.flag("least_squares", "structured", structured)
    x, A, b = _least_squares_args(x, A, b)
    weights = jnp.full((A.shape[0],), 2, A.dtype)
    gram = WeightedGram(A, weights)
    return gram if structured else gram.to_dense()


# ---------------------------------------------------------------- logistic regression


def _logistic_args(w: ArrayLike, X: ArrayLike, y: ArrayLike) -> tuple[Array, ...]:
    w = validate.vector("logistic_regression", "w", w)
    X = validate.matrix_acting_on("logistic_regression", "X", X, "w", w)
    y = validate.vector("logistic_regression", "y", y)
    validate.shape(
        "logistic_regression", "y", y, (X.shape[0],), f"one label per row of X, {tuple(X.shape)}"
    )
    return w, X, y


def logistic_regression_loss(w: ArrayLike, X: ArrayLike, y: ArrayLike) -> Array:
    """The negative log-likelihood sum_k [log(1 + exp(x_k^T w)) - y_k x_k^T w].

    Args:
      w: weights (d,).
      X: inputs, one example per row (n, d).
      y: labels in [0, 1] (n,): 0/1, or probabilities.

    Written with ``logaddexp(0, z)``, so it is finite for any finite logits z = X w.
    """
    w, X, y = _logistic_args(w, X, y)
    z = X @ w
    return jnp.sum(jnp.logaddexp(jnp.zeros((), z.dtype), z) - y * z)


def logistic_regression_gradient(w: ArrayLike, X: ArrayLike, y: ArrayLike) -> Array:
    """X^T (s - y) with s = sigma(X w)."""
    w, X, y = _logistic_args(w, X, y)
    return sum_over_rows("k,kd->d", activations.sigmoid(X @ w) - y, X)  # X may be row-sharded


def logistic_regression_hessian(
    w: ArrayLike, X: ArrayLike, y: ArrayLike, *, structured: bool = False
) -> Any:
    """X^T diag(s(1 - s)) X with s = sigma(X w); s(1 - s) from ``logistic_prime``, which keeps
    full relative accuracy in the tails (no 1 - s cancellation).

    ``structured=True`` gives ``WeightedGram(X, s(1 - s))``: Hessian-vector products in
    O(n d), its diagonal in O(n d), the (d, d) matrix only on ``to_dense()``.
    """
    structured = validate.flag("logistic_regression", "structured", structured)
    w, X, _ = _logistic_args(w, X, y)
    gram = WeightedGram(X, logistic_prime(X @ w))
    return gram if structured else gram.to_dense()


# ------------------------------------------------------------ softmax cross-entropy


def _cross_entropy_args(z: ArrayLike, t: ArrayLike) -> tuple[Array, Array]:
    z = validate.vector("softmax_cross_entropy", "z", z)
    t = validate.vector("softmax_cross_entropy", "t", t)
    validate.shape("softmax_cross_entropy", "t", t, z.shape, "one target per logit")
    return z, t


def softmax_cross_entropy(z: ArrayLike, t: ArrayLike) -> Array:
    """-sum_k t_k log softmax(z)_k for logits z (K,) and targets t (K,) (one-hot or a
    probability vector), with ``jax.nn.log_softmax`` (max-shifted, finite for large z)."""
    z, t = _cross_entropy_args(z, t)
    return -jnp.sum(t * jax.nn.log_softmax(z))


def softmax_cross_entropy_gradient(z: ArrayLike, t: ArrayLike) -> Array:
    """sum(t) softmax(z) - t: softmax(z) - t for targets that sum to one."""
    z, t = _cross_entropy_args(z, t)
    return jnp.sum(t) * jax.nn.softmax(z) - t


def softmax_cross_entropy_hessian(z: ArrayLike, t: ArrayLike, *, structured: bool = False) -> Any:
    """sum(t) (diag(p) - p p^T) with p = softmax(z): the softmax Jacobian, scaled.

    The dense form is ``softmax_jacobian``'s (full relative accuracy on the diagonal);
    ``structured=True`` gives a ``DiagonalPlusLowRank`` (O(K) memory and products).
    """
    structured = validate.flag("softmax_cross_entropy", "structured", structured)
    z, t = _cross_entropy_args(z, t)
    total = jnp.sum(t)
    if structured:
        op = softmax_operator(z)
        return DiagonalPlusLowRank(total * op.values, total * op.U, op.V)
    return total * softmax_jacobian(z)
