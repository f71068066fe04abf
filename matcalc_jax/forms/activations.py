r"""Activations and their derivatives: one implementation of each, used everywhere.

Every function here is a ``jax.custom_jvp`` whose tangent is the closed-form derivative,
and that derivative is itself a ``custom_jvp`` whose tangent is the closed-form second
derivative, so ``jax.grad``, ``jax.jacfwd``, ``jax.hessian`` and grad-of-grad all evaluate
the formulas below instead of differentiating the primal's floating-point operations:

================  ===============================  ==========================================
function          f'(x)                            f''(x)
================  ===============================  ==========================================
sigma(x)          e / (1 + e)^2, e = exp(-|x|)     -sigma'(x) tanh(x / 2)
softplus(x)       sigma(x)                         sigma'(x)
log sigma(x)      sigma(-x)                        -sigma'(x)
tanh(x)           4 e / (1 + e)^2, e = exp(-2|x|)  -2 tanh(x) tanh'(x)
silu(x)           sigma(x) (1 + x sigma(-x))       sigma'(x) (2 - x tanh(x / 2))
gelu(x) (erf)     Phi(x) + x phi(x)                phi(x) (2 - x^2)
gelu(x) (tanh)    sigma(2u) + 2 x sigma'(2u) u'    4 sigma'(2u) u' + 4 x sigma''(2u) u'^2
                                                   + 2 x sigma'(2u) u''
elu(x, a)         1 (x > 0), a e^x                 0 (x > 0), a e^x
celu(x, a)        1 (x > 0), e^(x / a)             0 (x > 0), e^(x / a) / a
soft_sign(x)      1 / (1 + |x|)^2                  -2 sign(x) / (1 + |x|)^3
================  ===============================  ==========================================

None of them subtracts two nearly equal numbers where the result is small: sigma' is never
sigma (1 - sigma), tanh' never 1 - tanh^2 (both are exactly 0 in float64 from |x| of about
37 and 19), and the value returned inside each tangent rule is the function itself, so a
second derivative through ``value_and_grad`` is right at 0 too.

The inputs here are float32 or float64 arrays; ``matcalc_jax.nn`` checks arguments,
promotes integers and computes float16 and bfloat16 in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.custom_derivatives import SymbolicZero


def _custom(value: Callable[..., Array], *partials: Callable[..., Array]) -> Callable[..., Array]:
    """``value`` as a ``custom_jvp`` whose tangent is sum_j partials[j](*args) * t_j.

    ``partials[j]`` is the closed-form partial derivative by argument j, elementwise (it may
    itself be a function built here, which makes the next derivative a closed form too); an
    argument that is not differentiated (a symbolic zero tangent) adds no term. The
    primal returned by the rule is the custom function itself, so that differentiating the
    rule's primal output (as ``grad`` of ``value_and_grad`` does) uses the rule again.
    """
    function = jax.custom_jvp(value)

    def rule(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
        out = function(*primals)
        tangent = None
        for partial, t in zip(partials, tangents, strict=True):
            if isinstance(t, SymbolicZero):  # not differentiated: its partial never enters
                continue  # (an infinite partial times a zero tangent would be NaN)
            term = partial(*primals) * t
            tangent = term if tangent is None else tangent + term
        return out, jnp.zeros_like(out) if tangent is None else tangent

    function.defjvp(rule, symbolic_zeros=True)
    return function


# ------------------------------------------------------------------------- logistic family


def _exp_times(a: Array, b: Array) -> Array:
    """b exp(-a) for a >= 0, never forming an exp(-a) below the normal range: XLA flushes
    subnormal numbers to 0 on CPU, which would zero a product b exp(-a) that is itself a
    normal number. For a > K (K = half of -log of the smallest normal number, an integer)
    it is (b exp(K - a)) e^-K, where K - a is exact. 0 wherever the exponential is 0, also
    if b overflowed there."""
    exponential, scale = _scaled_exp(a)
    return _times(b, exponential) * scale


def _scaled_exp(a: Array) -> tuple[Array, Array]:
    """exp(-a) for a >= 0 as a product of two normal numbers: (exp(-a), 1) where a <= K and
    (exp(K - a), e^-K) above, K the integer part of half of -log of the dtype's smallest
    normal number. A product or quotient formed from the first factor and multiplied by the
    second last is never flushed as a subnormal exp(-a) would be."""
    k = float(math.floor(-math.log(float(jnp.finfo(a.dtype).tiny)) / 2))
    big = a > k
    scale = jnp.where(big, jnp.asarray(math.exp(-k), a.dtype), jnp.ones((), a.dtype))
    return jnp.exp(jnp.where(big, k - a, -a)), scale


def _times(b: Array | float, exponential: Array) -> Array:
    """b exp, 0 where exp is 0 (also where b overflowed); a Python number b is finite, so
    its product needs no guard."""
    if isinstance(b, int | float):
        return b * exponential
    return jnp.where(exponential == 0, jnp.zeros((), exponential.dtype), b * exponential)


def _exp_over_square(a: Array, b: Array | float) -> Array:
    """b e / (1 + e)^2 with e = exp(-a), a >= 0, from one exponential, scaled after the
    division (``_scaled_exp``): where a > K, 1 + e rounds to 1 in every dtype but float16
    (right to rounding in float16)."""
    exponential, scale = _scaled_exp(a)
    return _times(b, exponential) / jnp.square(1 + exponential * scale) * scale


def _exp_minus_abs(x: Array) -> Array:
    return jnp.exp(-jnp.abs(x))


def _logistic_second(x: Array) -> Array:
    # sigma'' = sigma' (1 - 2 sigma) and 1 - 2 sigma(x) = -tanh(x / 2): no cancellation at 0.
    return -_logistic_prime_value(x) * jnp.tanh(x / 2)


def _logistic_prime_value(x: Array) -> Array:
    e = _exp_minus_abs(x)
    return e / jnp.square(1 + e)


#: sigma'(x) = sigma(x)(1 - sigma(x)) = e / (1 + e)^2 with e = exp(-|x|) in (0, 1].
logistic_prime = _custom(_logistic_prime_value, _logistic_second)


def _sigmoid_value(x: Array) -> Array:
    e = _exp_minus_abs(x)
    return jnp.where(x >= 0, 1 / (1 + e), e / (1 + e))


#: sigma(x) = 1 / (1 + exp(-x)), from e = exp(-|x|): 1 / (1 + e) or e / (1 + e).
sigmoid = _custom(_sigmoid_value, logistic_prime)


def _softplus_value(x: Array) -> Array:
    return jnp.maximum(x, 0) + jnp.log1p(_exp_minus_abs(x))


#: softplus(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)).
softplus = _custom(_softplus_value, sigmoid)

#: log sigma(x) = -softplus(-x); derivative sigma(-x), second derivative -sigma'(x).
log_sigmoid = _custom(lambda x: -_softplus_value(-x), lambda x: sigmoid(-x))


# ----------------------------------------------------------------------------- tanh family


def _tanh_prime_value(x: Array) -> Array:
    a = 2 * jnp.abs(x)
    return _exp_over_square(a, 4)


def _tanh_value(x: Array) -> Array:
    # tanh|x| = -m / (2 + m) with m = expm1(-2|x|): no cancellation near 0 or in the tails.
    m = jnp.expm1(-2 * jnp.abs(x))
    return jnp.sign(x) * (-m / (2 + m))


#: tanh'(x) = sech^2(x) = 4 e / (1 + e)^2 with e = exp(-2|x|); second derivative
#: -2 tanh(x) tanh'(x).
tanh_prime = _custom(_tanh_prime_value, lambda x: -2 * _tanh_value(x) * _tanh_prime_value(x))


def _tanh_forward(x: Array) -> Array:
    """tanh(x) as returned by ``tanh``: XLA's own tanh in float32, where it is the faster and
    the more accurate (3.09 ulps at most over ``matcalc-jax accuracy``'s points, against
    3.36 for the form below), and the expm1 form in float64, where XLA's is 6.88 ulps off."""
    return jnp.tanh(x) if x.dtype == jnp.float32 else _tanh_value(x)


#: tanh(x), with derivative ``tanh_prime``.
tanh = _custom(_tanh_forward, tanh_prime)


# ------------------------------------------------------------------------- silu and gelu


# With e = exp(-|x|): sigma(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) below; the factor e
# of the left tail goes through _exp_times, since x sigma(x) is normal where e is not.


def _silu_value(x: Array) -> Array:
    a = jnp.abs(x)
    return jnp.where(x >= 0, x, _exp_times(a, x)) / (1 + jnp.exp(-a))


def _silu_prime_value(x: Array) -> Array:
    # sigma(x) (1 + x sigma(-x))
    a = jnp.abs(x)
    e = jnp.exp(-a)
    right = 1 + _exp_times(a, x) / (1 + e)
    left = _exp_times(a, 1 + x / (1 + e))
    return jnp.where(x >= 0, right, left) / (1 + e)


def _silu_second_value(x: Array) -> Array:
    # sigma'(x) (2 - x tanh(x / 2)), sigma'(x) = e / (1 + e)^2
    a = jnp.abs(x)
    return _exp_over_square(a, 2 - x * jnp.tanh(x / 2))


silu_prime = _custom(_silu_prime_value, _silu_second_value)

#: silu(x) = swish(x) = x sigma(x).
silu = _custom(_silu_value, silu_prime)

_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1 / np.sqrt(2 * np.pi))


def _exp_times_half_square(x: Array, b: Array) -> Array:
    """b exp(-x^2 / 2) with x^2 split exactly (Veltkamp): x = h + l with h of half the
    significand, so h^2 / 2 is exact and only the small h l + l^2 / 2 is rounded; the
    exponential then has the accuracy of exp itself, not the x^2 eps of a rounded square."""
    bits = jnp.finfo(x.dtype).nmant + 1
    x = jnp.clip(x, -64, 64)  # exp(-2048) is 0 in every float type
    c = x * float(2 ** ((bits + 1) // 2) + 1)
    high = c - (c - x)
    low = x - high
    return _exp_times(high * high / 2, b) * jnp.exp(-(high * low + low * low / 2))


#: Left of -T the exact-form gelu uses Phi(x) = phi(x) Q(x) / |x| with the asymptotic series
#: Q(x) = sum_k (-1)^k (2k - 1)!! / x^(2k), N terms, accurate to the dtype there.
_GELU_TAIL = {np.dtype(np.float64): (9.0, 40), np.dtype(np.float32): (6.0, 18)}


def _mills_series(x: Array) -> tuple[Array, Array]:
    """(Q(x) on the left tail, the tail's mask); Q is evaluated at -T elsewhere."""
    threshold, terms = _GELU_TAIL[np.dtype(x.dtype)]
    tail = x < -threshold
    inverse_square = 1 / jnp.square(jnp.where(tail, x, -threshold))
    series, term = jnp.ones_like(x), jnp.ones_like(x)
    for k in range(1, terms + 1):
        term = -term * (2 * k - 1) * inverse_square
        series = series + term
    return series, tail


def _normal_cdf(x: Array) -> Array:
    """Phi(x) = erfc(-x / sqrt 2) / 2 (no cancellation in the left tail)."""
    return jax.lax.erfc(-x * jnp.asarray(_SQRT_HALF, x.dtype)) / 2


def _gelu_value(x: Array) -> Array:
    # x Phi(x); on the tail x Phi(x) = -phi(x) Q(x)
    series, tail = _mills_series(x)
    c = jnp.asarray(_INV_SQRT_2PI, x.dtype)
    return jnp.where(tail, -_exp_times_half_square(x, c * series), x * _normal_cdf(x))


def _gelu_prime_value(x: Array) -> Array:
    # Phi(x) + x phi(x); on the tail phi(x) (Q(x) / |x| - |x|)
    series, tail = _mills_series(x)
    c = jnp.asarray(_INV_SQRT_2PI, x.dtype)
    a = jnp.abs(x)
    tail_value = _exp_times_half_square(x, c * (series / a - a))
    return jnp.where(tail, tail_value, _normal_cdf(x) + _exp_times_half_square(x, c * x))


def _gelu_second_value(x: Array) -> Array:
    # phi(x) (2 - x^2)
    c = jnp.asarray(_INV_SQRT_2PI, x.dtype)
    return _exp_times_half_square(x, c * (2 - jnp.square(x)))


gelu_prime = _custom(_gelu_prime_value, _gelu_second_value)

#: gelu(x) = x Phi(x), the exact (erf) form.
gelu = _custom(_gelu_value, gelu_prime)

_GELU_C = float(np.sqrt(2 / np.pi))
_GELU_A = 0.044715


def _gelu_tanh_u(x: Array) -> tuple[Array, Array, Array]:
    """u = c (x + a x^3), u' and u'' for the tanh form 0.5 x (1 + tanh u) = x sigma(2 u)."""
    c = jnp.asarray(_GELU_C, x.dtype)
    x2 = jnp.square(x)
    return c * (x + _GELU_A * x2 * x), c * (1 + 3 * _GELU_A * x2), c * (6 * _GELU_A) * x


def _gelu_tanh_value(x: Array) -> Array:
    # x sigma(2u) = x / (1 + e) for u >= 0, x e / (1 + e) below, e = exp(-2|u|)
    u, _, _ = _gelu_tanh_u(x)
    a = 2 * jnp.abs(u)
    return jnp.where(u >= 0, x, _exp_times(a, x)) / (1 + jnp.exp(-a))


def _gelu_tanh_prime_value(x: Array) -> Array:
    # sigma(2u) + 2 x u' sigma'(2u), sigma'(2u) = e / (1 + e)^2
    u, du, _ = _gelu_tanh_u(x)
    a = 2 * jnp.abs(u)
    e = jnp.exp(-a)
    right = 1 + _exp_times(a, 2 * x * du) / (1 + e)
    left = _exp_times(a, 1 + 2 * x * du / (1 + e))
    return jnp.where(u >= 0, right, left) / (1 + e)


def _gelu_tanh_second_value(x: Array) -> Array:
    # sigma'(2u) (4 u' - 4 x u'^2 tanh(u) + 2 x u''), as sigma''(y) = -sigma'(y) tanh(y / 2)
    u, du, d2u = _gelu_tanh_u(x)
    a = 2 * jnp.abs(u)
    bracket = 4 * du - 4 * x * jnp.square(du) * jnp.tanh(u) + 2 * x * d2u
    return _exp_over_square(a, bracket)


gelu_tanh_prime = _custom(_gelu_tanh_prime_value, _gelu_tanh_second_value)

#: The tanh approximation 0.5 x (1 + tanh(u)), u = sqrt(2/pi)(x + 0.044715 x^3), computed as
#: x sigma(2u), which does not cancel in the left tail.
gelu_tanh = _custom(_gelu_tanh_value, gelu_tanh_prime)


# ----------------------------------------------------------------- the exponential units


def _negative_part(x: Array) -> Array:
    return jnp.minimum(x, 0)


def _elu_value(x: Array, alpha: Array) -> Array:
    return jnp.where(x > 0, x, alpha * jnp.expm1(_negative_part(x)))


def _elu_second(x: Array, alpha: Array) -> Array:
    return jnp.where(x > 0, 0, _exp_times(-_negative_part(x), alpha))


def _elu_prime_value(x: Array, alpha: Array) -> Array:
    return jnp.where(x > 0, 1, _exp_times(-_negative_part(x), alpha))


elu_prime = _custom(
    _elu_prime_value, _elu_second, lambda x, _: jnp.where(x > 0, 0, jnp.exp(_negative_part(x)))
)

#: elu(x, a) = x for x > 0, a (e^x - 1) otherwise (derivative a at 0, as jax.nn.elu).
elu = _custom(_elu_value, elu_prime, lambda x, _: jnp.where(x > 0, 0, jnp.expm1(_negative_part(x))))

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _selu_prime_value(x: Array) -> Array:
    return SELU_SCALE * _elu_prime_value(x, jnp.asarray(SELU_ALPHA, x.dtype))


selu_prime = _custom(
    _selu_prime_value, lambda x: SELU_SCALE * _elu_second(x, jnp.asarray(SELU_ALPHA, x.dtype))
)

#: selu(x) = scale * elu(x, alpha) with the self-normalizing constants.
selu = _custom(lambda x: SELU_SCALE * _elu_value(x, jnp.asarray(SELU_ALPHA, x.dtype)), selu_prime)


def _celu_z(x: Array, alpha: Array) -> Array:
    return _negative_part(x) / alpha


def _celu_value(x: Array, alpha: Array) -> Array:
    return jnp.maximum(x, 0) + alpha * jnp.expm1(_celu_z(x, alpha))


def _celu_prime_value(x: Array, alpha: Array) -> Array:
    return jnp.where(x > 0, 1, jnp.exp(_celu_z(x, alpha)))


def _celu_prime_by_alpha(x: Array, alpha: Array) -> Array:
    z = _celu_z(x, alpha)
    return jnp.where(x > 0, 0, -z / alpha * jnp.exp(z))


celu_prime = _custom(
    _celu_prime_value,
    lambda x, alpha: jnp.where(x > 0, 0, jnp.exp(_celu_z(x, alpha)) / alpha),
    _celu_prime_by_alpha,
)


def _celu_by_alpha(x: Array, alpha: Array) -> Array:
    z = _celu_z(x, alpha)
    return jnp.expm1(z) - z * jnp.exp(z)


#: celu(x, a) = max(x, 0) + a (e^(min(x, 0) / a) - 1).
celu = _custom(_celu_value, celu_prime, _celu_by_alpha)


# ----------------------------------------------------------- soft sign and piecewise maps


def _soft_sign_prime_value(x: Array) -> Array:
    return 1 / jnp.square(1 + jnp.abs(x))


soft_sign_prime = _custom(
    _soft_sign_prime_value, lambda x: -2 * jnp.sign(x) / (1 + jnp.abs(x)) ** 3
)

#: soft_sign(x) = x / (1 + |x|); the second derivative at 0 is taken as 0 (the mean of the
#: one-sided values -2 and 2, what central differences see).
soft_sign = _custom(lambda x: x / (1 + jnp.abs(x)), soft_sign_prime)


def _nan_of(x: Array) -> Array:
    """sin(x) where x is NaN, sin(0) = 0 elsewhere: NaN exactly where x is NaN, and so is
    every derivative (sin and cos of NaN are NaN; of 0, finite, so nothing leaks into the
    other points, infinities included). The NaN branch of a piecewise-constant derivative:
    the next derivatives at NaN are NaN too (NaN in, NaN out), not the 1 that
    ``where(isnan(x), x, ...)`` differentiates to."""
    return jnp.sin(jnp.where(jnp.isnan(x), x, jnp.zeros((), x.dtype)))


def _indicator(condition: Array, x: Array) -> Array:
    """1 where ``condition``, else 0; NaN where x is NaN (NaN in, NaN out, in every
    derivative)."""
    one_or_zero = jnp.where(condition, jnp.ones((), x.dtype), jnp.zeros((), x.dtype))
    return jnp.where(jnp.isnan(x), _nan_of(x), one_or_zero)


#: relu(x) = max(x, 0); derivative 1 for x > 0, else 0 (0 at the kink, as jax.nn.relu).
relu = _custom(lambda x: jnp.maximum(x, 0), lambda x: _indicator(x > 0, x))

#: relu6(x) = min(max(x, 0), 6); derivative 1 on (0, 6), else 0 (as jax.nn.relu6).
relu6 = _custom(lambda x: jnp.clip(x, 0, 6), lambda x: _indicator((x > 0) & (x < 6), x))

#: hard_tanh(x) = clip(x, -1, 1); derivative 1 on [-1, 1], else 0 (as jax.nn.hard_tanh).
hard_tanh = _custom(lambda x: jnp.clip(x, -1, 1), lambda x: _indicator((x >= -1) & (x <= 1), x))

#: leaky_relu(x, s) = x for x >= 0, s x otherwise (derivative 1 at 0, as jax.nn.leaky_relu).
leaky_relu = _custom(
    lambda x, slope: jnp.where(x >= 0, x, slope * x),
    lambda x, slope: jnp.where(
        jnp.isnan(x), _nan_of(x), jnp.where(x >= 0, jnp.ones((), x.dtype), slope)
    ),
    lambda x, _: jnp.where(x >= 0, jnp.zeros((), x.dtype), x),
)
