"""Selection: the Jacobian of ``select_n`` (``jnp.where``, ``clamp``, a ``cond`` under
``jit``), each row from the Jacobian of the operand chosen there.

``select`` builds it as structured as selection allows (the diagonal it selects, when the
branches are diagonals after a common factor), else a lazy ``Select``;
``diagonal_factor`` reads an operator as ``diag(d) o inner``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import (
    Composition,
    JacobianOperator,
    Scaled,
    check_tangent,
    compose,
    kept_on,
    pytree,
)
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.identity import Identity


@pytree(("predicate", "branches"), ("layout", "whole"))
class Select(JacobianOperator):
    """The Jacobian of ``lax.select_n(p, y_0, y_1, ...)``: row i is row i of the Jacobian of
    the branch ``p_i`` chooses (``None``: a constant branch, a zero row). ``mv`` applies the
    branches and selects, as JAX's ``jvp`` of ``select_n`` does, so a NaN or an infinity in
    a branch not taken (``sqrt`` of a negative entry under ``jnp.where(x > 0, ...)``) never
    reaches the result; ``vm`` masks the cotangent before each branch, as JAX's ``vjp`` of
    ``select_n`` does (a NaN row of a branch not taken reaches it, as in ``jax.jacrev``).
    ``whole``: one branch for every row, a ``cond``'s (``predicate`` its index, a scalar):
    ``vm`` pulls the cotangent back through every branch and selects the result, as JAX's
    ``vjp`` of ``cond`` runs the branch taken alone, so a NaN in another never reaches it."""

    predicate: Array
    branches: tuple[JacobianOperator | None, ...]
    layout: Layout = "numerator"
    whole: bool = False

    def _first(self) -> JacobianOperator:
        return next(b for b in self.branches if b is not None)

    out_shape = property(lambda self: self._first().out_shape)
    in_shape = property(lambda self: self._first().in_shape)
    dtype = property(lambda self: self._first().dtype)

    def _select(self, cases: list[Array | None], extra_axes: int = 0) -> Array:
        present = next(c for c in cases if c is not None)
        cases = [jnp.zeros_like(present) if c is None else c for c in cases]
        which = jnp.broadcast_to(self.predicate, self.out_shape)
        which = jnp.broadcast_to(which.reshape(which.shape + (1,) * extra_axes), present.shape)
        return lax.select_n(which, *cases)

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        return self._select([None if b is None else b.mv(tangent) for b in self.branches])

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = check_tangent(self, "vm", cotangent, self.out_shape)
        if self.whole:
            pulled = [None if b is None else b.vm(cotangent) for b in self.branches]
            present = next(p for p in pulled if p is not None)
            cases = [jnp.zeros_like(present) if p is None else p for p in pulled]
            return lax.select_n(self.predicate, *cases)
        zeros = jnp.zeros_like(cotangent)
        pulled = []
        for k, branch in enumerate(self.branches):
            if branch is not None:
                masked = [cotangent if j == k else zeros for j in range(len(self.branches))]
                pulled.append(branch.vm(self._select(masked)))
        return functools.reduce(operator.add, pulled)

    def _numerator(self) -> Array:
        dense = [None if b is None else b._numerator() for b in self.branches]
        return self._select(dense, extra_axes=len(self.in_shape))

    def with_layout(self, layout: Layout) -> JacobianOperator:
        branches = tuple(None if b is None else b.with_layout(layout) for b in self.branches)
        return Select(self.predicate, branches, layout, self.whole)

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        return self._select([None if b is None else b.diagonal() for b in self.branches])

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return kept_on(self, "batch_axes", self._batch_axes)  # kept, as a Sum's

    def _batch_axes(self) -> frozenset[tuple[int, int]]:
        present = [b.batch_axes() for b in self.branches if b is not None]
        return frozenset.intersection(*present)

    def describe(self) -> str:
        return f"of {len(self.branches)} branches"


def diagonal_factor(op: JacobianOperator) -> tuple[Array, JacobianOperator | None]:
    """``op`` as ``diag(d) o inner``: (d, inner), with ``inner`` None for the identity."""
    if isinstance(op, Identity):
        return jnp.ones(op.out_shape, op.dtype), None
    if isinstance(op, Diagonal):
        return op.values, None
    if isinstance(op, Scaled) and jnp.ndim(op.scale) == 0:
        values, inner = diagonal_factor(op.operator)
        return op.scale * values, inner
    if isinstance(op, Composition) and isinstance(op.outer, Diagonal):
        return op.outer.values, op.inner
    return jnp.ones(op.out_shape, op.dtype), op


def select(
    predicate: Array, branches: Sequence[JacobianOperator | None], *, whole: bool = False
) -> Any:
    """The Jacobian of ``select_n(predicate, *branches)``, as structured as selection allows:
    branches that are diagonal after a common factor X (``diag(d_k) o X``, X the identity
    for elementwise branches) select their diagonals, ``diag(select(p, d_k)) o X``; a
    constant branch beside a non-trivial X keeps the selection after X (a NaN row of X in a
    branch not taken must not reach the result); anything else is a lazy ``Select``.
    ``whole``: ``predicate`` is a ``cond``'s index, one branch for every row (``Select``)."""
    present = [b for b in branches if b is not None]
    if not present:
        return None
    factors = [None if b is None else diagonal_factor(b) for b in branches]
    inners = {id(f[1]) for f in factors if f is not None}
    if len(inners) == 1:
        inner = next(f[1] for f in factors if f is not None)
        dtype = present[0].dtype
        diagonals = [None if f is None else Diagonal(f[0].astype(dtype)) for f in factors]
        if inner is None or all(d is not None for d in diagonals):
            predicate = jnp.broadcast_to(predicate, present[0].out_shape)
            values = lax.select_n(
                predicate,
                *(jnp.zeros(present[0].out_shape, dtype) if d is None else d.values
                  for d in diagonals),
            )  # fmt: skip
            chosen = Diagonal(values)
            return chosen if inner is None else compose(chosen, inner)
        return compose(Select(predicate, tuple(diagonals), whole=whole), inner)
    return Select(predicate, tuple(branches), whole=whole)
