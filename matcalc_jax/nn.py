"""Drop-in replacements for ``jax.nn`` whose derivatives are the kit's closed forms.

Every function takes what its ``jax.nn`` namesake takes (``axis``, ``where=``, ``alpha``,
integer and boolean inputs, promoted as ``jax.nn`` promotes them, empty arrays, every float
dtype) and returns the same dtype and weak type (asked of ``jax.nn`` itself), so replacing
``jax.nn.f`` by ``matcalc_jax.nn.f`` in a model changes nothing but the digits ``jax.nn``
gets wrong. Integer inputs are promoted for every function, also where ``jax.nn`` refuses
them (``jax.nn.sigmoid`` of an int32 array).

Each function is a ``jax.custom_jvp`` (not ``custom_vjp``, so forward and reverse mode both
work: ``jacfwd``, ``jacrev``, ``grad``, ``hessian``) whose tangent is the closed-form
derivative from ``matcalc_jax.forms.activations``, itself a ``custom_jvp`` whose tangent is the
closed-form second derivative. They work under ``jit``, ``vmap``, ``lax.scan`` and
``lax.cond``.

Numerics, beyond ``jax.nn`` (measured against mpmath in docs/accuracy.md):

- sigma'(x) is e / (1 + e)^2 with e = exp(-|x|), tanh'(x) is 4 e / (1 + e)^2 with
  e = exp(-2|x|): exact in the tails, where sigma (1 - sigma) and 1 - tanh^2 are 0.
- ``float16`` and ``bfloat16`` inputs are computed in float32 and rounded once.
- ``softmax``, ``log_softmax``, ``logsumexp``: max-shifted, and the sum of the shifted
  exponentials is carried as 1 + r, r the sum of the entries below the maximum, so
  ``log_softmax([40, 0, -40])[0]`` is -log1p(r) = -4.2e-18, not 0; the Jacobian is centred
  on the largest entry, so its diagonal s_k (1 - s_k) keeps every digit when s_k is near 1.
- NaN in, NaN out: a NaN anywhere in a slice makes the slice's softmax, log_softmax,
  logsumexp and their derivatives NaN. A +inf logit makes softmax and log_softmax NaN and
  logsumexp +inf (with a NaN gradient). A single -inf entry (masked) has softmax 0 and a zero
  row and column in the softmax Jacobian; a slice that is entirely -inf, or masked entirely
  by ``where=``, gives softmax 0, log_softmax and logsumexp -inf, derivatives 0 (``jax.nn``
  gives NaN for the all -inf slice). The table is in docs/models.md.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.forms import activations

Axis = int | tuple[int, ...]

#: Inputs of these dtypes are computed in float32 and the result rounded once.
LOW_PRECISION = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


#: jax.nn functions that mix x with a Python float (alpha * x, ...): integers become the
#: default float type (float64 with x64 on), as in ``jax.nn.elu``.
_WEAK_FLOAT = ("elu", "selu", "celu", "leaky_relu", "relu6")
#: jax.nn functions that mix x with a Python int (logaddexp(x, 0), x / (|x| + 1)): a bool
#: becomes an integer first, then the default float type.
_BOOL_TO_DEFAULT_FLOAT = ("softplus", "soft_sign")


def _inexact(name: str, value: ArrayLike, argument: str = "x") -> Array:
    """``value`` as a float array: floats kept, bool and integers promoted as jax.nn promotes
    them: 64-bit integers to float64 and the others (bool too) to float32, as ``jnp.sin``
    does, except for Python ints, the functions in ``_WEAK_FLOAT`` and a bool in those of
    ``_BOOL_TO_DEFAULT_FLOAT``, which take the default float type."""
    array = _array(name, value, argument)
    if jnp.issubdtype(array.dtype, jnp.floating):
        return array
    if array.dtype == jnp.bool_ or jnp.issubdtype(array.dtype, jnp.integer):
        wide = array.dtype.itemsize == 8
        boolean = array.dtype == jnp.bool_ and name in _BOOL_TO_DEFAULT_FLOAT
        python_number = not hasattr(value, "dtype") and not isinstance(value, bool)
        weak = name in _WEAK_FLOAT or boolean or python_number
        target = jax.dtypes.canonicalize_dtype(jnp.float64 if wide or weak else jnp.float32)
        return array.astype(target)
    raise TypeError(
        f"nn.{name}: argument {argument!r} has dtype {array.dtype}; expected a real number "
        "dtype (a float, an integer or bool)"
    )


def _array(name: str, value: ArrayLike, argument: str) -> Array:
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"nn.{name}: argument {argument!r} is {type(value).__name__}; expected an array "
            f"or a number ({error})"
        ) from None


def _working_dtype(dtype: jnp.dtype) -> jnp.dtype:
    return jnp.dtype(jnp.float32) if dtype in LOW_PRECISION else dtype


def _in_working_precision(function: Callable[..., Array], x: Array, *params: Array) -> Array:
    """function(x, *params) computed in float32 for float16 and bfloat16 x, rounded once."""
    working = _working_dtype(x.dtype)
    params = tuple(jnp.asarray(p, working) for p in params)
    return function(x.astype(working), *params).astype(x.dtype)


def _with_parameter(function: Callable[..., Array], x: Array, parameter: ArrayLike) -> Array:
    """function(x, parameter) in the dtype JAX gives ``parameter * x``: a Python number
    keeps x's dtype, a wider float array widens x (a float64 alpha, as in ``jax.nn.elu``)."""
    dtype = jnp.result_type(x, parameter)
    if jnp.issubdtype(dtype, jnp.floating) and dtype != x.dtype:
        x = x.astype(dtype)
    return _in_working_precision(function, x, parameter)


def _abstract(value: Any) -> Any:
    """An argument as ``jax.eval_shape`` reads it, hashable: an array by its shape, dtype
    and weak type; anything else (a Python number, an axis, a flag) as it is."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        weak = bool(getattr(value, "weak_type", False))
        return jax.ShapeDtypeStruct(tuple(value.shape), value.dtype, weak_type=weak)
    return tuple(value) if isinstance(value, list) else value


@functools.lru_cache(maxsize=1024)
def _reference_type(name: str, args: tuple, kwargs: tuple, kinds: tuple) -> Any:
    """What ``jax.nn.<name>`` returns for these abstract arguments (shapes, dtypes, weak
    types), or None where it refuses them (an integer ``sigmoid``: promoted here).
    ``kinds``, the arguments' Python types, only keys the cache (1, 1.0 and True are
    equal keys, not equal arguments)."""
    try:
        with warnings.catch_warnings():  # jax.nn's own (log_softmax casts -inf to an int)
            warnings.simplefilter("ignore")
            return jax.eval_shape(partial(getattr(jax.nn, name), **dict(kwargs)), *args)
    except Exception:  # jax.nn's refusal, whatever its type
        return None


try:  # JAX's own cast that sets the weak type (jax.lax.convert_element_type cannot)
    from jax._src.lax.lax import _convert_element_type
except ImportError:  # a JAX without it: the dtype is still jax.nn's, the type strong
    _convert_element_type = None


def _retyped(value: Array, reference: Any) -> Array:
    if reference is None or not hasattr(reference, "dtype"):
        return value
    weak = bool(getattr(reference, "weak_type", False))
    if value.dtype == reference.dtype and bool(getattr(value, "weak_type", False)) == weak:
        return value
    if _convert_element_type is None:
        return value.astype(reference.dtype)
    return _convert_element_type(value, reference.dtype, weak_type=weak)


def _typed_as_jax_nn(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` returning the dtype and weak type its ``jax.nn`` namesake returns for
    the same arguments (asked of ``jax.nn`` itself, abstractly, once per kind of
    argument): a Python number or a weakly typed array in gives a weakly typed result
    where ``jax.nn``'s is, so that ``nn.sigmoid(0.5) * h`` keeps a bfloat16 ``h``'s dtype."""

    @functools.wraps(function)
    def typed(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        named = sorted(kwargs.items())
        key = (
            tuple(_abstract(a) for a in args),
            tuple((k, _abstract(v)) for k, v in named),
            tuple(type(a) for a in (*args, *(v for _, v in named))),
        )
        try:
            reference = _reference_type(function.__name__, *key)
        except TypeError:  # an unhashable argument: asked without the cache
            reference = _reference_type.__wrapped__(function.__name__, *key)
        if isinstance(result, tuple):
            references = reference if isinstance(reference, tuple) else (None,) * len(result)
            return tuple(_retyped(v, r) for v, r in zip(result, references, strict=True))
        return _retyped(result, reference)

    return typed


# --------------------------------------------------------------------- elementwise maps


@_typed_as_jax_nn
def sigmoid(x: ArrayLike) -> Array:
    """sigma(x) = 1 / (1 + exp(-x)); derivative sigma'(x) = e / (1 + e)^2, e = exp(-|x|),
    exact in the tails (5.7e-17 at 37.4 in float64, where sigma (1 - sigma) is 0).

    >>> import jax, jax.numpy as jnp
    >>> float(jax.grad(sigmoid)(jnp.float32(0.0)))
    0.25
    """
    return _in_working_precision(activations.sigmoid, _inexact("sigmoid", x))


@_typed_as_jax_nn
def log_sigmoid(x: ArrayLike) -> Array:
    """log sigma(x) = -softplus(-x); derivative sigma(-x) = 1 - sigma(x), without cancellation."""
    return _in_working_precision(activations.log_sigmoid, _inexact("log_sigmoid", x))


@_typed_as_jax_nn
def softplus(x: ArrayLike) -> Array:
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)); derivative sigma(x), second sigma'(x)."""
    return _in_working_precision(activations.softplus, _inexact("softplus", x))


@_typed_as_jax_nn
def tanh(x: ArrayLike) -> Array:
    """tanh(x); derivative sech^2(x) = 4 e / (1 + e)^2, e = exp(-2|x|), exact in the tails
    (1.7e-17 at 20 in float64, where 1 - tanh^2 is 0); second derivative -2 tanh sech^2.
    The value is XLA's tanh in float32 (``jnp.tanh``'s bits) and -m / (2 + m) with
    m = expm1(-2|x|) in float64 (docs/accuracy.md)."""
    return _in_working_precision(activations.tanh, _inexact("tanh", x))


def tanh_prime(x: ArrayLike) -> Array:
    """tanh'(x) = sech^2(x) = 4 e / (1 + e)^2 with e = exp(-2|x|): no cancellation, 0 only
    where it underflows, NaN only for NaN. The derivative of ``tanh``, as an array."""
    return _in_working_precision(activations.tanh_prime, _inexact("tanh_prime", x))


@_typed_as_jax_nn
def silu(x: ArrayLike) -> Array:
    """silu(x) = swish(x) = x sigma(x); derivative sigma(x) (1 + x sigma(-x))."""
    return _in_working_precision(activations.silu, _inexact("silu", x))


swish = silu


@_typed_as_jax_nn
def gelu(x: ArrayLike, approximate: bool = True) -> Array:
    """The Gaussian error linear unit: x Phi(x) (``approximate=False``, derivative
    Phi(x) + x phi(x)), or its tanh form 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
    (the default, as in jax.nn), computed as x sigma(2u), exact in the left tail."""
    function = activations.gelu_tanh if approximate else activations.gelu
    return _in_working_precision(function, _inexact("gelu", x))


@_typed_as_jax_nn
def elu(x: ArrayLike, alpha: ArrayLike = 1.0) -> Array:
    """x for x > 0, alpha (exp(x) - 1) otherwise; derivative 1 or alpha exp(x) (alpha at 0,
    as jax.nn.elu). Differentiable in ``alpha`` too."""
    return _with_parameter(activations.elu, _inexact("elu", x), alpha)


@_typed_as_jax_nn
def selu(x: ArrayLike) -> Array:
    """scale * elu(x, alpha) with scale = 1.0507..., alpha = 1.6732... (self-normalizing)."""
    return _in_working_precision(activations.selu, _inexact("selu", x))


@_typed_as_jax_nn
def celu(x: ArrayLike, alpha: ArrayLike = 1.0) -> Array:
    """max(x, 0) + alpha (exp(min(x, 0) / alpha) - 1); derivative 1 or exp(x / alpha)."""
    return _with_parameter(activations.celu, _inexact("celu", x), alpha)


@_typed_as_jax_nn
def soft_sign(x: ArrayLike) -> Array:
    """x / (1 + |x|); derivative 1 / (1 + |x|)^2."""
    return _in_working_precision(activations.soft_sign, _inexact("soft_sign", x))


softsign = soft_sign


@_typed_as_jax_nn
def leaky_relu(x: ArrayLike, negative_slope: ArrayLike = 0.01) -> Array:
    """x for x >= 0, negative_slope * x otherwise; derivative 1 at 0 (as jax.nn.leaky_relu)."""
    x = _inexact("leaky_relu", x)
    return _with_parameter(activations.leaky_relu, x, negative_slope)


def _piecewise_linear(
    name: str, function: Callable[[Array], Array], integers: Callable[[Array], Array], x: ArrayLike
) -> Array:
    """Integers stay integers (as in jax.nn, where these are selections of x)."""
    array = _array(name, x, "x")
    if array.dtype == jnp.bool_ or jnp.issubdtype(array.dtype, jnp.integer):
        return integers(array)
    return _in_working_precision(function, _inexact(name, array))


@_typed_as_jax_nn
def relu(x: ArrayLike) -> Array:
    """max(x, 0); derivative 1 for x > 0, else 0 (0 at x = 0, like ``jax.nn.relu``)."""
    return _piecewise_linear("relu", activations.relu, lambda x: jnp.maximum(x, 0), x)


@_typed_as_jax_nn
def relu6(x: ArrayLike) -> Array:
    """min(max(x, 0), 6); derivative 1 on (0, 6), else 0 (like ``jax.nn.relu6``)."""
    return _in_working_precision(activations.relu6, _inexact("relu6", x))


@_typed_as_jax_nn
def hard_tanh(x: ArrayLike) -> Array:
    """clip(x, -1, 1); derivative 1 on [-1, 1], else 0 (like ``jax.nn.hard_tanh``)."""
    return _piecewise_linear(
        "hard_tanh",
        activations.hard_tanh,
        lambda x: jnp.where(x > 1, 1, jnp.where(x < -1, -1, x)),
        x,
    )


# ------------------------------------------------------------------- reductions over axis


def _shifted(x: Array, axis: Axis) -> tuple[Array, Array, Array, Array, Array]:
    """The max-shifted pieces of logsumexp over ``axis`` (kept as size-1 axes).

    Returns d = x - m, e = exp(d), r, ``masked`` and m, where m is the maximum and
    sum(e) = 1 + r exactly in exact arithmetic: r sums the entries below the maximum plus
    (number of maxima - 1), so log sum(e) = log1p(r) keeps the digits that log(1 + r) loses.
    ``masked`` marks slices with no entry above -inf (all -inf, or empty): there m is taken as
    0. A +inf maximum makes r NaN.
    """
    m = jnp.max(x, axis=axis, keepdims=True, initial=-jnp.inf)
    masked = m == -jnp.inf
    d = x - jnp.where(masked, jnp.zeros((), x.dtype), m)
    e = jnp.exp(d)
    top = x == m
    below = jnp.sum(jnp.where(top, jnp.zeros((), x.dtype), e), axis=axis, keepdims=True)
    ties = jnp.sum(top, axis=axis, keepdims=True, dtype=x.dtype) - 1
    r = jnp.where(m == jnp.inf, jnp.nan, below + ties)
    return d, e, r, masked, m


def _logsumexp_keepdims(x: Array, axis: Axis) -> Array:
    _, _, r, masked, m = _shifted(x, axis)
    lse = jnp.where(masked, -jnp.inf, jnp.where(masked, 0, m) + jnp.log1p(r))
    return jnp.where(m == jnp.inf, jnp.inf, lse)


def _first_maximum(x: Array, axis: tuple[int, ...]) -> Array:
    """A mask of x's shape: True at the first maximal entry of each slice over ``axis``."""
    m = jnp.max(x, axis=axis, keepdims=True, initial=-jnp.inf)
    kept = [a for a in range(x.ndim) if a not in axis]
    moved = jnp.transpose(x == m, kept + list(axis))
    flat = moved.reshape(*moved.shape[: len(kept)], -1)
    # The smallest index of a maximum (the slice's length where there is none, a NaN
    # maximum): a min-reduction, where a cumulative sum lowers to a reduce-window.
    index = jnp.arange(flat.shape[-1])
    none = flat.shape[-1]
    first_index = jnp.min(jnp.where(flat, index, none), axis=-1, keepdims=True, initial=none)
    first = index == first_index
    return jnp.transpose(first.reshape(moved.shape), np.argsort(kept + list(axis)))


def _centred(x: Array, s: Array, t: Array, axis: tuple[int, ...]) -> Array:
    """(I - 1 s^T) t = t - sum(s t), written so that it and its transpose are both accurate.

    It is q t + (s t - sum(s t)) with q = 1 - s, except at the first largest entry k, where
    q_k = 1 - s_k is taken as the sum of the other entries of s: the (k, k) entry of the
    Jacobian is then that small sum, not a difference of two numbers near 1, in forward mode
    and in the transpose JAX derives for reverse mode (s_k t_k - s_k t_k is exactly 0).
    q_k and 1 - s_k are the same function of x, so the second derivative is unchanged.
    """
    top = _first_maximum(x, axis)
    zero = jnp.zeros((), s.dtype)
    others = jnp.sum(jnp.where(top, zero, s), axis=axis, keepdims=True)
    complement = jnp.where(top, others, 1 - s)
    weighted = s * t
    return complement * t + (weighted - jnp.sum(weighted, axis=axis, keepdims=True))


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _softmax(x: Array, axis: Axis) -> Array:
    _, e, r, masked, _ = _shifted(x, axis)
    return jnp.where(masked, jnp.zeros((), x.dtype), e / (1 + r))


@_softmax.defjvp
def _softmax_jvp(axis: Axis, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    s = _softmax(x, axis)
    # The kit's closed form (diag(s) - s s^T) t, never formed as a matrix.
    return s, s * _centred(x, s, t, axis)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _log_softmax(x: Array, axis: Axis) -> Array:
    d, _, r, masked, _ = _shifted(x, axis)
    return jnp.where(masked, -jnp.inf, d - jnp.log1p(r))


@_log_softmax.defjvp
def _log_softmax_jvp(axis: Axis, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    s = _softmax(x, axis)
    masked = jnp.max(x, axis=axis, keepdims=True, initial=-jnp.inf) == -jnp.inf
    tangent = jnp.where(masked, jnp.zeros((), t.dtype), _centred(x, s, t, axis))
    return _log_softmax(x, axis), tangent  # (I - 1 s^T) t


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _logsumexp(x: Array, axis: Axis) -> Array:
    return _logsumexp_keepdims(x, axis)


@_logsumexp.defjvp
def _logsumexp_jvp(axis: Axis, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    s = _softmax(x, axis)
    return _logsumexp(x, axis), jnp.sum(s * t, axis=axis, keepdims=True)  # s^T t


def _weighted_terms(x: Array, b: Array, axis: Axis) -> tuple[Array, Array, Array, Array]:
    """The pieces of sum b exp(x) over ``axis`` (kept): ``kept`` (b != 0), the shift m (the
    largest kept x; 0 where that is not finite), exp(x - m) at the kept entries (1 where
    not kept: never an overflow) and S = sum b exp(x - m), so that the sum is S e^m."""
    kept = b != 0
    m = jnp.max(jnp.where(kept, x, -jnp.inf), axis=axis, keepdims=True, initial=-jnp.inf)
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), x.dtype))
    shifted = jnp.exp(jnp.where(kept, x - m, 0))
    total = jnp.sum(jnp.where(kept, b * shifted, jnp.zeros((), x.dtype)), axis=axis, keepdims=True)
    return kept, m, shifted, total


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _weighted_logsumexp(x: Array, b: Array, axis: Axis) -> tuple[Array, Array]:
    """log|sum b exp(x)| and its sign, over ``axis`` (kept). An entry with b = 0 is left
    out whatever its x (a large, infinite or NaN x does not reach the sum), as SciPy and
    ``jax.nn.logsumexp`` leave it out."""
    _, m, _, total = _weighted_terms(x, b, axis)
    return m + jnp.log(jnp.abs(total)), jnp.sign(total)


def _weighted_logsumexp_jvp(axis: Axis, primals: tuple, tangents: tuple) -> tuple:
    (x, b), (tx, tb) = primals, tangents
    kept, m, shifted, total = _weighted_terms(x, b, axis)
    lse, sign = _weighted_logsumexp(x, b, axis)  # itself: its derivative is this rule again
    # d log|S e^m| = (sum b e^(x-m) dx + sum e^(x-m) db) / S: the weights of softmax, from
    # the shifted terms (never from e^(x - lse), whose rounded lse carries an error of
    # eps |m| into every weight). The coefficient of dx is 0 where b = 0 (written before the
    # product, so that its transpose is 0 too); that of db is e^(x - m) / S, infinite where
    # a left-out x is large: it only enters when b is differentiated (a symbolic zero
    # tangent contributes nothing).
    terms = []
    if not isinstance(tx, SymbolicZero):
        terms.append(jnp.where(kept, b * shifted / total, jnp.zeros((), x.dtype)) * tx)
    if not isinstance(tb, SymbolicZero):
        terms.append(jnp.exp(x - m) / total * tb)
    tangent = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(x)
    tangent = jnp.sum(tangent, axis=axis, keepdims=True)
    return (lse, sign), (tangent, jnp.zeros_like(sign))


_weighted_logsumexp.defjvp(_weighted_logsumexp_jvp, symbolic_zeros=True)


def _broadcast(name: str, argument: str, x: Array, other: Array) -> tuple[Array, Array]:
    """x and ``other`` broadcast together, as ``jax.nn`` broadcasts ``where`` and ``b`` with
    x (a (2, 3) mask over a (3,) x gives a (2, 3) result)."""
    try:
        shape = jnp.broadcast_shapes(x.shape, other.shape)
    except ValueError:
        raise ValueError(
            f"nn.{name}: argument {argument!r} has shape {tuple(other.shape)}; expected a shape "
            f"that broadcasts with x's {tuple(x.shape)}"
        ) from None
    return jnp.broadcast_to(x, shape), jnp.broadcast_to(other, shape)


def _mask(name: str, where: ArrayLike | None, x: Array) -> tuple[Array, Array | None]:
    """(x, ``where`` as booleans) broadcast together, or (x, None)."""
    if where is None:
        return x, None
    return _broadcast(name, "where", x, _array(name, where, "where").astype(bool))


def _masked_input(x: Array, mask: Array | None) -> Array:
    return x if mask is None else jnp.where(mask, x, -jnp.inf)


@_typed_as_jax_nn
def softmax(x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None) -> Array:
    """exp(x) / sum exp(x) over ``axis``; Jacobian diag(s) - s s^T applied to the tangent.

    ``where`` (booleans broadcasting with x, which may widen the result) leaves entries
    out: they get 0 and derivative 0. A slice with nothing left (all -inf, or all masked)
    gives 0 with derivative 0."""
    x = _inexact("softmax", x)
    x, mask = _mask("softmax", where, x)
    axes = _normalize_axis(axis, x.ndim)
    s = _in_working_precision(lambda x: _softmax(x, axes), _masked_input(x, mask))
    return s if mask is None else jnp.where(mask, s, jnp.zeros((), s.dtype))


@_typed_as_jax_nn
def log_softmax(x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None) -> Array:
    """x - logsumexp(x) over ``axis``; Jacobian I - 1 s^T. Masked entries (``where``) are
    -inf with derivative 0; a slice with nothing left is -inf with derivative 0."""
    x = _inexact("log_softmax", x)
    x, mask = _mask("log_softmax", where, x)
    axes = _normalize_axis(axis, x.ndim)
    y = _in_working_precision(lambda x: _log_softmax(x, axes), _masked_input(x, mask))
    return y if mask is None else jnp.where(mask, y, -jnp.inf)


@_typed_as_jax_nn
def logsumexp(
    a: ArrayLike,
    axis: Axis | None = None,
    b: ArrayLike | None = None,
    keepdims: bool = False,
    return_sign: bool = False,
    where: ArrayLike | None = None,
) -> Array | tuple[Array, Array]:
    """log sum exp(a) over ``axis`` (every axis by default), as ``jax.nn.logsumexp``;
    gradient softmax(a). With ``b``: log|sum b exp(a)|, and its sign if ``return_sign``
    (without it, a negative sum gives NaN). An all -inf (or all masked) slice gives -inf
    with gradient 0, where ``jax.nn.logsumexp``'s gradient is NaN. An entry with b = 0 is
    left out whatever its a (large, infinite or NaN), with derivative 0 in a, as in
    ``jax.nn``; the derivative in b there is the exact e^(a - lse) (``jax.nn`` gives 0)."""
    x = _inexact("logsumexp", a, "a")
    weights = None if b is None else _inexact("logsumexp", b, "b")
    if weights is not None:
        x, weights = _broadcast("logsumexp", "b", x, weights)
    x, mask = _mask("logsumexp", where, x)
    axes = _normalize_axis(axis, x.ndim)
    x = _masked_input(x, mask)
    if weights is None and not return_sign:
        lse = _in_working_precision(lambda x: _logsumexp(x, axes), x)
        return lse if keepdims else jnp.squeeze(lse, axis=axes)
    weights = jnp.ones_like(x) if weights is None else jnp.broadcast_to(weights, x.shape)
    if mask is not None:
        weights = jnp.where(mask, weights, jnp.zeros((), weights.dtype))
    dtype = jnp.result_type(x, weights)
    if b is not None and hasattr(a, "dtype") and hasattr(b, "dtype"):
        # a and b promoted together, then made inexact, as jax.nn.logsumexp does: an int64
        # a with a float32 b is float32
        common = jnp.result_type(a, b)
        dtype = common if jnp.issubdtype(common, jnp.floating) else dtype
    working = _working_dtype(dtype)
    lse, sign = _weighted_logsumexp(x.astype(working), weights.astype(working), axes)
    lse, sign = lse.astype(dtype), sign.astype(dtype)
    if not keepdims:
        lse, sign = jnp.squeeze(lse, axis=axes), jnp.squeeze(sign, axis=axes)
    if return_sign:
        return lse, sign
    return jnp.where(sign < 0, jnp.nan, lse)


def _normalize_axis(axis: Axis | None, ndim: int) -> tuple[int, ...]:
    """``axis`` as a tuple of non-negative ints (None: every axis); a hashable static."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int | np.integer) else axis
    if not isinstance(axes, tuple | list) or not all(isinstance(a, int | np.integer) for a in axes):
        raise TypeError(f"nn: axis={axis!r}; expected an int, a tuple of ints or None")
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"nn: axis {a} is out of range for an array of rank {ndim}")
    return tuple(int(a) % ndim for a in axes)


# ------------------------------------------------------------------ the seed's forms


@jax.custom_jvp
def _inner(y: Array, z: Array) -> Array:
    return y @ z


@_inner.defjvp
def _inner_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (y, z), (ty, tz) = primals, tangents
    return _inner(y, z), ty @ z + y @ tz  # d(y^T z) = dy^T z + y^T dz


def inner(y: ArrayLike, z: ArrayLike) -> Array:
    """y^T z for vectors y, z of one length (the seed's first product rule)."""
    y, z = validate.vector("nn.inner", "y", y), validate.vector("nn.inner", "z", z)
    validate.shape("nn.inner", "z", z, y.shape, "the shape of y")
    return _inner(y, z)


@jax.custom_jvp
def _bilinear(y: Array, A: Array, z: Array) -> Array:
    return y @ A @ z


@_bilinear.defjvp
def _bilinear_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (y, A, z), (ty, tA, tz) = primals, tangents
    # d(y^T A z) = dy^T A z + y^T dA z + y^T A dz: linear in the tangents.
    return _bilinear(y, A, z), ty @ (A @ z) + y @ tA @ z + (y @ A) @ tz


def bilinear(y: ArrayLike, A: ArrayLike, z: ArrayLike) -> Array:
    """y^T A z for y (n,), A (n, p), z (p,) (the seed's second product rule)."""
    y = validate.vector("nn.bilinear", "y", y)
    z = validate.vector("nn.bilinear", "z", z)
    A = validate.floating("nn.bilinear", "A", A)
    validate.shape("nn.bilinear", "A", A, y.shape + z.shape, "(len(y), len(z))")
    return _bilinear(y, A, z)


@jax.custom_jvp
def _dense(W: Array, x: Array, b: Array) -> Array:
    return W @ x + b


@_dense.defjvp
def _dense_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (W, x, b), (tW, tx, tb) = primals, tangents
    return _dense(W, x, b), tW @ x + W @ tx + tb  # d(W x + b) = dW x + W dx + db


def dense(W: ArrayLike, x: ArrayLike, b: ArrayLike) -> Array:
    """A dense layer W x + b for W (n, m), x (m,), b (n,); d/dx is W (the seed's A^T in
    denominator layout). For a batch, ``jax.vmap(dense, in_axes=(None, 0, None))``."""
    x = validate.vector("nn.dense", "x", x)
    W = validate.matrix_acting_on("nn.dense", "W", W, "x", x)
    b = validate.floating("nn.dense", "b", b)
    validate.shape("nn.dense", "b", b, (W.shape[0],), "the rows of W")
    return _dense(W, x, b)


def linear(A: ArrayLike, x: ArrayLike) -> Array:
    """A x for A (n, m), x (m,): ``dense`` without a bias."""
    x = validate.vector("nn.linear", "x", x)
    A = validate.matrix_acting_on("nn.linear", "A", A, "x", x)
    return _dense(A, x, jnp.zeros(A.shape[0], jnp.result_type(A, x)))
