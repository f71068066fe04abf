"""Drop-in activations and forms whose derivatives are the kit's closed forms.

Each function is a ``jax.custom_jvp`` (not ``custom_vjp``, so forward and reverse mode both
work: ``jacfwd``, ``jacrev``, ``grad``, ``hessian``) whose tangent rule is the closed form,
linear in the tangents, and written in differentiable jnp operations, so second derivatives
come out right too. They work under ``jit``, ``vmap``, ``lax.scan`` and ``lax.cond``.

Numerics, beyond ``jax.nn``:

- ``sigmoid``, ``log_sigmoid``, ``softplus``: sigma'(x) as e / (1 + e)^2 with
  e = exp(-|x|) (:func:`matcalc_jax.logistic_prime`): the float64 derivative at x = 37.4 is
  5.8e-17, not 0; no NaN or inf for any finite input in float16, bfloat16, float32, float64.
- ``tanh``: tanh'(x) = sech^2(x) = 4 e / (1 + e)^2 with e = exp(-2|x|), not 1 - tanh^2,
  which is exactly 0 from |x| of about 19 in float64.
- ``logsumexp``, ``softmax``, ``log_softmax``: max-shifted (logits of 1e4 are fine). A slice
  that is entirely ``-inf`` (fully masked) gives ``logsumexp = -inf``, ``softmax = 0``,
  ``log_softmax = -inf``, and derivatives 0, where ``jax.nn`` gives NaN. A single ``-inf`` entry
  (masked) has softmax 0 and a zero row and column in the Jacobian, as in ``jax.nn``.
- ``relu``: derivative 0 at x = 0, as ``jax.nn.relu``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax import _validate

Axis = int | tuple[int, ...]


def _floating(name: str, value: ArrayLike, argument: str = "x") -> Array:
    return _validate.floating(f"nn.{name}", argument, value)


# --------------------------------------------------------------------- elementwise maps


@jax.custom_jvp
def _sigmoid(x: Array) -> Array:
    return jax.nn.sigmoid(x)


@_sigmoid.defjvp
def _sigmoid_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    # One exponential for both: e = exp(-|x|), sigma = 1/(1+e) or e/(1+e), sigma' = e/(1+e)^2.
    e = jnp.exp(-jnp.abs(x))
    inverse = 1 / (1 + e)
    y = jnp.where(x >= 0, inverse, e * inverse)
    return y, e * jnp.square(inverse) * t


def sigmoid(x: ArrayLike) -> Array:
    """sigma(x) = 1 / (1 + exp(-x)); derivative sigma'(x), exact in the tails.

    >>> import jax, jax.numpy as jnp
    >>> float(jax.grad(sigmoid)(jnp.float32(0.0)))
    0.25
    """
    return _sigmoid(_floating("sigmoid", x))


@jax.custom_jvp
def _softplus(x: Array) -> Array:
    return jnp.logaddexp(x, jnp.zeros((), x.dtype))


@_softplus.defjvp
def _softplus_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    return _softplus(x), _sigmoid(x) * t


def softplus(x: ArrayLike) -> Array:
    """log(1 + exp(x)); derivative sigma(x)."""
    return _softplus(_floating("softplus", x))


def log_sigmoid(x: ArrayLike) -> Array:
    """log sigma(x) = -softplus(-x); derivative sigma(-x) = 1 - sigma(x), without cancellation."""
    return -_softplus(-_floating("log_sigmoid", x))


def tanh_prime(x: ArrayLike) -> Array:
    """tanh'(x) = sech^2(x), computed as 4 e / (1 + e)^2 with e = exp(-2|x|): no cancellation,
    0 only where it underflows, NaN only for NaN."""
    x = _floating("tanh_prime", x)
    e = jnp.exp(-2 * jnp.abs(x))
    return 4 * e / jnp.square(1 + e)


@jax.custom_jvp
def _tanh(x: Array) -> Array:
    return jnp.tanh(x)


@_tanh.defjvp
def _tanh_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    # One exponential for both: m = expm1(-2|x|), e = 1 + m, tanh|x| = -m / (2 + m) (no
    # cancellation near 0), tanh' = 4 e / (1 + e)^2 (none in the tails).
    m = jnp.expm1(-2 * jnp.abs(x))
    y = jnp.sign(x) * (-m / (2 + m))
    return y, 4 * (1 + m) / jnp.square(2 + m) * t


def tanh(x: ArrayLike) -> Array:
    """tanh(x); derivative sech^2(x) = 4 e / (1 + e)^2, e = exp(-2|x|), exact in the tails."""
    return _tanh(_floating("tanh", x))


@jax.custom_jvp
def _relu(x: Array) -> Array:
    return jnp.maximum(x, jnp.zeros((), x.dtype))


@_relu.defjvp
def _relu_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    return _relu(x), jnp.where(x > 0, t, jnp.zeros((), t.dtype))


def relu(x: ArrayLike) -> Array:
    """max(x, 0); derivative 1 for x > 0, else 0 (0 at x = 0, like ``jax.nn.relu``)."""
    return _relu(_floating("relu", x))


# ------------------------------------------------------------------- reductions over axis


def _safe_max(x: Array, axis: Axis) -> Array:
    """The max over ``axis`` (kept), with 0 where a slice has no finite maximum."""
    m = jnp.max(x, axis=axis, keepdims=True)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros((), x.dtype)))


def _logsumexp_keepdims(x: Array, axis: Axis) -> Array:
    m = _safe_max(x, axis)
    return jnp.log(jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True)) + m


def _weights(x: Array, lse: Array) -> Array:
    """softmax(x) = exp(x - lse), and 0 for a slice that is entirely -inf."""
    finite = jnp.isfinite(lse)
    return jnp.where(finite, jnp.exp(x - jnp.where(finite, lse, jnp.zeros((), x.dtype))), 0)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _logsumexp(x: Array, axis: Axis) -> Array:
    return jnp.squeeze(_logsumexp_keepdims(x, axis), axis=axis)


@_logsumexp.defjvp
def _logsumexp_jvp(axis: Axis, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    lse = _logsumexp_keepdims(x, axis)
    w = _weights(x, lse)
    return jnp.squeeze(lse, axis=axis), jnp.sum(w * t, axis=axis)


def logsumexp(x: ArrayLike, axis: Axis | None = None) -> Array:
    """log sum exp(x) over ``axis`` (all axes by default, like ``jax.nn.logsumexp``);
    gradient softmax(x). An all ``-inf`` slice gives -inf with gradient 0
    (``jax.nn.logsumexp``'s gradient is NaN there)."""
    x = _floating("logsumexp", x)
    return _logsumexp(x, _normalize_axis(axis, x.ndim))


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _softmax(x: Array, axis: Axis) -> Array:
    return _weights(x, _logsumexp_keepdims(x, axis))


@_softmax.defjvp
def _softmax_jvp(axis: Axis, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    s = _softmax(x, axis)
    # The kit's closed form (diag(s) - s s^T) t, never formed as a matrix.
    return s, s * (t - jnp.sum(s * t, axis=axis, keepdims=True))


def softmax(x: ArrayLike, axis: Axis = -1) -> Array:
    """softmax over ``axis``; Jacobian diag(s) - s s^T applied to the tangent. An all ``-inf``
    slice gives 0 with derivative 0 (``jax.nn.softmax`` gives NaN)."""
    x = _floating("softmax", x)
    return _softmax(x, _normalize_axis(axis, x.ndim))


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _log_softmax(x: Array, axis: Axis) -> Array:
    lse = _logsumexp_keepdims(x, axis)
    return jnp.where(jnp.isfinite(lse), x - lse, -jnp.inf)


@_log_softmax.defjvp
def _log_softmax_jvp(axis: Axis, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    lse = _logsumexp_keepdims(x, axis)
    finite = jnp.isfinite(lse)
    shifted = x - jnp.where(finite, lse, jnp.zeros((), x.dtype))
    s = jnp.where(finite, jnp.exp(shifted), 0)
    tangent = jnp.where(finite, t - jnp.sum(s * t, axis=axis, keepdims=True), 0)
    return jnp.where(finite, shifted, -jnp.inf), tangent


def log_softmax(x: ArrayLike, axis: Axis = -1) -> Array:
    """x - logsumexp(x) over ``axis``; Jacobian I - 1 s^T. An all ``-inf`` slice gives -inf
    with derivative 0 (``jax.nn.log_softmax`` gives NaN)."""
    x = _floating("log_softmax", x)
    return _log_softmax(x, _normalize_axis(axis, x.ndim))


def _normalize_axis(axis: Axis | None, ndim: int) -> tuple[int, ...]:
    """``axis`` as a tuple of non-negative ints (None: every axis); a hashable static."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else axis
    if not isinstance(axes, tuple | list) or not all(isinstance(a, int) for a in axes):
        raise TypeError(f"nn: axis={axis!r}; expected an int, a tuple of ints or None")
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"nn: axis {a} is out of range for an array of rank {ndim}")
    return tuple(a % ndim for a in axes)


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
    y, z = _validate.vector("nn.inner", "y", y), _validate.vector("nn.inner", "z", z)
    _validate.shape("nn.inner", "z", z, y.shape, "the shape of y")
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
    y = _validate.vector("nn.bilinear", "y", y)
    z = _validate.vector("nn.bilinear", "z", z)
    A = _validate.floating("nn.bilinear", "A", A)
    _validate.shape("nn.bilinear", "A", A, y.shape + z.shape, "(len(y), len(z))")
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
    x = _validate.vector("nn.dense", "x", x)
    W = _validate.matrix_acting_on("nn.dense", "W", W, "x", x)
    b = _validate.floating("nn.dense", "b", b)
    _validate.shape("nn.dense", "b", b, (W.shape[0],), "the rows of W")
    return _dense(W, x, b)


def linear(A: ArrayLike, x: ArrayLike) -> Array:
    """A x for A (n, m), x (m,): ``dense`` without a bias."""
    x = _validate.vector("nn.linear", "x", x)
    A = _validate.matrix_acting_on("nn.linear", "A", A, "x", x)
    return _dense(A, x, jnp.zeros(A.shape[0], jnp.result_type(A, x)))
