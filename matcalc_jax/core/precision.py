"""Half precision: compute in float32, round once."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

_HALF = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def is_half(dtype: Any) -> bool:
    """Whether ``dtype`` is float16 or bfloat16 (computed in float32 here)."""
    return jnp.dtype(dtype) in _HALF


def in_working_precision(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` on float16/bfloat16 arguments in float32 and round its result once (an
    array, or every array in a structured operator), to the arguments' dtype. Other dtypes
    pass through untouched.

    jaxlib's CPU LAPACK (LU, triangular solves, SVD) has no half-precision kernels, so the
    inverse, determinant and solves need it; and a closed form of a few operations each
    rounded to 8 bits (bfloat16) drifts by several units in the last place, where one
    rounding at the end gives half a unit.
    """

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        low = [a.dtype for a in args if getattr(a, "dtype", None) in _HALF]
        if not low:
            return fn(*args, **kwargs)
        dtype = jnp.result_type(*low)
        wide = [
            jnp.asarray(a, jnp.float32) if getattr(a, "dtype", None) in _HALF else a for a in args
        ]
        return jax.tree.map(partial(_round, dtype), fn(*wide, **kwargs), is_leaf=_holds_dtype)

    return wrapped


def _holds_dtype(node: Any) -> bool:
    """An operator with no arrays that records its dtype (``Identity``)."""
    return hasattr(node, "dtype_name")


def _round(dtype: Any, node: Any) -> Any:
    if _holds_dtype(node):
        return dataclasses.replace(node, dtype_name=jnp.dtype(dtype).name)
    return node.astype(dtype) if jnp.issubdtype(node.dtype, jnp.floating) else node
