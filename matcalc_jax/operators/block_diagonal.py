"""BlockDiagonal: the Jacobian of a map applied over a batch axis."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout, check_layout
from matcalc_jax.core.sharding import batch_like
from matcalc_jax.operators.base import (
    JacobianOperator,
    check_tangent,
    composition_rule,
    dense_solve,
    log_abs_det,
    pytree,
)
from matcalc_jax.operators.diagonal import Diagonal


@pytree(("blocks",), ("layout",))
class BlockDiagonal(JacobianOperator):
    """The Jacobian of a map applied over a batch: x (N, m) -> y (N, n), y_b = f(x_b).

    Stores the N blocks dy_b/dx_b as an (N, n, m) array; the dense (N, n, N, m) Jacobian is
    zero across different batch entries and is only built by ``to_dense``. Its transpose,
    log-determinant and solves work block by block.

    Sharded: with the blocks split over devices along the batch axis (from a batch ``xs``
    sharded by rows: ``jax.device_put(xs, NamedSharding(mesh, P("batch")))``), ``mv``, ``vm``,
    ``solve``, ``diagonal`` and the transpose stay split the same way and run where the blocks
    are, with no communication; a tangent given whole is sliced locally. Only the scalars
    ``trace`` and ``logdet`` add one value per device.
    """

    blocks: Array
    layout: Layout = "numerator"

    def __post_init__(self) -> None:
        if hasattr(self.blocks, "ndim") and self.blocks.ndim < 3:  # more: a batch (vmap)
            raise ValueError(
                f"BlockDiagonal(blocks): blocks must have shape (N, n, m); got "
                f"{tuple(self.blocks.shape)}"
            )

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.blocks.shape[0], self.blocks.shape[1])

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.blocks.shape[0], self.blocks.shape[2])

    @property
    def dtype(self) -> Any:
        return self.blocks.dtype

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = batch_like(check_tangent(self, "mv", tangent, self.in_shape), self.blocks)
        return jnp.einsum("bnm,bm->bn", self.blocks, tangent)

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = batch_like(check_tangent(self, "vm", cotangent, self.out_shape), self.blocks)
        return jnp.einsum("bn,bnm->bm", cotangent, self.blocks)

    def _numerator(self) -> Array:
        batch = self.blocks.shape[0]
        eye = jnp.eye(batch, dtype=self.dtype)
        return jnp.einsum("bc,bnm->bncm", eye, self.blocks)

    def transpose(self) -> JacobianOperator:
        return BlockDiagonal(jnp.swapaxes(self.blocks, 1, 2), self.layout)

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        return jnp.diagonal(self.blocks, axis1=1, axis2=2)

    def logdet(self) -> Array:
        self._check_square("logdet")
        return jnp.sum(log_abs_det(self.blocks))

    def solve(self, rhs: ArrayLike) -> Array:
        self._check_square("solve")
        rhs = batch_like(check_tangent(self, "solve", rhs, self.out_shape), self.blocks)
        solution = dense_solve(self.blocks, rhs[..., None])[..., 0]
        # A singular block (its LU's zero pivot: a non-finite solution of a finite
        # right-hand side) solves to NaN in each of its entries, not finite beside inf. Block
        # by block: the blocks are examples, which may live on other devices (nothing moves)
        finite = jnp.all(jnp.isfinite(rhs), axis=-1) & ~jnp.all(jnp.isfinite(solution), axis=-1)
        return jnp.where(finite[..., None], jnp.nan, solution)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return frozenset({(0, 0)})


@composition_rule(Diagonal, BlockDiagonal)
def _diagonal_block(outer: Diagonal, inner: BlockDiagonal) -> BlockDiagonal:
    return BlockDiagonal(outer.values[:, :, None] * inner.blocks, inner.layout)


@composition_rule(BlockDiagonal, Diagonal)
def _block_diagonal(outer: BlockDiagonal, inner: Diagonal) -> BlockDiagonal:
    return BlockDiagonal(outer.blocks * inner.values[:, None, :], outer.layout)


@composition_rule(BlockDiagonal, BlockDiagonal)
def _block_block(outer: BlockDiagonal, inner: BlockDiagonal) -> BlockDiagonal:
    return BlockDiagonal(jnp.einsum("bij,bjk->bik", outer.blocks, inner.blocks), outer.layout)


def batched_jacobian(
    jacobian: Any, xs: ArrayLike, *, layout: Layout = "numerator"
) -> BlockDiagonal:
    """The Jacobian of a map applied over the leading batch axis of ``xs``, block-diagonal.

    Args:
      jacobian: the per-example Jacobian, ``jacobian(x) -> (n, m)`` in numerator layout for
        ``x`` of shape (m,) (a closed form, or ``jax.jacfwd(f)``).
      xs: the batch, shape (N, m).
      layout: the layout of the result.

    Returns:
      a ``BlockDiagonal`` with (N, n, m) blocks: never the (N, n, N, m) array
      ``jax.jacfwd`` of the batched map gives.
    """
    validate.function("batched_jacobian", "jacobian", jacobian)
    layout = check_layout("batched_jacobian", layout)
    xs = jnp.asarray(xs)
    if xs.ndim != 2:
        raise ValueError(
            f"batched_jacobian: argument 'xs' has shape {tuple(xs.shape)}; expected (N, m)"
        )
    blocks = jax.vmap(jacobian)(xs)
    if blocks.ndim != 3:
        raise ValueError(
            f"batched_jacobian: the per-example Jacobian has shape {tuple(blocks.shape[1:])}; "
            "expected a matrix (n, m)"
        )
    return BlockDiagonal(blocks, layout)
