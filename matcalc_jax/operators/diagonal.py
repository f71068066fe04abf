"""Diagonal: diag(d), the Jacobian of an elementwise map."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.arrays import diagonal_matrix
from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import (
    JacobianOperator,
    Scaled,
    add,
    addition_rule,
    check_tangent,
    composition_rule,
    pytree,
    size_of,
)
from matcalc_jax.operators.identity import Identity


@pytree(("values",), ("layout",))
class Diagonal(JacobianOperator):
    """diag(d): the Jacobian of an elementwise map; d has the shape of x (and of f(x))."""

    values: Array
    layout: Layout = "numerator"
    solved_entrywise = True

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    in_shape = out_shape

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    def mv(self, tangent: ArrayLike) -> Array:
        return self.values * check_tangent(self, "mv", tangent, self.in_shape)

    def vm(self, cotangent: ArrayLike) -> Array:
        return check_tangent(self, "vm", cotangent, self.out_shape) * self.values

    def _numerator(self) -> Array:
        n = size_of(self.in_shape)
        flat = self.values.reshape(n)
        dense = diagonal_matrix(flat)
        return dense.reshape(self.out_shape + self.in_shape)

    def transpose(self) -> JacobianOperator:
        return self

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        return Diagonal(jnp.asarray(scale) * self.values, self.layout)

    def diagonal(self) -> Array:
        return self.values

    def logdet(self) -> Array:
        return jnp.sum(jnp.log(jnp.abs(self.values)))

    def solve(self, rhs: ArrayLike) -> Array:
        """rhs / d; NaN in every entry where some d is 0 (no solution, or not a unique
        one: b / d would be finite in the other entries, as if it solved the system)."""
        solution = check_tangent(self, "solve", rhs, self.out_shape) / self.values
        return jnp.where(jnp.any(self.values == 0), jnp.nan, solution)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return frozenset((k, k) for k in range(len(self.in_shape)))


@composition_rule(Diagonal, Diagonal)
def _diagonal_diagonal(outer: Diagonal, inner: Diagonal) -> Diagonal:
    return Diagonal(outer.values * inner.values, outer.layout)


@addition_rule(Diagonal, Identity)
def _diagonal_plus_identity(left: Diagonal, right: Identity) -> Diagonal:
    return Diagonal(left.values + jnp.ones((), right.dtype), left.layout)  # promoted


@addition_rule(Identity, Diagonal)
def _identity_plus_diagonal(left: Identity, right: Diagonal) -> Diagonal:
    return _diagonal_plus_identity(right, left)


@addition_rule(Scaled, JacobianOperator)
def _scaled_identity_plus(left: Scaled, right: JacobianOperator) -> JacobianOperator | None:
    # c I joins a sum as the diagonal it is (c I + diag(d) + U V^T stays structured).
    if not isinstance(left.operator, Identity) or isinstance(right, Scaled):
        return None
    values = jnp.broadcast_to(left.scale, left.in_shape).astype(left.dtype)
    return add(Diagonal(values, left.layout), right)


@addition_rule(JacobianOperator, Scaled)
def _plus_scaled_identity(left: JacobianOperator, right: Scaled) -> JacobianOperator | None:
    return _scaled_identity_plus(right, left)


@addition_rule(Diagonal, Diagonal)
def _add_diagonals(left: Diagonal, right: Diagonal) -> Diagonal:
    return Diagonal(left.values + right.values, left.layout)
