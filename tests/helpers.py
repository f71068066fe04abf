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


def key(seed: int = 0) -> jax.Array:
    """A PRNG key; tests draw their inputs from fixed seeds so failures reproduce."""
    return jax.random.key(seed)
