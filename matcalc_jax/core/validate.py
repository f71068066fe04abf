"""Argument checks shared by every rule.

Shapes and dtypes are static under ``jax.jit``, so these checks run at trace time and a bad
argument raises here, with the rule, the argument and what was expected, instead of deep
inside XLA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike


def function(what: str, name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is callable: a transform given something else
    says so when it is made, not deep inside JAX when it is called."""
    if not callable(value):
        raise TypeError(
            f"matcalc_jax.{what}: {name} is {type(value).__name__} {value!r:.60}; expected a "
            "function"
        )


def flag(rule_id: str, name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (Python's or NumPy's), else raise ``TypeError``: a
    string such as ``"no"`` is truthy and would silently mean True."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(
            f"rule {rule_id!r}: {name} is {type(value).__name__} {value!r:.60}; expected True "
            "or False"
        )
    return bool(value)


def floating(rule_id: str, name: str, value: ArrayLike) -> Array:
    """Return ``value`` as a JAX array, raising ``TypeError`` unless its dtype is floating.

    Python floats and lists of them are accepted; integer, boolean and complex values are
    refused, since the rules describe Jacobians of real maps of real arguments.
    """
    try:
        array = jnp.asarray(value)
    except (TypeError, ValueError) as error:  # a string, a ragged list, an object
        raise TypeError(
            f"rule {rule_id!r}: argument {name!r} is {type(value).__name__}; expected an array "
            f"of a floating dtype ({error})"
        ) from None
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(
            f"rule {rule_id!r}: argument {name!r} has dtype {array.dtype}; expected a "
            "floating dtype (float16, bfloat16, float32 or float64)"
        )
    return array


def rank(rule_id: str, name: str, array: Array, ndim: int, what: str) -> None:
    """Raise ``ValueError`` unless ``array.ndim == ndim``; ``what`` names the expected object."""
    if array.ndim != ndim:
        raise ValueError(
            f"rule {rule_id!r}: argument {name!r} must be {what} (rank {ndim}); "
            f"got shape {tuple(array.shape)} (rank {array.ndim})"
        )


def shape(rule_id: str, name: str, array: Array, expected: Sequence[int], why: str = "") -> None:
    """Raise ``ValueError`` unless ``array.shape == expected``; ``why`` says where it comes from."""
    expected = tuple(int(d) for d in expected)
    if tuple(array.shape) != expected:
        reason = f" ({why})" if why else ""
        raise ValueError(
            f"rule {rule_id!r}: argument {name!r} has shape {tuple(array.shape)}; "
            f"expected {expected}{reason}"
        )


def jacobian(
    rule_id: str,
    name: str,
    value: ArrayLike,
    out_shape: Sequence[int],
    layout: str,
    in_shape: Sequence[int] | None = None,
) -> tuple[Array, tuple[int, ...]]:
    """Check a user-supplied Jacobian piece and return it with its input shape.

    In numerator layout its shape must be ``out_shape + in_shape``, in denominator layout
    ``in_shape + out_shape``; ``in_shape=None`` accepts any input shape (the first piece of a
    combinator fixes it for the others).
    """
    array = floating(rule_id, name, value)
    out_shape = tuple(int(d) for d in out_shape)
    k = len(out_shape)
    if array.ndim >= k:
        if layout == "numerator":
            got_out, got_in = array.shape[:k], array.shape[k:]
        else:
            got_in, got_out = array.shape[: array.ndim - k], array.shape[array.ndim - k :]
        if tuple(got_out) == out_shape and (in_shape is None or tuple(got_in) == tuple(in_shape)):
            return array, tuple(got_in)
    order = "out.shape + in.shape" if layout == "numerator" else "in.shape + out.shape"
    if in_shape is None:
        expected = f"{order} with out.shape = {out_shape}"
    else:
        in_shape = tuple(int(d) for d in in_shape)
        full = out_shape + in_shape if layout == "numerator" else in_shape + out_shape
        expected = f"{full} = {order}"
    raise ValueError(
        f"rule {rule_id!r}: argument {name!r} has shape {tuple(array.shape)}; expected "
        f"{expected} ({layout} layout)"
    )


def vector(rule_id: str, name: str, value: ArrayLike) -> Array:
    """A floating vector (rank 1), else the error of ``floating`` or ``rank``."""
    array = floating(rule_id, name, value)
    rank(rule_id, name, array, 1, "a vector")
    return array


def scalar(rule_id: str, name: str, value: ArrayLike) -> Array:
    """A floating scalar (a 0-d array), else the error of ``floating`` or ``rank``."""
    array = floating(rule_id, name, value)
    rank(rule_id, name, array, 0, "a scalar (0-d array)")
    return array


def matrix_acting_on(
    rule_id: str, name: str, value: ArrayLike, vector_name: str, vector: Array
) -> Array:
    """A floating matrix whose number of columns is the length of ``vector``."""
    array = matrix(rule_id, name, value)
    if array.shape[1] != vector.shape[0]:
        raise ValueError(
            f"rule {rule_id!r}: argument {name!r} has shape {tuple(array.shape)}; expected "
            f"{array.shape[0]} rows of {vector.shape[0]} columns, to act on {vector_name!r} of "
            f"shape {tuple(vector.shape)}"
        )
    return array


def matrix(rule_id: str, name: str, value: ArrayLike) -> Array:
    """A floating matrix (rank 2), else the error of ``floating`` or ``rank``."""
    array = floating(rule_id, name, value)
    rank(rule_id, name, array, 2, "a matrix")
    return array


def square(rule_id: str, name: str, value: ArrayLike) -> Array:
    """A floating square matrix (n, n)."""
    array = matrix(rule_id, name, value)
    if array.shape[0] != array.shape[1]:
        raise ValueError(
            f"rule {rule_id!r}: argument {name!r} has shape {tuple(array.shape)}; expected a "
            "square matrix (n, n)"
        )
    return array


def affine(rule_id: str, A: ArrayLike, X: ArrayLike, B: ArrayLike) -> tuple[Array, Array, Array]:
    """A (s, p), X (p, q), B (q, t): the three factors of A X B, with their shapes checked."""
    X = matrix(rule_id, "X", X)
    A = matrix(rule_id, "A", A)
    B = matrix(rule_id, "B", B)
    shape(rule_id, "A", A, (A.shape[0], X.shape[0]), f"A @ X with X of shape {X.shape}")
    shape(rule_id, "B", B, (X.shape[1], B.shape[1]), f"X @ B with X of shape {X.shape}")
    return A, X, B
