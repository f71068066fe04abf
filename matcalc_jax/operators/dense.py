"""Dense: any Jacobian, stored as an array; and ``as_operator``, which wraps a
combinator's dense pieces."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.chunks import check_chunk_size
from matcalc_jax.core.layout import Layout, check_layout, contract_output, from_numerator
from matcalc_jax.operators.base import JacobianOperator, check_tangent, is_operator, pytree

_OTHER: dict[str, Layout] = {"numerator": "denominator", "denominator": "numerator"}


@pytree(("array",), ("out_ndim", "layout", "stored"))
class Dense(JacobianOperator):
    """Any Jacobian, stored as a dense array.

    ``array`` is arranged as ``stored`` says: ``out_shape + in_shape`` ("numerator", the
    default) or ``in_shape + out_shape`` ("denominator"); ``out_ndim`` is the number of
    output axes. Storing a Jacobian in the arrangement it was made in, and contracting the
    right axes in ``mv`` / ``vm``, means no transpose is ever materialized (on a CPU,
    ``A.T @ v`` copies A first and is an order of magnitude slower than ``v @ A``); the
    transpose of the map is the same array read the other way. ``layout`` is the
    arrangement ``to_dense`` returns by default, independent of ``stored``.
    """

    array: Array
    out_ndim: int
    layout: Layout = "numerator"
    stored: Layout = "numerator"

    @classmethod
    def from_array(cls, array: ArrayLike, out_ndim: int, layout: Layout = "numerator") -> Dense:
        """Wrap a dense Jacobian given in ``layout`` with ``out_ndim`` output axes (as it is,
        without moving its axes)."""
        layout = check_layout("Dense", layout)
        array = jnp.asarray(array)
        if out_ndim > array.ndim:
            raise ValueError(f"Dense: out_ndim={out_ndim} > array rank {array.ndim}")
        return cls(array, out_ndim, layout, layout)

    @property
    def _in_ndim(self) -> int:
        return self.array.ndim - self.out_ndim

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.stored == "numerator":
            return tuple(self.array.shape[: self.out_ndim])
        return tuple(self.array.shape[self._in_ndim :])

    @property
    def in_shape(self) -> tuple[int, ...]:
        if self.stored == "numerator":
            return tuple(self.array.shape[self.out_ndim :])
        return tuple(self.array.shape[: self._in_ndim])

    @property
    def dtype(self) -> Any:
        return self.array.dtype

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        if self.stored == "numerator":
            return jnp.tensordot(self.array, tangent, axes=self._in_ndim)
        return jnp.tensordot(tangent, self.array, axes=self._in_ndim)

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = check_tangent(self, "vm", cotangent, self.out_shape)
        return contract_output(cotangent, self.array, self.stored)

    def _numerator(self) -> Array:
        if self.stored == "numerator":
            return self.array
        return from_numerator(self.array, self._in_ndim, "denominator")

    def to_dense(self, layout: Layout | None = None, *, chunk_size: int | None = None) -> Array:
        # Already dense: ``chunk_size`` is checked and has nothing to bound.
        layout = self.layout if layout is None else check_layout("to_dense", layout)
        check_chunk_size("Dense.to_dense", chunk_size)
        if layout == self.stored:
            return self.array
        return from_numerator(self._numerator(), self.out_ndim, layout)

    def transpose(self) -> JacobianOperator:
        # out + in read as the transpose's in + out: the same array, no copy.
        return Dense(self.array, self._in_ndim, self.layout, _OTHER[self.stored])

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        return Dense(jnp.asarray(scale) * self.array, self.out_ndim, self.layout, self.stored)


def as_operator(
    rule_id: str,
    name: str,
    piece: Any,
    out_shape: tuple[int, ...],
    layout: Layout,
    in_shape: tuple[int, ...] | None = None,
) -> JacobianOperator:
    """A combinator's piece as an operator: an operator is checked (layout, shapes), an array
    is checked as a dense Jacobian in ``layout`` and wrapped in ``Dense``."""
    if not is_operator(piece):
        array, _ = validate.jacobian(rule_id, name, piece, out_shape, layout, in_shape)
        return Dense.from_array(array, len(out_shape), layout)
    if piece.layout != layout:
        raise ValueError(
            f"rule {rule_id!r}: argument {name!r} is a {piece.layout}-layout "
            f"{type(piece).__name__}; expected layout {layout!r}"
        )
    if piece.out_shape != tuple(out_shape) or (
        in_shape is not None and piece.in_shape != tuple(in_shape)
    ):
        expected_in = "any" if in_shape is None else tuple(in_shape)
        raise ValueError(
            f"rule {rule_id!r}: argument {name!r} maps {piece.in_shape} to {piece.out_shape}; "
            f"expected {expected_in} to {tuple(out_shape)}"
        )
    return piece
