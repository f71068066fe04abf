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


def well_conditioned(key: Array, n: int, dtype: Any) -> Array:
    """An ``n x n`` matrix I + E with E = G / (2 ||G||_2), G standard normal.

    Its singular values lie in [1/2, 3/2] (so its 2-norm condition number is at most 3) and
    its eigenvalues in the disc of radius 1/2 around 1 (so its determinant is positive):
    a safe point for the inverse, the determinant, the log-determinant and solves, by
    construction rather than by luck.
    """
    work = jnp.promote_types(dtype, jnp.float32)  # the SVD behind the 2-norm needs >= 32 bits
    G = jax.random.normal(key, (n, n), dtype=work)
    E = G / (2 * jnp.linalg.norm(G, ord=2))
    return (jnp.eye(n, dtype=work) + E).astype(dtype)
