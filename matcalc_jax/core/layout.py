"""Layout conventions for Jacobians.

JAX's Jacobians have shape ``out.shape + in.shape``: the *numerator* layout, which
``jax.jacfwd(f)(x)`` returns. The seed page writes *denominator* layout: for x in R^m and
y in R^n, dy/dx is m x n, so that d(Ax)/dx = A^T. A denominator-layout Jacobian is the
numerator one with its ``out`` and ``in`` axes swapped; a scalar-by-matrix derivative has the
matrix's shape in both.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from jax import Array

Layout = Literal["numerator", "denominator"]
LAYOUTS: tuple[str, ...] = ("numerator", "denominator")


def check_layout(rule_id: str, layout: object) -> Layout:
    """Return ``layout`` if it is a known layout, else raise ``ValueError`` naming the rule."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(
            f"rule {rule_id!r}: layout={layout!r} is not a layout; expected one of {LAYOUTS}"
        )
    return layout  # type: ignore[return-value]


def swap_out_in(jacobian: Array, out_ndim: int) -> Array:
    """Move the first ``out_ndim`` axes of ``jacobian`` behind the rest.

    Applied to a numerator-layout Jacobian (``out.shape + in.shape``) it gives the
    denominator layout (``in.shape + out.shape``). The array's own ``transpose``: a NumPy
    array stays on the host (nothing compiled), a JAX array or tracer stays JAX's.
    """
    ndim = jacobian.ndim
    if out_ndim == 0 or out_ndim == ndim:
        return jacobian
    axes = tuple(range(out_ndim, ndim)) + tuple(range(out_ndim))
    return jacobian.transpose(axes)


def from_numerator(jacobian: Array, out_ndim: int, layout: Layout) -> Array:
    """Arrange a numerator-layout Jacobian with ``out_ndim`` output axes in ``layout``."""
    if layout == "numerator":
        return jacobian
    return swap_out_in(jacobian, out_ndim)


def to_numerator(jacobian: Array, in_ndim: int, layout: Layout) -> Array:
    """Arrange a Jacobian given in ``layout`` (``in_ndim`` input axes) in numerator layout."""
    if layout == "numerator":
        return jacobian
    return swap_out_in(jacobian, in_ndim)


def contract_output(cotangent: Array, jacobian: Array, layout: Layout) -> Array:
    """Contract ``cotangent`` (shape ``out.shape``) with the output axes of ``jacobian``.

    This is the vector-Jacobian product ``sum_o c_o dY_o/dx``, of shape ``in.shape``: for a
    vector output, ``c^T J`` in numerator layout and ``J c`` in denominator layout; for a
    matrix output, ``tr(C^T dY/dx_ij)`` for each input entry.
    """
    axes = cotangent.ndim
    if layout == "numerator":
        return jnp.tensordot(cotangent, jacobian, axes=axes)
    return jnp.tensordot(jacobian, cotangent, axes=axes)


def multiply_in_layout(outer: Array, inner: Array, layout: Layout) -> Array:
    """The chain rule for a vector intermediate y: ``dz/dy`` composed with ``dy/dx``.

    Numerator layout: ``(dz/dy)(dy/dx)``; denominator layout: ``(dy/dx)(dz/dy)``.
    ``outer`` is (n, s) or (s, n), ``inner`` is (s,) + in.shape or in.shape + (s,).
    """
    if layout == "numerator":
        return jnp.tensordot(outer, inner, axes=1)
    return jnp.tensordot(inner, outer, axes=1)
