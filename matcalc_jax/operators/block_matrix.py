"""BlockMatrix: the Jacobian of a map between pytrees, on their flattened vectors.

Block (i, j) is the Jacobian of output leaf i in input leaf j, an operator of its own
structure. The whole maps the input leaves, ravelled and concatenated in
``jax.flatten_util.ravel_pytree`` order, to the output leaves the same way:

    J = [[J_00, J_01, ...],
         [J_10, J_11, ...], ...]

``mv`` and ``vm`` apply the blocks to the pieces of the vector and never build the matrix;
``to_dense`` places each block's dense form; ``diagonal`` and ``trace`` read the blocks on
the diagonal when the leaves pair up (same shapes), ``logdet`` and ``solve`` use the dense
matrix.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import JacobianOperator, check_tangent, pytree, size_of
from matcalc_jax.operators.index_maps import cast  # a real block reads a piece's real part


@pytree(("blocks",), ("layout",))
class BlockMatrix(JacobianOperator):
    """Rows of operators, ``blocks[i][j]`` the Jacobian of output leaf i in input leaf j,
    on the flattened vectors (``ravel_pytree`` order)."""

    blocks: tuple[tuple[JacobianOperator, ...], ...]
    layout: Layout = "numerator"

    def _out_sizes(self) -> list[int]:
        return [size_of(row[0].out_shape) for row in self.blocks]

    def _in_sizes(self) -> list[int]:
        return [size_of(op.in_shape) for op in self.blocks[0]]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (sum(self._out_sizes()),)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (sum(self._in_sizes()),)

    @property
    def dtype(self) -> Any:
        return jnp.result_type(*(op.dtype for row in self.blocks for op in row))

    @staticmethod
    def _pieces(vector: Array, operators: list[JacobianOperator], side: str) -> list[Array]:
        shapes = [getattr(op, side) for op in operators]
        bounds = np.cumsum([0] + [size_of(s) for s in shapes])
        return [
            vector[lo:hi].reshape(shape)
            for lo, hi, shape in zip(bounds[:-1], bounds[1:], shapes, strict=True)
        ]

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        pieces = self._pieces(tangent, list(self.blocks[0]), "in_shape")
        rows = [
            sum(op.mv(cast(piece, op.dtype)).reshape(-1)
                for op, piece in zip(row, pieces, strict=True))
            for row in self.blocks
        ]  # fmt: skip
        return jnp.concatenate([r.astype(self.dtype) for r in rows])

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = check_tangent(self, "vm", cotangent, self.out_shape)
        pieces = self._pieces(cotangent, [row[0] for row in self.blocks], "out_shape")
        columns = [
            sum(
                row[j].vm(cast(piece, row[j].dtype)).reshape(-1)
                for row, piece in zip(self.blocks, pieces, strict=True)
            )
            for j in range(len(self.blocks[0]))
        ]
        # the columns' own type: a real argument's is real though an output is complex
        dtype = jnp.result_type(*columns)
        return jnp.concatenate([c.astype(dtype) for c in columns])

    def _numerator(self) -> Array:
        rows = [
            jnp.concatenate(
                [op._numerator().reshape(size_of(op.out_shape), size_of(op.in_shape))
                   .astype(self.dtype)
                 for op in row],
                axis=1,
            )
            for row in self.blocks
        ]  # fmt: skip
        return jnp.concatenate(rows, axis=0)

    def transpose(self) -> JacobianOperator:
        columns = zip(*self.blocks, strict=True)
        return BlockMatrix(tuple(tuple(op.transpose() for op in col) for col in columns))

    def _paired(self) -> bool:
        """Square blocks on the diagonal: output leaf k has input leaf k's shape."""
        return len(self.blocks) == len(self.blocks[0]) and all(
            self.blocks[k][k].out_shape == self.blocks[k][k].in_shape
            for k in range(len(self.blocks))
        )

    def diagonal(self) -> Array:
        if not self._paired():
            return super().diagonal()
        return jnp.concatenate(
            [self.blocks[k][k].diagonal().reshape(-1).astype(self.dtype)
             for k in range(len(self.blocks))]
        )  # fmt: skip

    def children(self) -> tuple[JacobianOperator, ...]:
        return tuple(op for row in self.blocks for op in row)

    def describe(self) -> str:
        return f"{len(self.blocks)} x {len(self.blocks[0])} blocks"
