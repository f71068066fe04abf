"""Random arguments for the catalogue's examples, drawn to be well conditioned on purpose.

Vectors are standard normal; matrices are standard normal scaled by 1/sqrt(columns), so a
matrix-vector product has entries of order one and a tanh or logistic after it stays away
from saturation; positive arguments (for ``log`` and ``power``) are uniform on an interval
bounded away from zero.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array


def normal(key: Array, shape: tuple[int, ...], dtype: Any) -> Array:
    """Standard normal entries."""
    return jax.random.normal(key, shape, dtype=dtype)


def matrix(key: Array, rows: int, cols: int, dtype: Any) -> Array:
    """A ``rows x cols`` matrix with N(0, 1/cols) entries: rows of norm about one."""
    scale = jnp.asarray(1.0 / jnp.sqrt(cols), dtype)
    return scale * jax.random.normal(key, (rows, cols), dtype=dtype)


def uniform(key: Array, shape: tuple[int, ...], dtype: Any, low: float, high: float) -> Array:
    """Uniform entries on ``[low, high)``."""
    return jax.random.uniform(key, shape, dtype=dtype, minval=low, maxval=high)
