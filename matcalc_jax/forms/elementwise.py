r"""Elementwise maps: df(x)/dx = diag(f'(x)), the logistic function, and the appendix's
scalar laws (power, exp, log, general logistic) applied elementwise.

An elementwise map's Jacobian is diagonal and therefore the same in both layouts. The
closed forms build the diagonal matrix with a mask (``where(i == j, d_i, 0)``), so the
off-diagonal entries are exact structural zeros: a NaN or inf in ``f'(x_k)`` appears at
``J[k, k]`` only (``jax.jacfwd`` multiplies it by zero tangents and spreads NaN along row k).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.arrays import diagonal_matrix
from matcalc_jax.core.layout import Layout, check_layout
from matcalc_jax.forms import activations
from matcalc_jax.operators import Diagonal


def logistic_prime(x: ArrayLike) -> Array:
    """The logistic derivative sigma'(x) = sigma(x)(1 - sigma(x)), elementwise, computed stably.

    Computed as e / (1 + e)^2 with e = exp(-|x|) in (0, 1], which is the
    same function (it is even in x) and never forms ``1 - sigma(x)``: the naive product
    cancels to exactly 0 in float64 from x = 37.4 on, where the true value is about 5.8e-17.
    Finite x never gives NaN or inf; x = +-inf gives 0; NaN gives NaN.

    >>> import jax.numpy as jnp
    >>> float(logistic_prime(jnp.float32(0.0)))
    0.25
    """
    return activations.logistic_prime(validate.floating("logistic_prime", "x", x))


def elementwise_jacobian(derivative: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """Jacobian of an elementwise map z_k = f(x_k): diag(f'(x)).

    Args:
      derivative: the vector f'(x) of shape (K,).
      layout: ``"numerator"`` or ``"denominator"``; the matrix is diagonal, so both agree.

    Returns:
      the (K, K) diagonal matrix.

    >>> import jax.numpy as jnp
    >>> elementwise_jacobian(jnp.array([1.0, 2.0], jnp.float32))
    Array([[1., 0.],
           [0., 2.]], dtype=float32)
    """
    check_layout("elementwise", layout)
    return diagonal_matrix(validate.vector("elementwise", "derivative", derivative))


def logistic_scalar_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """sigma'(x) = sigma(x)(1 - sigma(x)) for a scalar x (a 0-d array); see
    ``logistic_prime`` for how it stays exact in the tails."""
    check_layout("logistic_scalar", layout)
    return _logistic_scalar_derivative(x)


def _logistic_scalar_derivative(x: ArrayLike) -> Array:
    return logistic_prime(validate.scalar("logistic_scalar", "x", x))


def logistic_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """sigma'(x) = diag(sigma(x) * (1 - sigma(x))) for x of shape (K,), computed stably by
    ``logistic_prime``."""
    check_layout("logistic_vector", layout)
    return diagonal_matrix(_logistic_vector_derivative(x))


def _logistic_vector_derivative(x: ArrayLike) -> Array:
    return logistic_prime(validate.vector("logistic_vector", "x", x))


def power_jacobian(x: ArrayLike, r: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """Jacobian of x^r (elementwise): diag(r x^(r-1)).

    Args:
      x: shape (K,); positive where r is not an integer (as for ``x ** r`` itself).
      r: the exponent, a 0-d array.

    At x_k = 0 with r < 1 the entry is inf. For r = 0 (x^0 = 1 is constant) the Jacobian
    is the zero matrix, also at x_k = 0, where the naive ``0 * 0**-1`` would be NaN.
    """
    check_layout("power", layout)
    return diagonal_matrix(_power_derivative(x, r))


def _power_derivative(x: ArrayLike, r: ArrayLike) -> Array:
    x = validate.vector("power", "x", x)
    r = validate.scalar("power", "r", r)
    return jnp.where(r == 0, jnp.zeros_like(x), r * x ** (r - 1))


def exp_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """Jacobian of exp(x) (elementwise): diag(exp(x))."""
    check_layout("exp", layout)
    return diagonal_matrix(_exp_derivative(x))


def _exp_derivative(x: ArrayLike) -> Array:
    return jnp.exp(validate.vector("exp", "x", x))


def log_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """Jacobian of log(x) (elementwise): diag(1/x).

    The domain is x > 0; x_k = 0 gives +inf at J[k, k]. Outside it (x_k < 0, where
    ``log(x_k)`` is NaN) the entry is still 1/x_k, as ``jax.jacfwd`` of ``jnp.log`` gives.
    """
    check_layout("log", layout)
    return diagonal_matrix(_log_derivative(x))


def _log_derivative(x: ArrayLike) -> Array:
    return 1 / validate.vector("log", "x", x)


def logistic_general(x: ArrayLike, L: ArrayLike, k: ArrayLike, x0: ArrayLike) -> Array:
    """The general logistic function L / (1 + exp(-k (x - x0))), elementwise."""
    return L * jax.nn.sigmoid(k * (x - x0))


def logistic_general_jacobian(
    x: ArrayLike, L: ArrayLike, k: ArrayLike, x0: ArrayLike, *, layout: Layout = "numerator"
) -> Array:
    """Jacobian of the general logistic function f with respect to x:
    diag(L k sigma'(k (x - x0))), equivalently diag((k / L) f(x) * (L - f(x))); stable in
    the tails like ``logistic_prime``.

    Args:
      x: shape (K,).
      L: the maximum value, k: the steepness, x0: the midpoint; each a 0-d array.
    """
    check_layout("logistic_general", layout)
    return diagonal_matrix(_logistic_general_derivative(x, L, k, x0))


def _logistic_general_derivative(x: ArrayLike, L: ArrayLike, k: ArrayLike, x0: ArrayLike) -> Array:
    x = validate.vector("logistic_general", "x", x)
    L = validate.scalar("logistic_general", "L", L)
    k = validate.scalar("logistic_general", "k", k)
    x0 = validate.scalar("logistic_general", "x0", x0)
    return L * k * logistic_prime(k * (x - x0))


def diagonal_operator(rule_id: str, derivative: Callable[..., Array]) -> Callable[..., Diagonal]:
    """The structured twin of an elementwise rule: ``Diagonal(f'(x))``, from the same checked
    derivative function as the dense form's ``diagonal_matrix(f'(x))``."""

    def operator(*args: Any, layout: Layout = "numerator") -> Diagonal:
        return Diagonal(derivative(*args), check_layout(rule_id, layout))

    return operator


logistic_scalar_operator = diagonal_operator("logistic_scalar", _logistic_scalar_derivative)
logistic_operator = diagonal_operator("logistic_vector", _logistic_vector_derivative)
power_operator = diagonal_operator("power", _power_derivative)
exp_operator = diagonal_operator("exp", _exp_derivative)
log_operator = diagonal_operator("log", _log_derivative)
logistic_general_operator = diagonal_operator("logistic_general", _logistic_general_derivative)
