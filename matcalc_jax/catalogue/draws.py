"""Random arguments for the catalogue's examples, drawn to be well conditioned on purpose.

Vectors are standard normal; matrices are standard normal scaled by 1/sqrt(columns), so a
matrix-vector product has entries of order one and a tanh or logistic after it stays away
from saturation; positive arguments (for ``log`` and ``power``) are uniform on an interval
bounded away from zero.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

#: Every draw is the first entries of a vector of ``jax.random`` draws whose length is a
#: power of two, at least this: ``jax.random`` compiles one program per shape and dtype
#: (about 0.15 s each on a CPU), so the cases of every rule share a few of them instead of
#: compiling one for each shape they draw.
SHORTEST_DRAW = 4096


def _length(shape: tuple[int, ...]) -> int:
    """The length of the vector a draw of ``shape`` is cut from."""
    return max(SHORTEST_DRAW, 1 << max(math.prod(shape) - 1, 0).bit_length())


def _first(vector: Array, shape: tuple[int, ...], scale: float = 1.0) -> Array:
    """The first prod(shape) entries of ``vector`` in ``shape``, times ``scale`` rounded to
    the dtype: cut on the host and put back (nothing to compile: ``jnp.asarray`` would
    compile a copy per shape) when ``vector`` is concrete, by ``lax`` when it is traced."""
    count = math.prod(shape)
    try:
        cut, put = np.asarray(vector)[:count].reshape(shape), jax.device_put
    except jax.errors.TracerArrayConversionError:
        cut, put = vector[:count].reshape(shape), lambda traced: traced
    if scale != 1:  # the factor in float64, rounded once to the dtype: the same in any mode
        cut = cut * np.asarray(scale, vector.dtype)
    return put(cut)


def normal(key: Array, shape: tuple[int, ...], dtype: Any, scale: float = 1.0) -> Array:
    """Entries N(0, scale^2): standard normal entries times ``scale`` (a Python number,
    rounded to ``dtype`` once, whatever the thread's 64-bit mode)."""
    shape = tuple(int(d) for d in shape)
    return _first(jax.random.normal(key, (_length(shape),), dtype=dtype), shape, scale)


def matrix(key: Array, rows: int, cols: int, dtype: Any) -> Array:
    """A ``rows x cols`` matrix with N(0, 1/cols) entries: rows of norm about one."""
    return normal(key, (rows, cols), dtype, scale=1 / math.sqrt(cols))


def uniform(key: Array, shape: tuple[int, ...], dtype: Any, low: float, high: float) -> Array:
    """Uniform entries on ``[low, high)``."""
    shape = tuple(int(d) for d in shape)
    vector = jax.random.uniform(key, (_length(shape),), dtype=dtype, minval=low, maxval=high)
    return _first(vector, shape)


def bernoulli(key: Array, shape: tuple[int, ...], dtype: Any) -> Array:
    """0/1 entries, each 1 with probability 1/2 (from float32 uniform draws, where
    ``jax.random.bernoulli`` draws in the default float type: other labels in 64-bit mode)."""
    return (uniform(key, shape, jnp.float32, 0.0, 1.0) < 0.5).astype(dtype)


def well_conditioned(key: Array, n: int, dtype: Any) -> Array:
    """An ``n x n`` matrix I + E with E = G / (2 ||G||_2), G standard normal.

    Its singular values lie in [1/2, 3/2] (so its 2-norm condition number is at most 3) and
    its eigenvalues in the disc of radius 1/2 around 1 (so its determinant is positive):
    a safe point for the inverse, the determinant, the log-determinant and solves, by
    construction rather than by luck.
    """
    work = jnp.promote_types(dtype, jnp.float32)  # the SVD behind the 2-norm needs >= 32 bits
    G = normal(key, (n, n), work)
    E = G / (2 * jnp.linalg.norm(G, ord=2))
    return (jnp.eye(n, dtype=work) + E).astype(dtype)
