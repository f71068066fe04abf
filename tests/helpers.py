"""Shared test helpers: the package's one tolerance table, and assertions built on it."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from matcalc_jax import tolerance
from matcalc_jax._harness import relative_error

FLOAT_DTYPES = ("float32", "float64")


def assert_jacobians_close(actual: Any, expected: Any, dtype: Any = None) -> None:
    """Assert equal shapes and normwise relative error within the dtype's tolerance."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    dtype = expected.dtype if dtype is None else dtype
    error = relative_error(actual, expected)
    bound = tolerance(np.dtype(dtype).name)
    assert error <= bound, f"relative error {error:.3e} > tolerance {bound:.1e} ({dtype})"


def assert_derivatives_close(ours: Any, theirs: Any, x: Any, orders: tuple = (1, 2)) -> None:
    """Elementwise f and g agree in value and in each derivative order, by jax.grad."""
    assert_jacobians_close(ours(x), theirs(x))
    for order in orders:
        d_ours, d_theirs = ours, theirs
        for _ in range(order):
            d_ours, d_theirs = jax.grad(d_ours), jax.grad(d_theirs)
        assert_jacobians_close(jax.vmap(d_ours)(x), jax.vmap(d_theirs)(x))


def key(seed: int = 0) -> jax.Array:
    """A PRNG key; tests draw their inputs from fixed seeds so failures reproduce."""
    return jax.random.key(seed)
