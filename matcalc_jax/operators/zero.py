"""Zero: the Jacobian of a value that does not depend on the argument."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import (
    JacobianOperator,
    ShapedOperator,
    addition_rule,
    check_tangent,
    composition_rule,
    pytree,
)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class Zero(ShapedOperator):
    """The zero map from ``in_shape`` to ``out_shape``; stores nothing. ``mv`` and ``vm``
    give zeros in the dtype a dense zero matrix would: the operator's and the vector's,
    promoted (a float32 ``Zero`` times a float64 vector is float64)."""

    layout: Layout = "numerator"
    trivial_in_composition = True

    def mv(self, tangent: ArrayLike) -> Array:
        array = check_tangent(self, "mv", tangent, self.in_shape)
        return jnp.zeros(self.out_shape, jnp.result_type(self.dtype, array))

    def vm(self, cotangent: ArrayLike) -> Array:
        array = check_tangent(self, "vm", cotangent, self.out_shape)
        return jnp.zeros(self.in_shape, jnp.result_type(self.dtype, array))

    def _numerator(self) -> Array:
        return jnp.zeros(self.out_shape + self.in_shape, self.dtype)

    def transpose(self) -> JacobianOperator:
        return Zero(self.in_sizes, self.out_sizes, self.dtype_name, self.layout)

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        return self

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        return jnp.zeros(self.in_shape, self.dtype)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        pairs = zip(self.out_shape, self.in_shape, strict=False)
        return frozenset((k, k) for k, (out, in_) in enumerate(pairs) if out == in_)


@composition_rule(Zero, JacobianOperator)
def _zero_after(outer: Zero, inner: JacobianOperator) -> Zero:
    return Zero(outer.out_sizes, inner.in_shape, outer.dtype_name, outer.layout)


@composition_rule(JacobianOperator, Zero)
def _zero_before(outer: JacobianOperator, inner: Zero) -> Zero:
    return Zero(outer.out_shape, inner.in_sizes, inner.dtype_name, inner.layout)


@addition_rule(Zero, JacobianOperator)
def _zero_plus(left: Zero, right: JacobianOperator) -> JacobianOperator:
    return right


@addition_rule(JacobianOperator, Zero)
def _plus_zero(left: JacobianOperator, right: Zero) -> JacobianOperator:
    return left
