"""diag(f'(x)): the derivatives of JAX's elementwise primitives, written out.

Each entry gives the partial derivative of a primitive's output with respect to one operand,
as an array of the output's shape, from the operands and the output ``y``. They are the
formulas JAX's own differentiation rules use (``jax/_src/lax/lax.py``, arranged the same way,
so ties and special points agree: ``max`` splits a tie in half, ``abs'(0) = 1``,
``pow``'s ``0 * x^(-1)`` is 0), but evaluated once, as the diagonal of the Jacobian, instead
of on every tangent.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jax import Array, lax

# Python floats, weakly typed: a constant never widens a float32 derivative (and is legal
# under jax_numpy_dtype_promotion="strict").
_TWO_OVER_SQRT_PI = float(2 / np.sqrt(np.pi))
_SQRT_PI_OVER_TWO = float(np.sqrt(np.pi) / 2)

#: f'(x) for unary maps y = f(x), as a function of (x, y).
UNARY: dict[str, Callable[[Array, Array], Array]] = {
    "exp": lambda x, y: y,
    "exp2": lambda x, y: np.log(2.0).astype(x.dtype) * y,
    "log": lambda x, y: 1 / x,
    "log1p": lambda x, y: 1 / (x + 1),
    "expm1": lambda x, y: y + 1,
    "tanh": lambda x, y: (1 + y) * (1 - y),
    "logistic": lambda x, y: y * (1 - y),
    "sin": lambda x, y: jnp.cos(x),
    "cos": lambda x, y: -jnp.sin(x),
    "tan": lambda x, y: 1 + jnp.square(y),
    "asin": lambda x, y: lax.rsqrt(1 - jnp.square(x)),
    "acos": lambda x, y: -lax.rsqrt(1 - jnp.square(x)),
    "atan": lambda x, y: 1 / (1 + jnp.square(x)),
    "sinh": lambda x, y: jnp.cosh(x),
    "cosh": lambda x, y: jnp.sinh(x),
    "asinh": lambda x, y: lax.rsqrt(jnp.square(x) + 1),
    "acosh": lambda x, y: lax.rsqrt((x - 1) * (x + 1)),
    "atanh": lambda x, y: (1 / (1 + x)) * (1 / (1 - x)),  # as JAX arranges it
    "sqrt": lambda x, y: 0.5 / y,
    "rsqrt": lambda x, y: -0.5 * (y / x),
    "cbrt": lambda x, y: lax.integer_pow(y, -2) / 3,
    "square": lambda x, y: 2 * x,
    # JAX 0.11 and later: 1 - x^2 as (1 + x)(1 - x), tanh's derivative in its jvp.
    "one_minus_square": lambda x, y: -2 * x,
    # JAX: select(x >= 0, g, -g): 1 at 0 and -0, -1 at NaN.
    "abs": lambda x, y: jnp.where(x >= 0, jnp.ones((), y.dtype), -jnp.ones((), y.dtype)),
    "erf": lambda x, y: _TWO_OVER_SQRT_PI * jnp.exp(-jnp.square(x)),
    "erfc": lambda x, y: -_TWO_OVER_SQRT_PI * jnp.exp(-jnp.square(x)),
    "erf_inv": lambda x, y: _SQRT_PI_OVER_TWO * jnp.exp(jnp.square(y)),
    "lgamma": lambda x, y: lax.digamma(x),
    # polygamma(1, x) with a scalar order, as JAX's jvp binds it.
    "digamma": lambda x, y: lax.polygamma(np.array(1, x.dtype), x),
    # the exponentially scaled Bessel functions: i0e' = i1e - sign(x) i0e, and i1e' below
    "bessel_i0e": lambda x, y: lax.bessel_i1e(x) - jnp.sign(x) * y,
    "bessel_i1e": lambda x, y: _bessel_i1e(x, y),
}


def _bessel_i1e(x: Array, y: Array) -> Array:
    """i1e'(x) = i0e(x) - i1e(x) (sign(x) + 1/x), 1/2 where |x| <= eps (its limit at 0),
    arranged as JAX's jvp arranges it."""
    eps = float(jnp.finfo(x.dtype).eps)
    not_tiny = jnp.abs(x) > eps
    safe = jnp.where(not_tiny, x, jnp.full_like(x, eps))
    derivative = lax.bessel_i0e(safe) - y * (jnp.sign(safe) + 1 / safe)
    return jnp.where(not_tiny, derivative, jnp.full_like(x, 0.5))


#: The maps above that are holomorphic: the same formula is their complex derivative.
HOLOMORPHIC = (
    "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin",
    "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "sqrt", "rsqrt", "square",
    "one_minus_square",
)  # fmt: skip

#: Maps whose derivative is zero wherever it exists (JAX differentiates them to zero).
PIECEWISE_CONSTANT = ("sign", "floor", "ceil", "round")


def integer_pow(x: Array, y: Array, *, power: int) -> Array:
    """d(x^n)/dx = n x^(n-1) (0 for n = 0)."""
    if power == 0:
        return jnp.zeros_like(x)
    return power * lax.integer_pow(x, power - 1) if power != 1 else jnp.ones_like(x)


def _balanced(x: Array, y: Array, other: Array) -> Array:
    # 1 where x alone attains the result, 1/2 at a tie, 0 elsewhere (lax._balanced_eq).
    half = jnp.where(other == y, 0.5, 1.0).astype(y.dtype)
    return jnp.where(x == y, half, jnp.zeros((), y.dtype))


def _replace_zero(x: Array) -> Array:
    return jnp.where(x == 0, jnp.ones((), x.dtype), x)


def _pow_base(a: Array, b: Array, y: Array) -> Array:
    # d(a^b)/da = b a^(b-1); for an integer exponent JAX writes 0 where b = 0.
    if jnp.issubdtype(b.dtype, jnp.integer):
        b = b.astype(y.dtype)
        one = jnp.ones((), y.dtype)
        return jnp.where(b == 0, jnp.zeros((), y.dtype), _replace_zero(b) * lax.pow(a, b - one))
    return b * lax.pow(a, b - jnp.ones((), b.dtype))


#: (d/d first, d/d second) for binary maps y = f(a, b), as functions of (a, b, y).
BINARY: dict[str, tuple[Callable[[Array, Array, Array], Array], ...]] = {
    "max": (lambda a, b, y: _balanced(a, y, b), lambda a, b, y: _balanced(b, y, a)),
    "min": (lambda a, b, y: _balanced(a, y, b), lambda a, b, y: _balanced(b, y, a)),
    "pow": (
        lambda a, b, y: _pow_base(a, b, y),
        lambda a, b, y: jnp.log(_replace_zero(a)) * y,
    ),
    "atan2": (
        lambda a, b, y: b / (jnp.square(a) + jnp.square(b)),
        lambda a, b, y: -a / (jnp.square(a) + jnp.square(b)),
    ),
    # the regularized incomplete gamma functions P(a, x) and Q(a, x) = 1 - P(a, x):
    # dP/da by XLA's igamma_grad_a, dP/dx = x^(a-1) e^(-x) / Gamma(a), as JAX writes them
    "igamma": (
        lambda a, x, y: lax.igamma_grad_a(a, x),
        lambda a, x, y: _gamma_density(a, x),
    ),
    "igammac": (
        lambda a, x, y: -lax.igamma_grad_a(a, x),
        lambda a, x, y: -_gamma_density(a, x),
    ),
    # rem(a, b) = a - b trunc(a / b) (jnp.fmod; jnp.mod adds b where the signs differ):
    # 1 in a, -trunc(a / b) in b, written as JAX's jvp writes it
    "rem": (
        lambda a, b, y: jnp.ones_like(y),
        lambda a, b, y: -(jnp.sign(a / b) * jnp.floor(jnp.abs(a / b))),
    ),
}


def _gamma_density(a: Array, x: Array) -> Array:
    return jnp.exp(-x + (a - jnp.ones((), a.dtype)) * jnp.log(x) - lax.lgamma(a))


def betainc_x(a: Array, b: Array, x: Array) -> Array:
    """d I_x(a, b) / dx = x^(a-1) (1-x)^(b-1) / B(a, b), the regularized incomplete beta
    function's derivative in x (JAX defines none in a or b), as JAX writes it."""
    one = jnp.ones((), x.dtype)
    log_beta = lax.lgamma(a) + lax.lgamma(b) - lax.lgamma(a + b)
    return jnp.exp((b - one) * jnp.log1p(-x) + (a - one) * jnp.log(x) - log_beta)
