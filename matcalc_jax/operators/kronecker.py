"""Kronecker: the map X -> A X B of the matrix rules."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.core.precision import is_half
from matcalc_jax.operators.base import (
    JacobianOperator,
    Transposed,
    check_tangent,
    composition_rule,
    dense_solve,
    log_abs_det,
    one_program_when_eager,
    pytree,
)


@pytree(("A", "B"), ("layout",))
class Kronecker(JacobianOperator):
    """The map X -> A X B from (p, q) matrices to (s, t) matrices, A (s, p), B (q, t).

    In row-major vec form it is the Kronecker product A (x) B^T. B may also be a vector of
    shape (q,), for X -> A X b from (p, q) matrices to (s,) vectors. Its transpose is
    G -> A^T G B^T; for square A and B, det = det(A)^q det(B)^p and A X B = C is solved by
    X = A^{-1} C B^{-1}, from the factors alone.
    """

    A: Array
    B: Array
    layout: Layout = "numerator"

    def __post_init__(self) -> None:
        if not (hasattr(self.A, "ndim") and hasattr(self.B, "ndim")):
            return  # a pytree being rebuilt with placeholder leaves
        if self.A.ndim < 2 or self.B.ndim < 1:  # more axes: a batch of them (jax.vmap)
            raise ValueError(
                f"Kronecker(A, B): A must be a matrix and B a matrix or a vector; got shapes "
                f"{tuple(self.A.shape)} and {tuple(self.B.shape)}"
            )

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.A.shape[0], *tuple(self.B.shape[1:]))

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.A.shape[1], self.B.shape[0])

    @property
    def dtype(self) -> Any:
        return jnp.result_type(self.A, self.B)

    def mv(self, tangent: ArrayLike) -> Array:
        return self.A @ check_tangent(self, "mv", tangent, self.in_shape) @ self.B

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = check_tangent(self, "vm", cotangent, self.out_shape)
        if self.B.ndim == 1:
            return jnp.outer(cotangent @ self.A, self.B)
        return jnp.einsum("ai,ab,jb->ij", self.A, cotangent, self.B)

    def _numerator(self) -> Array:
        if self.B.ndim == 1:
            return jnp.einsum("ai,j->aij", self.A, self.B)
        return jnp.einsum("ai,jb->abij", self.A, self.B)

    def transpose(self) -> JacobianOperator:
        if self.B.ndim == 1:  # its transpose maps vectors to matrices: no Kronecker form
            return Transposed(self)
        return Kronecker(self.A.T, self.B.T, self.layout)

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        return jnp.outer(jnp.diagonal(self.A), jnp.diagonal(self.B))

    def trace(self) -> Array:
        self._check_square("trace")
        return jnp.trace(self.A) * jnp.trace(self.B)

    def logdet(self) -> Array:
        self._check_square("logdet")
        p, q = self.in_shape
        return q * log_abs_det(self.A) + p * log_abs_det(self.B)

    def solve(self, rhs: ArrayLike) -> Array:
        self._check_square("solve")
        rhs = check_tangent(self, "solve", rhs, self.out_shape)
        left = dense_solve(self.A, rhs)  # A^{-1} C
        return dense_solve(self.B.T, left.T).T  # (A^{-1} C) B^{-1}

    @one_program_when_eager
    def factor_condition(self) -> Array:
        """cond(A) + cond(B) in the 2-norm: what the digits of ``solve``'s x = A^{-1} C B^{-1}
        depend on, one solve with each factor, rather than the whole map's condition
        number cond(A) cond(B). Factors of condition 1e4 in float32 are solved to 1e-4,
        while their product, 1e8, is past 1 / (16 eps). A diagonal factor counts 1: its
        solve, c_i / d_i, is right to the last digit at any condition number. Infinite where
        a factor is singular (a half type's computed in float32: no half SVD)."""
        self._check_square("factor_condition")
        return _condition_of(self.A) + _condition_of(self.B)


@composition_rule(Kronecker, Kronecker)
def _kronecker_kronecker(outer: Kronecker, inner: Kronecker) -> Kronecker | None:
    if inner.B.ndim != 2:
        return None
    return Kronecker(outer.A @ inner.A, inner.B @ outer.B, outer.layout)


def _condition_of(factor: Array) -> Array:
    """``factor``'s 2-norm condition number, 1 for a diagonal one, inf for a singular one."""
    if is_half(factor.dtype):
        factor = factor.astype(jnp.float32)
    values = jnp.linalg.svd(factor, compute_uv=False)
    largest, smallest = values[0], values[-1]
    condition = jnp.where(smallest > 0, largest / jnp.where(smallest > 0, smallest, 1), jnp.inf)
    diagonal = jnp.diagonal(factor)
    if_diagonal = jnp.where(jnp.all(diagonal != 0), 1.0, jnp.inf)
    return jnp.where(jnp.all(factor == jnp.diag(diagonal)), if_diagonal, condition)
