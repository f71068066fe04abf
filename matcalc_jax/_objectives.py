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

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax import _activations, _random, _validate
from matcalc_jax._elementwise import logistic_prime
from matcalc_jax._operators import Dense, DiagonalPlusLowRank, Sum, WeightedGram
from matcalc_jax._rule import Rule, gradient_forms
from matcalc_jax._softmax import _softmax_structured, softmax_jacobian
from matcalc_jax._traces import COOKBOOK

# ---------------------------------------------------------------------- x^T A x


def _quadratic_args(x: ArrayLike, A: ArrayLike) -> tuple[Array, Array]:
    x = _validate.vector("quadratic_form", "x", x)
    A = _validate.matrix("quadratic_form", "A", A)
    n = x.shape[0]
    _validate.shape("quadratic_form", "A", A, (n, n), f"x^T A x with x of shape {x.shape}")
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
    x, A = _quadratic_args(x, A)
    op = Sum((Dense(A, 1), Dense(A, 1, stored="denominator")))
    return op if structured else op.to_dense()


# --------------------------------------------------------------------- ||Ax - b||^2


def _least_squares_args(x: ArrayLike, A: ArrayLike, b: ArrayLike) -> tuple[Array, ...]:
    x = _validate.vector("least_squares", "x", x)
    A = _validate.matrix_acting_on("least_squares", "A", A, "x", x)
    b = _validate.vector("least_squares", "b", b)
    _validate.shape("least_squares", "b", b, (A.shape[0],), f"the rows of A, {tuple(A.shape)}")
    return x, A, b


def least_squares(x: ArrayLike, A: ArrayLike, b: ArrayLike) -> Array:
    """||A x - b||^2 for A (m, n), x (n,), b (m,)."""
    x, A, b = _least_squares_args(x, A, b)
    return jnp.sum(jnp.square(A @ x - b))


def least_squares_gradient(x: ArrayLike, A: ArrayLike, b: ArrayLike) -> Array:
    """d||A x - b||^2/dx = 2 A^T (A x - b)."""
    x, A, b = _least_squares_args(x, A, b)
    return 2 * ((A @ x - b) @ A)


def least_squares_hessian(
    x: ArrayLike, A: ArrayLike, b: ArrayLike, *, structured: bool = False
) -> Any:
    """The Hessian of ||A x - b||^2: 2 A^T A, constant in x.

    ``structured=True`` gives ``WeightedGram(A, 2)``, whose ``mv`` is 2 A^T (A v): O(m n)
    instead of the O(m n^2) of forming A^T A.
    """
    x, A, b = _least_squares_args(x, A, b)
    weights = jnp.full((A.shape[0],), 2, A.dtype)
    gram = WeightedGram(A, weights)
    return gram if structured else gram.to_dense()


# ---------------------------------------------------------------- logistic regression


def _logistic_args(w: ArrayLike, X: ArrayLike, y: ArrayLike) -> tuple[Array, ...]:
    w = _validate.vector("logistic_regression", "w", w)
    X = _validate.matrix_acting_on("logistic_regression", "X", X, "w", w)
    y = _validate.vector("logistic_regression", "y", y)
    _validate.shape(
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
    return (_activations.sigmoid(X @ w) - y) @ X


def logistic_regression_hessian(
    w: ArrayLike, X: ArrayLike, y: ArrayLike, *, structured: bool = False
) -> Any:
    """X^T diag(s(1 - s)) X with s = sigma(X w); s(1 - s) from ``logistic_prime``, which keeps
    full relative accuracy in the tails (no 1 - s cancellation).

    ``structured=True`` gives ``WeightedGram(X, s(1 - s))``: Hessian-vector products in
    O(n d), its diagonal in O(n d), the (d, d) matrix only on ``to_dense()``.
    """
    w, X, _ = _logistic_args(w, X, y)
    gram = WeightedGram(X, logistic_prime(X @ w))
    return gram if structured else gram.to_dense()


# ------------------------------------------------------------ softmax cross-entropy


def _cross_entropy_args(z: ArrayLike, t: ArrayLike) -> tuple[Array, Array]:
    z = _validate.vector("softmax_cross_entropy", "z", z)
    t = _validate.vector("softmax_cross_entropy", "t", t)
    _validate.shape("softmax_cross_entropy", "t", t, z.shape, "one target per logit")
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
    z, t = _cross_entropy_args(z, t)
    total = jnp.sum(t)
    if structured:
        op = _softmax_structured(z)
        return DiagonalPlusLowRank(total * op.values, total * op.U, op.V)
    return total * softmax_jacobian(z)


# ---------------------------------------------------------------------- catalogue


def _quadratic_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    kx, ka = jax.random.split(key)
    return _random.normal(kx, (size,), dtype), _random.matrix(ka, size, size, dtype)


def _least_squares_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, ka, kb = jax.random.split(key, 3)
    m = size + 3
    return (
        _random.normal(kx, (size,), dtype),
        _random.matrix(ka, m, size, dtype),
        _random.normal(kb, (m,), dtype),
    )


def _logistic_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    """w (d,), X (d + 3, d) with rows of norm about one (logits of order one), 0/1 labels."""
    kw, kx, ky = jax.random.split(key, 3)
    n = size + 3
    labels = jax.random.bernoulli(ky, 0.5, (n,)).astype(dtype)
    return _random.normal(kw, (size,), dtype), _random.matrix(kx, n, size, dtype), labels


def _cross_entropy_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    """Logits z (K,) and soft targets t = softmax of other logits (a probability vector)."""
    kz, kt = jax.random.split(key)
    return _random.normal(kz, (size,), dtype), jax.nn.softmax(_random.normal(kt, (size,), dtype))


def _scalar_rule(rule_id: str, gradient: Any, hessian: Any, **fields: Any) -> Rule:
    closed, structured = gradient_forms(rule_id, gradient)
    return Rule(
        id=rule_id,
        wrt=0,
        closed_form=closed,
        structured_form=structured,
        hessian_form=hessian,
        structured_hessian_form=partial(hessian, structured=True),
        **fields,
    )


_PRML = "Bishop, Pattern Recognition and Machine Learning (2006)"

RULES = (
    _scalar_rule(
        "quadratic_form",
        quadratic_form_gradient,
        quadratic_form_hessian,
        title="Quadratic form",
        formula=r"\frac{\partial \mathbf{x}^{\mathrm{T}} A \mathbf{x}}{\partial \mathbf{x}}"
        r"=\left(A+A^{\mathrm{T}}\right) \mathbf{x}",
        numerator_formula=r"\left(A+A^{\mathrm{T}}\right) \mathbf{x},\ "
        r"\nabla^2=A+A^{\mathrm{T}}",
        plain="d(x^T A x)/dx = (A + A^T) x; Hessian A + A^T",
        source=f"{COOKBOOK} eq. (81)",
        shapes="x in R^n, A in R^{n x n}",
        fn=quadratic_form,
        public="matcalc_jax.quadratic_form_gradient",
        make_example=_quadratic_example,
    ),
    _scalar_rule(
        "least_squares",
        least_squares_gradient,
        least_squares_hessian,
        title="Least squares",
        formula=r"\frac{\partial\|A \mathbf{x}-\mathbf{b}\|^{2}}{\partial \mathbf{x}}"
        r"=2 A^{\mathrm{T}}(A \mathbf{x}-\mathbf{b})",
        numerator_formula=r"2 A^{\mathrm{T}}(A \mathbf{x}-\mathbf{b}),\ "
        r"\nabla^2=2 A^{\mathrm{T}} A",
        plain="d||Ax - b||^2/dx = 2 A^T (Ax - b); Hessian 2 A^T A",
        source=f"{COOKBOOK} eq. (84) with W = I",
        shapes="A in R^{m x n}, x in R^n, b in R^m",
        fn=least_squares,
        public="matcalc_jax.least_squares_gradient",
        make_example=_least_squares_example,
    ),
    _scalar_rule(
        "logistic_regression",
        logistic_regression_gradient,
        logistic_regression_hessian,
        title="Logistic regression",
        formula=r"\nabla E(\mathbf{w})=\Phi^{\mathrm{T}}(\mathbf{y}-\mathbf{t}),\ "
        r"H=\Phi^{\mathrm{T}} R \Phi",
        numerator_formula=r"X^{\mathrm{T}}(\mathbf{s}-\mathbf{y}),\ "
        r"\nabla^2=X^{\mathrm{T}} \operatorname{diag}(\mathbf{s} \odot(1-\mathbf{s})) X,\ "
        r"\mathbf{s}=\sigma(X \mathbf{w})",
        plain="gradient X^T (s - y); Hessian X^T diag(s(1-s)) X, s = sigma(Xw)",
        source=f"{_PRML} sec. 4.3.2-4.3.3",
        shapes="w in R^d, X in R^{n x d}, y in [0, 1]^n; loss sum log(1 + e^z) - y z, z = X w",
        fn=logistic_regression_loss,
        public="matcalc_jax.logistic_regression_gradient",
        make_example=_logistic_example,
        notes="Loss, gradient and Hessian are finite for any finite logits (logaddexp; "
        "s(1 - s) by logistic_prime, accurate in the tails).",
    ),
    _scalar_rule(
        "softmax_cross_entropy",
        softmax_cross_entropy_gradient,
        softmax_cross_entropy_hessian,
        title="Softmax cross-entropy",
        formula=r"\frac{\partial \mathcal{L}}{\partial \mathbf{z}}"
        r"=\operatorname{softmax}(\mathbf{z})-\mathbf{t}",
        numerator_formula=r"\textstyle\sum_k t_k\, \mathbf{p}-\mathbf{t},\ "
        r"\nabla^2=\textstyle\sum_k t_k \left(\operatorname{diag}(\mathbf{p})-\mathbf{p} "
        r"\mathbf{p}^{\mathrm{T}}\right),\ \mathbf{p}=\operatorname{softmax}(\mathbf{z})",
        plain="dL/dz = softmax(z) - t; Hessian diag(p) - p p^T (targets summing to one)",
        source=f"{_PRML} sec. 4.3.4",
        shapes="z in R^K, t in R^K (one-hot or a probability vector); L = -sum t log softmax(z)",
        fn=softmax_cross_entropy,
        public="matcalc_jax.softmax_cross_entropy_gradient",
        make_example=_cross_entropy_example,
        notes="Max-shifted (log_softmax): finite for any finite logits.",
    ),
)
