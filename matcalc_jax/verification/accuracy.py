r"""Accuracy of ``matcalc_jax.nn`` and ``jax.nn`` against mpmath, in units in the last place.

For every elementwise function of ``matcalc_jax.nn``, at points that span each dtype's
range (0, the smallest normal numbers, 1e-9-like values, moderate values, the tails out to
the largest finite number), the value f(x), the first derivative (``jax.grad``, reverse
mode, and ``jax.jvp``, forward mode) and the second derivative (grad of grad, and jvp of
jvp) are compared with the same quantities evaluated by mpmath at 60 significant digits on
the exact input. The error at a point is |computed - true| / ulp(true), where ulp(t) is the
spacing of the dtype's numbers at t, the worse of the two AD modes.

- Where the true value is below the dtype's normal range (or in its lowest binade, below
  twice the smallest normal number t_min, where a product of two normal factors may
  already be flushed), a result passes if it is within 2 t_min of the truth (0 included:
  XLA flushes subnormal numbers to 0 on CPU), and fails if NaN; where it is beyond the
  largest finite number, the result must be inf of the same sign (or the largest finite
  number).
- Near an irrational root of the quantity (silu' at -1.2785, gelu'' at +-sqrt 2, ...) no
  floating-point formula has a small relative error: points within |r|/16 of a root r are
  measured against ulp(max(|t|, |x g'(x)|)) instead (the error the input's condition
  number allows) and reported apart.

The same run measures ``jax.nn`` (``jnp.tanh`` for tanh) for the table in docs/accuracy.md.
mpmath is needed here only (it is in the ``test`` extra).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from matcalc_jax import nn
from matcalc_jax.forms import activations

DTYPES = ("float64", "float32", "float16", "bfloat16")
ORDERS = (0, 1, 2)
DIGITS = 60

#: Significand bits (with the implicit bit) of each dtype.
PRECISION = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}


def _mp() -> Any:
    try:
        import mpmath
    except ImportError:  # pragma: no cover - mpmath is in the test extra
        raise ImportError(
            "the accuracy oracle needs mpmath: pip install -e '.[test]' (or pip install mpmath)"
        ) from None
    return mpmath


# ------------------------------------------------------------------ the oracle functions


def _oracle_table() -> dict[str, tuple[Callable, Callable, Callable]]:
    """name -> (f, f', f'') in mpmath, written so that none of them cancels: each is a
    product or quotient of positive terms, or uses expm1 / log1p, at 60 digits."""
    mp = _mp()

    def sigma(x):
        return 1 / (1 + mp.exp(-x))

    def sigma1(x):
        e = mp.exp(-abs(x))
        return e / (1 + e) ** 2

    def sigma2(x):
        return -sigma1(x) * mp.tanh(x / 2)

    def softplus(x):
        return max(x, 0) + mp.log1p(mp.exp(-abs(x)))

    def sech2(x):
        return mp.sech(x) ** 2

    def phi(x):
        return mp.npdf(x)

    def cdf(x):
        if abs(x) < 1e6:
            return mp.ncdf(x)
        # mpmath's erfc overflows far out; the asymptotic series is exact to 1e-36 there.
        z = -abs(x)
        tail = phi(z) / abs(z) * (1 - 1 / z**2 + 3 / z**4 - 15 / z**6)
        return tail if x < 0 else 1 - tail

    c, a = mp.sqrt(2 / mp.pi), mp.mpf(0.044715)

    def u(x):
        return c * (x + a * x**3), c * (1 + 3 * a * x**2), c * 6 * a * x

    def gelu_tanh(x):
        return x * sigma(2 * u(x)[0])

    def gelu_tanh1(x):
        v, dv, _ = u(x)
        return sigma(2 * v) + 2 * x * sigma1(2 * v) * dv

    def gelu_tanh2(x):
        v, dv, d2v = u(x)
        return 4 * sigma1(2 * v) * dv + 4 * x * sigma2(2 * v) * dv**2 + 2 * x * sigma1(2 * v) * d2v

    alpha, scale = mp.mpf(activations.SELU_ALPHA), mp.mpf(activations.SELU_SCALE)

    def elu(x, k=1):
        if x > 0:
            return (x, mp.mpf(1), mp.mpf(0))[k]
        return (mp.expm1(x), mp.exp(x), mp.exp(x))[k]

    def relu(x, k):
        return (max(x, 0), mp.mpf(x > 0), mp.mpf(0))[k]

    def relu6(x, k):
        return (min(max(x, 0), 6), mp.mpf(0 < x < 6), mp.mpf(0))[k]

    def hard_tanh(x, k):
        return (min(max(x, -1), 1), mp.mpf(-1 <= x <= 1), mp.mpf(0))[k]

    def leaky(x, k):
        return ((x if x >= 0 else mp.mpf(0.01) * x), mp.mpf(1 if x >= 0 else 0.01), mp.mpf(0))[k]

    def celu(x, k):  # alpha = 1: max(x, 0) + expm1(min(x, 0))
        if x > 0:
            return (x, mp.mpf(1), mp.mpf(0))[k]
        return (mp.expm1(x), mp.exp(x), mp.exp(x))[k]

    def soft_sign(x, k):
        d = 1 + abs(x)
        return (x / d, 1 / d**2, -2 * mp.sign(x) / d**3)[k]

    def piecewise(f):
        return (lambda x: f(x, 0), lambda x: f(x, 1), lambda x: f(x, 2))

    return {
        "sigmoid": (sigma, sigma1, sigma2),
        "log_sigmoid": (lambda x: -softplus(-x), lambda x: sigma(-x), lambda x: -sigma1(x)),
        "softplus": (softplus, sigma, sigma1),
        "tanh": (mp.tanh, sech2, lambda x: -2 * mp.tanh(x) * sech2(x)),
        "silu": (
            lambda x: x * sigma(x),
            lambda x: sigma(x) * (1 + x * sigma(-x)),
            lambda x: sigma1(x) * (2 - x * mp.tanh(x / 2)),
        ),
        "gelu_erf": (
            lambda x: x * cdf(x),
            lambda x: cdf(x) + x * phi(x),
            lambda x: phi(x) * (2 - x**2),
        ),
        "gelu_tanh": (gelu_tanh, gelu_tanh1, gelu_tanh2),
        "elu": (lambda x: elu(x, 0), lambda x: elu(x, 1), lambda x: elu(x, 2)),
        "selu": (
            lambda x: scale * (x if x > 0 else alpha * mp.expm1(x)),
            lambda x: scale * (mp.mpf(1) if x > 0 else alpha * mp.exp(x)),
            lambda x: scale * (mp.mpf(0) if x > 0 else alpha * mp.exp(x)),
        ),
        "celu": piecewise(celu),
        "soft_sign": piecewise(soft_sign),
        "relu": piecewise(relu),
        "relu6": piecewise(relu6),
        "hard_tanh": piecewise(hard_tanh),
        "leaky_relu": piecewise(leaky),
    }


#: name -> (matcalc_jax.nn's function, jax.nn's function), both elementwise in x.
def _libraries() -> dict[str, tuple[Callable, Callable]]:
    return {
        "sigmoid": (nn.sigmoid, jax.nn.sigmoid),
        "log_sigmoid": (nn.log_sigmoid, jax.nn.log_sigmoid),
        "softplus": (nn.softplus, jax.nn.softplus),
        "tanh": (nn.tanh, jnp.tanh),
        "silu": (nn.silu, jax.nn.silu),
        "gelu_erf": (
            functools.partial(nn.gelu, approximate=False),
            functools.partial(jax.nn.gelu, approximate=False),
        ),
        "gelu_tanh": (nn.gelu, jax.nn.gelu),
        "elu": (nn.elu, jax.nn.elu),
        "selu": (nn.selu, jax.nn.selu),
        "celu": (nn.celu, jax.nn.celu),
        "soft_sign": (nn.soft_sign, jax.nn.soft_sign),
        "relu": (nn.relu, jax.nn.relu),
        "relu6": (nn.relu6, jax.nn.relu6),
        "hard_tanh": (nn.hard_tanh, jax.nn.hard_tanh),
        "leaky_relu": (nn.leaky_relu, jax.nn.leaky_relu),
    }


FUNCTIONS = tuple(_libraries())

#: Approximate irrational roots of f^(k) (refined by mpmath): (name, order) -> roots.
ROOTS = {
    ("silu", 1): (-1.2785,),
    ("silu", 2): (-2.3994, 2.3994),
    ("gelu_erf", 1): (-0.7518,),
    ("gelu_erf", 2): (-1.4142, 1.4142),
    ("gelu_tanh", 1): (-0.7517,),
    ("gelu_tanh", 2): (-1.4, 1.4),
}


@functools.cache
def roots(name: str, order: int) -> tuple[float, ...]:
    """The roots of the ``order``-th derivative of ``name`` near ``ROOTS``' guesses."""
    mp = _mp()
    f = _oracle_table()[name][order]
    with mp.workdps(DIGITS):
        return tuple(float(mp.findroot(f, mp.mpf(r))) for r in ROOTS.get((name, order), ()))


# -------------------------------------------------------------------------- the points


def points(dtype: str) -> np.ndarray:
    """Sorted, distinct x values exactly representable in ``dtype``: 0, the smallest normal
    numbers, a logarithmic sweep of magnitudes from there to the largest finite number (a
    few values per binade step, off the powers of two), a dense moderate range, both signs."""
    info = jnp.finfo(dtype)
    tiny, big = float(info.tiny), float(info.max)
    lo, hi = int(np.floor(np.log2(tiny))), int(np.floor(np.log2(big)))
    step = max(1, (hi - lo) // 48)
    magnitudes = [tiny, 2 * tiny, big]
    for k in range(lo + 1, hi, step):
        magnitudes += [1.37 * 2.0**k, 1.91 * 2.0**k]
    magnitudes += [*np.linspace(0.05, 12.0, 96), 1e-9, 20.0, 30.0, 40.0, 80.0, 700.0]
    # Where exp(-|x|), exp(-2|x|) and exp(-x^2 / 2) leave the normal range, densely.
    underflow = -np.log(tiny)
    band = np.linspace(0.3, 1.1, 33)
    magnitudes += list(underflow * band) + list(underflow / 2 * band)
    magnitudes += list(np.sqrt(2 * underflow) * band)
    for r in {abs(r) for (n, k) in ROOTS for r in roots(n, k)}:
        magnitudes += [r * (1 + d) for d in (-1e-2, -1e-4, 1e-4, 1e-2)]
    values = np.array(magnitudes, np.float64)
    values = values[np.isfinite(values) & (values <= big)]
    values = np.concatenate([-values, [0.0], values])
    cast = np.asarray(jnp.asarray(values, jnp.float64).astype(dtype).astype(jnp.float64))
    cast = cast[np.isfinite(cast)]
    return np.unique(cast)


# ------------------------------------------------------------------------ the evaluation


def _derivatives(f: Callable) -> Callable:
    """x -> (f, f' by grad, f' by jvp, f'' by grad of grad, f'' by jvp of jvp), elementwise."""

    def scalar_jvp(g: Callable) -> Callable:
        return lambda x: jax.jvp(g, (x,), (jnp.ones_like(x),))[1]

    grad1, jvp1 = jax.grad(f), scalar_jvp(f)
    return jax.jit(
        jax.vmap(lambda x: (f(x), grad1(x), jvp1(x), jax.grad(grad1)(x), scalar_jvp(jvp1)(x)))
    )


@functools.cache
def evaluate(name: str, library: str, dtype: str) -> dict[int, tuple[np.ndarray, ...]]:
    """{order: (results by the AD modes, as float64 arrays)} at ``points``."""
    ours, theirs = _libraries()[name]
    f = ours if library == "matcalc_jax" else theirs
    x = jnp.asarray(points(dtype), jnp.float64).astype(dtype)
    value, rev1, fwd1, rev2, fwd2 = (
        np.asarray(jnp.asarray(r, jnp.float64)) for r in _derivatives(f)(x)
    )
    return {0: (value,), 1: (rev1, fwd1), 2: (rev2, fwd2)}


@functools.cache
def truth(name: str, dtype: str) -> dict[int, list]:
    """{order: [mpmath value at each point]}."""
    mp = _mp()
    table = _oracle_table()[name]
    with mp.workdps(DIGITS):
        xs = [mp.mpf(float(x)) for x in points(dtype)]
        return {k: [table[k](x) for x in xs] for k in ORDERS}


@dataclass
class Measurement:
    """The worst error of one (function, order, dtype, library) over the points."""

    function: str
    order: int
    dtype: str
    library: str
    max_ulps: float
    worst_x: float
    near_root_ulps: float = 0.0
    failures: list[str] = field(default_factory=list)


def _ulp(t: Any, precision: int) -> Any:
    mp = _mp()
    _, exponent = mp.frexp(abs(t))
    return mp.ldexp(1, int(exponent) - precision)


def measure(name: str, order: int, dtype: str, library: str = "matcalc_jax") -> Measurement:
    """Compare every AD mode's result with mpmath at every point (see the module doc)."""
    mp = _mp()
    xs = points(dtype)
    results = evaluate(name, library, dtype)[order]
    true_values = truth(name, dtype)[order]
    info = jnp.finfo(dtype)
    tiny, big, precision = mp.mpf(float(info.tiny)), mp.mpf(float(info.max)), PRECISION[dtype]
    tiny = 2 * tiny  # see the module doc: the lowest binade is held to the below-normal rule
    near = roots(name, order)
    derivative = _oracle_table()[name][order]
    out = Measurement(name, order, dtype, library, 0.0, float("nan"))
    with mp.workdps(DIGITS):
        for i, (x, t) in enumerate(zip(xs, true_values, strict=True)):
            for result in results:
                c = float(result[i])
                if np.isnan(c):
                    out.failures.append(f"x={x!r}: NaN where the truth is {mp.nstr(t, 5)}")
                    continue
                if abs(t) > big:
                    if not (abs(c) >= float(big) and np.sign(c) == mp.sign(t)):
                        out.failures.append(f"x={x!r}: {c!r} where the truth overflows")
                    continue
                if np.isinf(c):
                    out.failures.append(f"x={x!r}: {c!r} where the truth is {mp.nstr(t, 5)}")
                    continue
                error = abs(mp.mpf(c) - t)
                if abs(t) < tiny:
                    if error > tiny:
                        out.failures.append(
                            f"x={x!r}: {c!r} where the truth {mp.nstr(t, 5)} is below normal"
                        )
                    continue
                if any(abs(x - r) <= abs(r) / 16 for r in near):
                    slope = mp.diff(derivative, mp.mpf(float(x)))
                    scale = max(abs(t), abs(mp.mpf(float(x)) * slope))
                    out.near_root_ulps = max(
                        out.near_root_ulps, float(error / _ulp(scale, precision))
                    )
                    continue
                ulps = float(error / _ulp(t, precision))
                if ulps > out.max_ulps:
                    out.max_ulps, out.worst_x = ulps, float(x)
    return out


def measure_all(
    functions: Sequence[str] = FUNCTIONS,
    dtypes: Sequence[str] = DTYPES,
    libraries: Sequence[str] = ("matcalc_jax", "jax.nn"),
) -> list[Measurement]:
    return [
        measure(name, order, dtype, library)
        for name in functions
        for order in ORDERS
        for dtype in dtypes
        for library in libraries
    ]


#: The stated bounds in ulps, (float64, float32), per function and derivative order; float16
#: and bfloat16 (computed in float32, rounded once) are held to ``LOW_PRECISION_BOUND``.
#: The large ones are the price of a rounded argument: gelu's tanh form rounds
#: u = sqrt(2/pi)(x + 0.044715 x^3), whose error is multiplied by |2u| (up to ~700) in
#: exp(-2|u|); the erf form's value uses XLA's erfc on (-9, -1), which rounds z^2.
BOUNDS: dict[str, dict[int, tuple[float, float]]] = {
    "sigmoid": {0: (2, 2), 1: (4, 4), 2: (8, 8)},
    "log_sigmoid": {0: (3, 3), 1: (3, 3), 2: (4, 4)},
    "softplus": {0: (3, 3), 1: (3, 3), 2: (4, 4)},
    "tanh": {0: (4, 5), 1: (5, 4), 2: (6, 6)},
    "silu": {0: (4, 4), 1: (16, 12), 2: (16, 8)},
    "gelu_erf": {0: (100, 32), 1: (8, 12), 2: (4, 4)},
    "gelu_tanh": {0: (1000, 150), 1: (1200, 160), 2: (1000, 160)},
    "elu": {0: (2, 4), 1: (2, 2), 2: (2, 2)},
    "selu": {0: (2, 4), 1: (3, 3), 2: (3, 3)},
    "celu": {0: (2, 4), 1: (2, 2), 2: (2, 2)},
    "soft_sign": {0: (2, 2), 1: (4, 4), 2: (6, 5)},
    "relu": {0: (0, 0), 1: (0, 0), 2: (0, 0)},
    "relu6": {0: (0, 0), 1: (0, 0), 2: (0, 0)},
    "hard_tanh": {0: (0, 0), 1: (0, 0), 2: (0, 0)},
    "leaky_relu": {0: (1, 1), 1: (1, 1), 2: (0, 0)},
}
LOW_PRECISION_BOUND = 1.0


def bound(name: str, order: int, dtype: str) -> float:
    """The stated ulp bound of ``matcalc_jax.nn`` for this function, order and dtype."""
    if dtype in ("float16", "bfloat16"):
        return LOW_PRECISION_BOUND
    return float(BOUNDS[name][order][0 if dtype == "float64" else 1])


# --------------------------------------------------------------------------- reductions

REDUCTIONS = ("softmax", "log_softmax", "logsumexp")

#: A fixed cotangent: the second derivative is the Hessian of sum(WEIGHTS * f(x)).
WEIGHTS = (1.0, -2.0, 0.5, 3.0)


def rows(dtype: str) -> np.ndarray:
    """Rows of 4 logits, exact in ``dtype``: spreads from 1e-9 to past the underflow of
    exp, ties, and a large offset (1e4, where exp(x - logsumexp) loses digits)."""
    underflow = float(-np.log(float(jnp.finfo(dtype).tiny)))
    scales = [1e-9, 0.1, 1.0, 3.0, 10.0, 20.0, 40.0, underflow / 2, underflow * 0.9]
    patterns = []
    for s in scales:
        patterns += [(s, 0.0, -s, s / 2), (s, s, 0.0, -s), (0.0, -s, -2 * s, -s / 3)]
    if dtype in ("float64", "float32"):
        patterns += [(1e4 + 3, 1e4, 1e4 - 2, 1e4 + 1.5)]
    values = np.asarray(jnp.asarray(patterns, jnp.float64).astype(dtype).astype(jnp.float64))
    return values[np.all(np.isfinite(values), axis=1)]


def _reduction_library(name: str, library: str) -> Callable:
    module = nn if library == "matcalc_jax" else jax.nn
    return functools.partial(getattr(module, name), axis=-1)


@functools.cache
def evaluate_reduction(name: str, library: str, dtype: str) -> dict[int, tuple[np.ndarray, ...]]:
    """{order: results} for every row: values, Jacobians (jacfwd, jacrev) and the Hessian of
    the weighted sum (jax.hessian, jacrev of jacrev)."""
    f = _reduction_library(name, library)
    weights = jnp.asarray(WEIGHTS[: 1 if name == "logsumexp" else 4], dtype)

    def loss(x: Any) -> Any:
        return jnp.sum(weights * f(x))

    def all_orders(x: Any) -> tuple:
        return (
            f(x),
            jax.jacfwd(f)(x),
            jax.jacrev(f)(x),
            jax.hessian(loss)(x),
            jax.jacrev(jax.jacrev(loss))(x),
        )

    x = jnp.asarray(rows(dtype), jnp.float64).astype(dtype)
    value, fwd, rev, hessian, revrev = (
        np.asarray(jnp.asarray(r, jnp.float64)) for r in jax.jit(jax.vmap(all_orders))(x)
    )
    return {0: (value,), 1: (fwd, rev), 2: (hessian, revrev)}


def _reduction_truth(name: str, row: np.ndarray) -> dict[int, Any]:
    """Value, Jacobian and weighted-sum Hessian of a reduction at one row, in mpmath."""
    mp = _mp()
    x = [mp.mpf(float(v)) for v in row]
    m = max(x)
    exps = [mp.exp(v - m) for v in x]
    # total = 1 + rest: log1p(rest), since log(1 + 1e-300) is 0 at any working precision.
    rest = mp.fsum(e for v, e in zip(x, exps, strict=True) if v != m) + (x.count(m) - 1)
    total = 1 + rest
    s = [e / total for e in exps]
    lse = m + mp.log1p(rest)
    n = len(x)
    # diag(s) - s s^T, written without a difference for the diagonal: s_j (1 - s_j) with
    # 1 - s_j as the sum of the others.
    complement = [mp.fsum(s[:j] + s[j + 1 :]) for j in range(n)]
    cov = [[s[j] * complement[j] if j == k else -s[j] * s[k] for k in range(n)] for j in range(n)]
    if name == "logsumexp":
        return {0: [lse], 1: [s], 2: [[WEIGHTS[0] * cov[j][k] for k in range(n)] for j in range(n)]}
    c = [mp.mpf(w) for w in WEIGHTS]
    if name == "log_softmax":
        jac = [[complement[j] if j == k else -s[k] for k in range(n)] for j in range(n)]
        total_weight = mp.fsum(c)
        hess = [[-total_weight * cov[j][k] for k in range(n)] for j in range(n)]
        return {0: [(v - m) - mp.log1p(rest) for v in x], 1: jac, 2: hess}
    # c_j - sum_i s_i c_i = sum_i s_i (c_j - c_i): no difference of nearly equal numbers.
    dev = [mp.fsum(si * (cj - ci) for si, ci in zip(s, c, strict=True)) for cj in c]
    hess = [[cov[j][k] * dev[j] - s[j] * s[k] * dev[k] for k in range(n)] for j in range(n)]
    # The size of the terms the entries are made of: with tied maxima they cancel (the
    # truth is then tiny, and no formula in floating point gets it to a relative accuracy).
    hess_terms = max(abs(s[j] * s[k] * dev[k]) for j in range(n) for k in range(n))
    return {0: s, 1: cov, 2: hess, "scale": hess_terms}
    return {0: s, 1: cov, 2: hess}


def measure_reduction(
    name: str, order: int, dtype: str, library: str = "matcalc_jax", modes: int = 2
) -> Measurement:
    """Values and Jacobian entries in ulps (the rules of ``measure``); the Hessian of the
    weighted sum normwise: max|error| / s in units of 2^-(p-1) (p the significand bits),
    s = max|truth| (for softmax: or the largest term s_j s_k (c_k - c.s) it is built of, if
    larger). ``modes=1`` takes the first AD mode only (jacfwd; jax.hessian)."""
    mp = _mp()
    info = jnp.finfo(dtype)
    tiny, precision = 2 * mp.mpf(float(info.tiny)), PRECISION[dtype]
    out = Measurement(name, order, dtype, library, 0.0, float("nan"))
    results = evaluate_reduction(name, library, dtype)[order][:modes]
    with mp.workdps(DIGITS):
        for i, row in enumerate(rows(dtype)):
            truths = _reduction_truth(name, row)
            true = truths[order]
            flat_true = list(np.ravel(np.array(true, dtype=object)))
            for result in results:
                flat = np.ravel(result[i])
                if np.any(np.isnan(flat)):
                    out.failures.append(f"row {row.tolist()}: NaN")
                    continue
                if order == 2:
                    scale = max(max(abs(t) for t in flat_true), truths.get("scale", 0))
                    if scale < tiny:
                        continue
                    pairs = zip(flat, flat_true, strict=True)
                    error = max(abs(mp.mpf(float(c)) - t) for c, t in pairs)
                    ulps = float(error / scale * 2 ** (precision - 1))
                else:
                    ulps = 0.0
                    for c, t in zip(flat, flat_true, strict=True):
                        if abs(t) < tiny:
                            if abs(mp.mpf(float(c)) - t) > tiny:
                                out.failures.append(f"row {row.tolist()}: {c!r} vs {t}")
                            continue
                        if np.isinf(c):
                            ulps = float("inf") if not mp.isinf(t) else ulps
                            continue
                        ulps = max(ulps, float(abs(mp.mpf(float(c)) - t) / _ulp(t, precision)))
                if ulps > out.max_ulps:
                    out.max_ulps, out.worst_x = ulps, float(i)
    return out


#: Stated bounds for the reductions: (float64, float32) per order, the second order for
#: jax.hessian (forward over reverse); float16 and bfloat16 as the elementwise maps.
REDUCTION_BOUNDS: dict[str, dict[int, tuple[float, float]]] = {
    "softmax": {0: (2, 2), 1: (4, 4), 2: (3, 3)},
    "log_softmax": {0: (2, 2), 1: (2, 2), 2: (2, 2)},
    "logsumexp": {0: (1, 1), 1: (2, 2), 2: (2, 2)},
}


def reduction_bound(name: str, order: int, dtype: str) -> float:
    if dtype in ("float16", "bfloat16"):
        return LOW_PRECISION_BOUND
    return float(REDUCTION_BOUNDS[name][order][0 if dtype == "float64" else 1])


def _cell(m: Measurement) -> str:
    text = "0" if m.max_ulps == 0 else f"{m.max_ulps:.3g}"
    return text + (f" ({len(m.failures)} fail)" if m.failures else "")


def markdown() -> str:
    """docs/accuracy.md: the whole oracle run, matcalc_jax.nn beside jax.nn."""
    env = f"jax {jax.__version__}, {jax.devices()[0].platform}"
    lines = [
        "# Accuracy of `matcalc_jax.nn` against mpmath",
        "",
        "<!-- generated by `matcalc-jax accuracy --out docs/accuracy.md`; do not edit -->",
        "",
        f"Measured on {env}. Each cell is the largest error over the points, in units in the",
        "last place of the dtype (ulps) at the true value, of `matcalc_jax.nn` / `jax.nn`",
        "(`jnp.tanh` for tanh); for a derivative, the worse of the two AD modes (elementwise:",
        "`jax.grad` and `jax.jvp`; order 2: grad of grad and jvp of jvp). The truth is mpmath at",
        f"{DIGITS} digits on the exact input. Points: 0, the smallest normal numbers, a sweep of",
        "magnitudes out to the largest finite number, a dense moderate range and dense bands",
        "where exp(-|x|), exp(-2|x|), exp(-x^2/2) leave the normal range; both signs",
        f"({len(points('float64'))} points in float64, {len(points('float32'))} in float32).",
        "'fail' counts points where the result is NaN, or off by more than twice the",
        "smallest normal number where the truth is below (or in the lowest binade of) the",
        "normal range, or not inf where the truth overflows. Near an irrational root of the",
        "quantity (silu', gelu', gelu'') the error is measured against the size of the terms",
        "(see `matcalc_jax/verification/accuracy.py`); every such point is within the bound too.",
        "",
        "The bound column is what the tests (`tests/test_accuracy.py`) hold `matcalc_jax.nn`",
        "to, float64 / float32; float16 and bfloat16 are computed in float32 and rounded once,",
        f"and held to {LOW_PRECISION_BOUND:g} ulp.",
        "",
    ]
    header = "| function | order | bound | " + " | ".join(DTYPES) + " |"
    lines += [
        "## Elementwise functions",
        "",
        header,
        "|" + "---|" * (3 + len(DTYPES)),
    ]
    for name in FUNCTIONS:
        for order in ORDERS:
            cells = []
            for dtype in DTYPES:
                ours = measure(name, order, dtype)
                theirs = measure(name, order, dtype, "jax.nn")
                cells.append(f"{_cell(ours)} / {_cell(theirs)}")
            stated = BOUNDS[name][order]
            lines.append(
                f"| {name} | {order} | {stated[0]:g} / {stated[1]:g} | " + " | ".join(cells) + " |"
            )
    lines += [
        "",
        "## softmax, log_softmax, logsumexp",
        "",
        "Rows of four logits: spreads from 1e-9 to past the underflow of exp, ties, and an",
        "offset of 1e4. Order 0 and 1: every entry of the value and of the Jacobian (jacfwd",
        "and jacrev), in ulps. Order 2: the Hessian of sum(c * f(x)) for a fixed c, by",
        "`jax.hessian` (forward over reverse), normwise in units of 2^-(p-1), relative to the",
        "largest entry or, for softmax, the largest term the entries are sums of (ties make",
        "the Hessian cancel to nearly 0). The last column is reverse over reverse",
        "(`jacrev(jacrev)`), which is not held to a bound: see the note below.",
        "",
        header[:-1] + " | float64 rev-rev |",
        "|" + "---|" * (4 + len(DTYPES)),
    ]
    for name in REDUCTIONS:
        for order in ORDERS:
            cells = []
            for dtype in DTYPES:
                ours = measure_reduction(name, order, dtype, modes=1 if order == 2 else 2)
                theirs = measure_reduction(name, order, dtype, "jax.nn")
                cells.append(f"{_cell(ours)} / {_cell(theirs)}")
            revrev = "-"
            if order == 2:
                both = measure_reduction(name, order, "float64")
                revrev = f"{_cell(both)} / {_cell(measure_reduction(name, 2, 'float64', 'jax.nn'))}"
            stated = REDUCTION_BOUNDS[name][order]
            lines.append(
                f"| {name} | {order} | {stated[0]:g} / {stated[1]:g} | "
                + " | ".join(cells)
                + f" | {revrev} |"
            )
    lines += [
        "",
        "Not met: the second derivative of `log_softmax` by reverse over reverse loses",
        "relative accuracy where one logit dominates (the derivative of the transposed rule",
        "sums terms of opposite sign); `jax.hessian` (forward over reverse) and forward over",
        "forward are accurate. `jax.nn` loses the same digits in every mode.",
        "",
    ]
    return "\n".join(lines)
