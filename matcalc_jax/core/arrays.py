"""Dense arrays the closed forms share."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def diagonal_matrix(diagonal: Array) -> Array:
    """The square matrix with ``diagonal`` on its diagonal and exact zeros elsewhere.

    Written as a scatter into zeros: XLA on a CPU runs the ``where(eye, d, 0)`` form (an iota
    comparison per entry) several times slower, about 8x at n = 1024, where the scatter
    writes at the speed of ``jax.jacfwd``'s own diagonal.
    """
    return add_to_diagonal(jnp.zeros((diagonal.shape[0],) * 2, diagonal.dtype), diagonal)


def add_to_diagonal(matrix: Array, diagonal: Array) -> Array:
    """``matrix + diag(diagonal)`` for a square ``matrix``."""
    index = jnp.arange(diagonal.shape[0])
    return matrix.at[index, index].add(diagonal.astype(matrix.dtype))
