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

from matcalc_jax import _activations, _random, _validate
from matcalc_jax._layout import Layout, check_layout
from matcalc_jax._operators import Diagonal
from matcalc_jax._rule import Rule


def diagonal_matrix(diagonal: Array) -> Array:
    """The square matrix with ``diagonal`` on its diagonal and exact zeros elsewhere."""
    n = diagonal.shape[0]
    on_diagonal = jnp.eye(n, dtype=bool)
    return jnp.where(on_diagonal, diagonal[None, :], jnp.zeros((), diagonal.dtype))


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
    return _activations.logistic_prime(_validate.floating("logistic_prime", "x", x))


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
    return diagonal_matrix(_validate.vector("elementwise", "derivative", derivative))


def logistic_scalar_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """sigma'(x) = sigma(x)(1 - sigma(x)) for a scalar x (a 0-d array); see
    :func:`logistic_prime` for how it stays exact in the tails."""
    check_layout("logistic_scalar", layout)
    return _logistic_scalar_derivative(x)


def _logistic_scalar_derivative(x: ArrayLike) -> Array:
    return logistic_prime(_validate.scalar("logistic_scalar", "x", x))


def logistic_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """sigma'(x) = diag(sigma(x) * (1 - sigma(x))) for x of shape (K,), computed stably by
    :func:`logistic_prime`."""
    check_layout("logistic_vector", layout)
    return diagonal_matrix(_logistic_vector_derivative(x))


def _logistic_vector_derivative(x: ArrayLike) -> Array:
    return logistic_prime(_validate.vector("logistic_vector", "x", x))


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
    x = _validate.vector("power", "x", x)
    r = _validate.scalar("power", "r", r)
    return jnp.where(r == 0, jnp.zeros_like(x), r * x ** (r - 1))


def exp_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """Jacobian of exp(x) (elementwise): diag(exp(x))."""
    check_layout("exp", layout)
    return diagonal_matrix(_exp_derivative(x))


def _exp_derivative(x: ArrayLike) -> Array:
    return jnp.exp(_validate.vector("exp", "x", x))


def log_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """Jacobian of log(x) (elementwise): diag(1/x).

    The domain is x > 0; x_k = 0 gives +inf at J[k, k]. Outside it (x_k < 0, where
    ``log(x_k)`` is NaN) the entry is still 1/x_k, as ``jax.jacfwd`` of ``jnp.log`` gives.
    """
    check_layout("log", layout)
    return diagonal_matrix(_log_derivative(x))


def _log_derivative(x: ArrayLike) -> Array:
    return 1 / _validate.vector("log", "x", x)


def logistic_general(x: ArrayLike, L: ArrayLike, k: ArrayLike, x0: ArrayLike) -> Array:
    """The general logistic function L / (1 + exp(-k (x - x0))), elementwise."""
    return L * jax.nn.sigmoid(k * (x - x0))


def logistic_general_jacobian(
    x: ArrayLike, L: ArrayLike, k: ArrayLike, x0: ArrayLike, *, layout: Layout = "numerator"
) -> Array:
    """Jacobian of the general logistic function f with respect to x:
    diag(L k sigma'(k (x - x0))), equivalently diag((k / L) f(x) * (L - f(x))); stable in
    the tails like :func:`logistic_prime`.

    Args:
      x: shape (K,).
      L: the maximum value, k: the steepness, x0: the midpoint; each a 0-d array.
    """
    check_layout("logistic_general", layout)
    return diagonal_matrix(_logistic_general_derivative(x, L, k, x0))


def _logistic_general_derivative(x: ArrayLike, L: ArrayLike, k: ArrayLike, x0: ArrayLike) -> Array:
    x = _validate.vector("logistic_general", "x", x)
    L = _validate.scalar("logistic_general", "L", L)
    k = _validate.scalar("logistic_general", "k", k)
    x0 = _validate.scalar("logistic_general", "x0", x0)
    return L * k * logistic_prime(k * (x - x0))


# ---------------------------------------------------------------------------- catalogue


def _diagonal_form(rule_id: str, derivative: Callable[..., Array]) -> Callable[..., Diagonal]:
    """The structured closed form of an elementwise rule: ``Diagonal(f'(x))``, computed by
    the same checked derivative function as the dense form's ``diagonal_matrix(f'(x))``."""

    def structured(*args: Any, layout: Layout = "numerator") -> Diagonal:
        return Diagonal(derivative(*args), check_layout(rule_id, layout))

    return structured


def _tanh_derivative(x: Array) -> Array:
    """tanh'(x) = sech^2(x), exact in the tails (never 1 - tanh^2)."""
    return _activations.tanh_prime(_validate.vector("elementwise", "x", x))


def _tanh_map(x: Array) -> Array:
    return jnp.tanh(_validate.vector("elementwise", "x", x))


def _tanh_jacobian(x: Array, *, layout: Layout = "numerator") -> Array:
    return elementwise_jacobian(_tanh_derivative(x), layout=layout)


def _one_vector(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    return (_random.normal(key, (size,), dtype),)


def _one_scalar(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    return (_random.normal(key, (), dtype),)


def _power_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, kr = jax.random.split(key)
    return (
        _random.uniform(kx, (size,), dtype, 0.5, 2.0),
        _random.uniform(kr, (), dtype, -1.5, 2.5),
    )


def _positive_vector(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    return (_random.uniform(key, (size,), dtype, 0.5, 3.0),)


def _logistic_general_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, kl, kk, k0 = jax.random.split(key, 4)
    return (
        _random.normal(kx, (size,), dtype),
        _random.uniform(kl, (), dtype, 0.5, 2.0),
        _random.uniform(kk, (), dtype, 0.5, 1.5),
        _random.normal(k0, (), dtype),
    )


_EDGES_LOGISTIC = (
    "Finite x never gives NaN or inf (computed as e/(1+e)^2 with e = exp(-|x|)); x = +-inf "
    "gives 0; NaN gives NaN. In float64 the value at x = 37.4 is about 5.8e-17, where "
    "sigma(x)(1 - sigma(x)) and jax.grad(jax.nn.sigmoid) give exactly 0."
)

RULES = (
    Rule(
        id="elementwise",
        title="Elementwise vector function",
        formula=r"\frac{\partial f(\mathbf{x})}{\partial \mathbf{x}}"
        r"=\left[\frac{\partial f(x_j)}{\partial x_i}\right]_{K \times K}"
        r"=\operatorname{diag}\left(f^{\prime}(\mathbf{x})\right)",
        numerator_formula=r"\operatorname{diag}\left(f^{\prime}(\mathbf{x})\right)",
        plain="df(x)/dx = diag(f'(x))",
        source="seed",
        shapes="x in R^K, z_k = f(x_k); catalogue instance f = tanh",
        fn=_tanh_map,
        wrt=0,
        closed_form=_tanh_jacobian,
        structured_form=_diagonal_form("elementwise", _tanh_derivative),
        public="matcalc_jax.elementwise_jacobian",
        make_example=_one_vector,
        notes="NaN in f'(x_k) appears at J[k, k] only; off-diagonal entries are exact zeros.",
    ),
    Rule(
        id="logistic_scalar",
        title="Logistic function, scalar",
        formula=r"\sigma^{\prime}(x)=\sigma(x)(1-\sigma(x))",
        numerator_formula=r"\sigma(x)(1-\sigma(x))",
        plain="sigma'(x) = sigma(x)(1 - sigma(x))",
        source="seed",
        shapes="x scalar (0-d array)",
        fn=lambda x: jax.nn.sigmoid(_validate.scalar("logistic_scalar", "x", x)),
        wrt=0,
        closed_form=logistic_scalar_jacobian,
        structured_form=_diagonal_form("logistic_scalar", _logistic_scalar_derivative),
        public="matcalc_jax.logistic_scalar_jacobian",
        make_example=_one_scalar,
        notes=_EDGES_LOGISTIC,
    ),
    Rule(
        id="logistic_vector",
        title="Logistic function, vector",
        formula=r"\sigma^{\prime}(\mathbf{x})"
        r"=\operatorname{diag}(\sigma(\mathbf{x}) \odot(1-\sigma(\mathbf{x})))",
        numerator_formula=r"\operatorname{diag}(\sigma(\mathbf{x}) \odot(1-\sigma(\mathbf{x})))",
        plain="sigma'(x) = diag(sigma(x) . (1 - sigma(x)))",
        source="seed",
        shapes="x in R^K",
        fn=lambda x: jax.nn.sigmoid(_validate.vector("logistic_vector", "x", x)),
        wrt=0,
        closed_form=logistic_jacobian,
        structured_form=_diagonal_form("logistic_vector", _logistic_vector_derivative),
        public="matcalc_jax.logistic_jacobian",
        make_example=_one_vector,
        notes=_EDGES_LOGISTIC,
    ),
    Rule(
        id="power",
        title="Power, elementwise",
        formula=r"\frac{\partial x^{r}}{\partial x}=r x^{r-1}",
        numerator_formula=r"\operatorname{diag}\left(r\,\mathbf{x}^{r-1}\right)",
        plain="d(x^r)/dx = diag(r x^(r-1))",
        source="nndl",
        shapes="x in R^K (positive), r scalar",
        fn=lambda x, r: _validate.vector("power", "x", x) ** _validate.scalar("power", "r", r),
        wrt=0,
        closed_form=power_jacobian,
        structured_form=_diagonal_form("power", _power_derivative),
        public="matcalc_jax.power_jacobian",
        make_example=_power_example,
        notes="x_k = 0 with r < 1 gives inf at J[k, k]; r = 0 gives the zero matrix.",
    ),
    Rule(
        id="exp",
        title="Exponential, elementwise",
        formula=r"\frac{\partial \exp (x)}{\partial x}=\exp (x)",
        numerator_formula=r"\operatorname{diag}\left(\exp(\mathbf{x})\right)",
        plain="d exp(x)/dx = diag(exp(x))",
        source="nndl",
        shapes="x in R^K",
        fn=lambda x: jnp.exp(_validate.vector("exp", "x", x)),
        wrt=0,
        closed_form=exp_jacobian,
        structured_form=_diagonal_form("exp", _exp_derivative),
        public="matcalc_jax.exp_jacobian",
        make_example=_one_vector,
        notes="Overflows to inf where exp(x) does (x > 88.7 in float32).",
    ),
    Rule(
        id="log",
        title="Logarithm, elementwise",
        formula=r"\frac{\partial \log x}{\partial x}=\frac{1}{x}",
        numerator_formula=r"\operatorname{diag}\left(1/\mathbf{x}\right)",
        plain="d log(x)/dx = diag(1/x)",
        source="nndl",
        shapes="x in R^K, x > 0",
        fn=lambda x: jnp.log(_validate.vector("log", "x", x)),
        wrt=0,
        closed_form=log_jacobian,
        structured_form=_diagonal_form("log", _log_derivative),
        public="matcalc_jax.log_jacobian",
        make_example=_positive_vector,
        notes="x_k = 0 gives +inf at J[k, k].",
    ),
    Rule(
        id="logistic_general",
        title="General logistic function, elementwise",
        formula=r"\frac{\partial}{\partial x}\frac{L}{1+\exp (-k(x-x_{0}))}"
        r"=\frac{k}{L} f(x)(L-f(x))",
        numerator_formula=r"\operatorname{diag}\left(L k\,"
        r"\sigma^{\prime}(k(\mathbf{x}-x_0))\right)",
        plain="f'(x) = diag((k/L) f(x)(L - f(x)))",
        source="nndl",
        shapes="x in R^K; L, k, x0 scalars",
        fn=lambda x, L, k, x0: logistic_general(
            _validate.vector("logistic_general", "x", x), L, k, x0
        ),
        wrt=0,
        closed_form=logistic_general_jacobian,
        structured_form=_diagonal_form("logistic_general", _logistic_general_derivative),
        public="matcalc_jax.logistic_general_jacobian",
        make_example=_logistic_general_example,
        notes="Stable in the tails like logistic_prime: no NaN or inf for finite arguments.",
    ),
)
