"""Identity: dx/dx = I."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import (
    JacobianOperator,
    check_tangent,
    composition_rule,
    pytree,
    size_of,
)


@pytree((), ("size_shape", "dtype_name", "layout"))
class Identity(JacobianOperator):
    """dx/dx = I on arrays of ``shape``; stores nothing but the shape and dtype."""

    size_shape: tuple[int, ...]
    dtype_name: str
    layout: Layout = "numerator"
    solved_entrywise = True
    trivial_in_composition = True

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.size_shape)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.size_shape)

    @property
    def dtype(self) -> Any:
        return jnp.dtype(self.dtype_name)

    def mv(self, tangent: ArrayLike) -> Array:
        return check_tangent(self, "mv", tangent, self.in_shape)

    def vm(self, cotangent: ArrayLike) -> Array:
        return check_tangent(self, "vm", cotangent, self.out_shape)

    def _numerator(self) -> Array:
        n = size_of(self.in_shape)
        return jnp.eye(n, dtype=self.dtype).reshape(self.out_shape + self.in_shape)

    def transpose(self) -> JacobianOperator:
        return self

    def diagonal(self) -> Array:
        return jnp.ones(self.in_shape, self.dtype)

    def trace(self) -> Array:
        return jnp.asarray(size_of(self.in_shape), self.dtype)

    def logdet(self) -> Array:  # log|det I| = 0, real as jnp.linalg.slogdet's
        return jnp.zeros((), jnp.finfo(self.dtype).dtype)

    def solve(self, rhs: ArrayLike) -> Array:
        return check_tangent(self, "solve", rhs, self.out_shape)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return frozenset((k, k) for k in range(len(self.in_shape)))


@composition_rule(Identity, JacobianOperator)
def _identity_after(outer: Identity, inner: JacobianOperator) -> JacobianOperator:
    return inner


@composition_rule(JacobianOperator, Identity)
def _identity_before(outer: JacobianOperator, inner: Identity) -> JacobianOperator:
    return outer
