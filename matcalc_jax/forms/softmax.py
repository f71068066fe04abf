"""Softmax: d softmax(x)/dx = diag(s) - s s^T with s = softmax(x); symmetric, so the same
in both layouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout, check_layout
from matcalc_jax.operators import DiagonalPlusLowRank


def softmax_map(x: ArrayLike) -> Array:
    """``jax.nn.softmax(x)`` for a vector x, with the shape checked."""
    return jax.nn.softmax(validate.vector("softmax", "x", x))


def softmax_jacobian(x: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """Jacobian of softmax at x of shape (K,): diag(s) - s s^T with s = softmax(x).

    The diagonal s_i - s_i^2 = s_i (1 - s_i) cancels when s_i is close to 1
    (``jax.jacfwd`` of ``jax.nn.softmax`` loses digits there). Only the largest entry can
    exceed 1/2, so its complement 1 - s_k is summed from the other entries instead,
    and every entry of the Jacobian keeps full relative accuracy.

    s is computed by ``jax.nn.softmax`` (max-shifted, so large logits are fine). An entry
    x_k = -inf gives s_k = 0 and a zero row and column k; all entries -inf give NaN, like
    softmax itself.

    >>> import jax.numpy as jnp
    >>> softmax_jacobian(jnp.zeros(2, jnp.float32))
    Array([[ 0.25, -0.25],
           [-0.25,  0.25]], dtype=float32)
    """
    check_layout("softmax", layout)
    s = softmax_map(x)
    n = s.shape[0]
    if n == 0:
        return jnp.zeros((0, 0), s.dtype)
    index = jnp.arange(n)
    is_largest = index == jnp.argmax(s)
    others = jnp.sum(jnp.where(is_largest, jnp.zeros((), s.dtype), s))
    complement = jnp.where(is_largest, others, 1 - s)
    return jnp.where(index[:, None] == index[None, :], s * complement, -s[:, None] * s[None, :])


def softmax_operator(x: ArrayLike, *, layout: Layout = "numerator") -> DiagonalPlusLowRank:
    """diag(s) - s s^T as diagonal plus rank one: O(K) memory, O(K) products."""
    layout = check_layout("softmax", layout)
    s = softmax_map(x)
    return DiagonalPlusLowRank(s, -s[:, None], s[:, None], layout)
