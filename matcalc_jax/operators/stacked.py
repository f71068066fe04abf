"""Stacked: one operator per loop iteration, of one structure, its leaves stacked along a
leading axis, the Jacobian of a ``scan``'s stacked outputs ``ys``. ``mv`` and ``vm`` map
every step at once (``vmap`` over the leaves); ``to_dense`` stacks the steps' matrices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import JacobianOperator, check_tangent, is_concrete, kept_on, pytree


@pytree(("leaves",), ("structure", "length", "step_out", "step_in", "dtype_name", "layout"))
class Stacked(JacobianOperator):
    """One operator per loop iteration, of one structure, its ``leaves`` stacked along a
    leading axis of ``length``: the Jacobian of a scan's stacked outputs ``ys``, out shape
    ``(length, *step_out)``. The shapes are static fields (the leaves may be placeholders
    while JAX rebuilds the pytree)."""

    leaves: tuple[Array, ...]
    structure: Any
    length: int
    step_out: tuple[int, ...]
    step_in: tuple[int, ...]
    dtype_name: str
    layout: Layout = "numerator"

    @classmethod
    def of(cls, leaves: Sequence[Array], structure: Any, length: int) -> Stacked:
        """The stacked operators whose step ``t`` is ``structure`` over ``leaves[:, t]``."""
        found: list[tuple] = []  # read from a traced first step: no leaf sliced eagerly

        def first_step(rows: list[Array]) -> None:
            first = jax.tree_util.tree_unflatten(structure, [leaf[0] for leaf in rows])
            found.append((tuple(first.out_shape), tuple(first.in_shape),
                          jnp.dtype(first.dtype).name, first.layout))  # fmt: skip

        jax.eval_shape(first_step, list(leaves))
        return cls(tuple(leaves), structure, length, *found[0])

    def _step(self, leaves: Sequence[Array]) -> JacobianOperator:
        return jax.tree_util.tree_unflatten(self.structure, leaves)

    def _first(self) -> JacobianOperator:
        """The first step, kept on the operator: graph walks (``children``) ask it of every
        node they meet."""
        first_step = lambda: self._step([leaf[0] for leaf in self.leaves])  # noqa: E731
        return kept_on(self, "first_step", first_step, keep=is_concrete)

    out_shape = property(lambda self: (self.length, *self.step_out))
    in_shape = property(lambda self: tuple(self.step_in))
    dtype = property(lambda self: jnp.dtype(self.dtype_name))

    def _each(self, method: Callable[..., Array], *stacked: Array) -> Array:
        """``method(operator_t, *stacked_t)`` for every step t, stacked."""
        if not self.leaves and not stacked:  # the same operator at every step
            one = method(self._first())
            return jnp.broadcast_to(one, (self.length, *one.shape))
        return jax.vmap(lambda leaves, *rest: method(self._step(leaves), *rest))(
            list(self.leaves), *stacked
        )

    def mv(self, tangent: Any) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        return self._each(lambda op: op.mv(tangent))

    def vm(self, cotangent: Any) -> Array:
        cotangent = check_tangent(self, "vm", cotangent, self.out_shape)
        return jnp.sum(self._each(lambda op, u: op.vm(u), cotangent), axis=0)

    def _numerator(self) -> Array:
        return self._each(lambda op: op._numerator())

    def with_layout(self, layout: Layout) -> JacobianOperator:
        structure = jax.tree_util.tree_structure(self._first().with_layout(layout))
        return Stacked.of(self.leaves, structure, self.length)

    def describe(self) -> str:
        return f"{self.length} steps of {type(self._first()).__name__}"

    def children(self) -> tuple[JacobianOperator, ...]:
        return (self._first(),)
