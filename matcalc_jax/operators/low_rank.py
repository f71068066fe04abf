"""Low rank U V^T, and diagonal plus low rank diag(d) + U V^T (softmax's Jacobian)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import JacobianOperator, check_tangent, register


class LowRank(JacobianOperator):
    """U V^T with U of shape (n, r) and V of shape (m, r): vectors in, vectors out."""

    U: Array
    V: Array
    layout: Layout = "numerator"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.U.shape[0],)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.V.shape[0],)

    @property
    def dtype(self) -> Any:
        return jnp.result_type(self.U, self.V)

    def mv(self, tangent: ArrayLike) -> Array:
        return self.U @ (check_tangent(self, "mv", tangent, self.in_shape) @ self.V)

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.V @ (check_tangent(self, "vm", cotangent, self.out_shape) @ self.U)

    def _numerator(self) -> Array:
        return self.U @ self.V.T

    def transpose(self) -> JacobianOperator:
        return LowRank(self.V, self.U, self.layout)

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        return jnp.sum(self.U * self.V, axis=-1)


LowRank = register(LowRank, ("U", "V"), ("layout",))


class DiagonalPlusLowRank(JacobianOperator):
    """diag(d) + U V^T; softmax's Jacobian diag(s) - s s^T is d = s, U = -s, V = s (r = 1).

    With D = diag(d) invertible, the determinant lemma gives
    log|det(D + U V^T)| = log|det D| + log|det(I_r + V^T D^{-1} U)| and Woodbury's identity
    (D + U V^T)^{-1} b = D^{-1} b - D^{-1} U (I_r + V^T D^{-1} U)^{-1} V^T D^{-1} b: O(K r^2)
    work, no K x K matrix.
    """

    values: Array
    U: Array
    V: Array
    layout: Layout = "numerator"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    in_shape = out_shape

    @property
    def dtype(self) -> Any:
        return jnp.result_type(self.values, self.U, self.V)

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        return self.values * tangent + self.U @ (tangent @ self.V)

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = check_tangent(self, "vm", cotangent, self.out_shape)
        return cotangent * self.values + self.V @ (cotangent @ self.U)

    def _numerator(self) -> Array:
        n = self.values.shape[0]
        low_rank = self.U @ self.V.T
        return jnp.where(jnp.eye(n, dtype=bool), self.values[None, :] + low_rank, low_rank)

    def transpose(self) -> JacobianOperator:
        return DiagonalPlusLowRank(self.values, self.V, self.U, self.layout)

    def diagonal(self) -> Array:
        return self.values + jnp.sum(self.U * self.V, axis=-1)

    def _capacitance(self) -> Array:
        """I_r + V^T D^{-1} U, the r x r matrix of the lemma and of Woodbury's identity."""
        rank = self.U.shape[1]
        return jnp.eye(rank, dtype=self.dtype) + (self.V / self.values[:, None]).T @ self.U

    def logdet(self) -> Array:
        diagonal_part = jnp.sum(jnp.log(jnp.abs(self.values)))
        return diagonal_part + jnp.linalg.slogdet(self._capacitance())[1]

    def solve(self, rhs: ArrayLike) -> Array:
        rhs = check_tangent(self, "solve", rhs, self.out_shape)
        scaled_rhs = rhs / self.values
        correction = jnp.linalg.solve(self._capacitance(), scaled_rhs @ self.V)
        return scaled_rhs - (self.U @ correction) / self.values


DiagonalPlusLowRank = register(DiagonalPlusLowRank, ("values", "U", "V"), ("layout",))
