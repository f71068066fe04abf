"""Solves as operators: ``triangular_solve`` with a constant triangular matrix
(``TriangularSolve``), ``tridiagonal_solve`` with a constant tridiagonal one
(``TridiagonalSolve``) and ``custom_linear_solve`` through its own solver programs
(``LinearSolve``). Each stores the factor, or the programs and their constants, never the
inverse: ``mv`` solves, ``vm`` solves with the transpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax import Array, lax
from jax.extend import core as jex_core

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import pytree
from matcalc_jax.operators.index_maps import Map, Static


@pytree(("a",), ("out_sizes", "in_sizes", "dtype_name", "params", "layout"))
class TriangularSolve(Map):
    """B -> op(A)^{-1} B (or B op(A)^{-1}) for a constant triangular A (``triangular_solve``);
    its transpose solves with op(A)^T."""

    a: Array
    params: Static
    layout: Layout = "numerator"

    def _solve(self, b: Array, transpose: bool) -> Array:
        params = dict(self.params.value)
        if transpose:
            params["transpose_a"] = not params["transpose_a"]
        return lax.linalg.triangular_solve(self.a, b, **params)

    def _apply(self, tangent: Array) -> Array:
        return self._solve(tangent, transpose=False)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return self._solve(cotangent, transpose=True)


@pytree(("dl", "d", "du"), ("out_sizes", "in_sizes", "dtype_name", "params", "layout"))
class TridiagonalSolve(Map):
    """B -> T^{-1} B for a constant tridiagonal T (``tridiagonal_solve``): ``d`` its diagonal,
    ``dl`` the one below (``dl[0]`` unused), ``du`` the one above (``du[-1]`` unused). Its
    transpose solves with T^T, whose diagonal below is ``du`` moved down one place and
    whose diagonal above is ``dl`` moved up one (as JAX's transpose rule)."""

    dl: Array
    d: Array
    du: Array
    params: Static
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        params = dict(self.params.value)
        return lax.linalg.tridiagonal_solve(self.dl, self.d, self.du, tangent, **params)

    def _apply_transpose(self, cotangent: Array) -> Array:
        zero = jnp.zeros_like(self.d[..., :1])
        below = jnp.concatenate([zero, self.du[..., :-1]], axis=-1)
        above = jnp.concatenate([self.dl[..., 1:], zero], axis=-1)
        params = dict(self.params.value)
        return lax.linalg.tridiagonal_solve(below, self.d, above, cotangent, **params)


def run_closed(jaxpr: Any, consts: Sequence[Array], *args: Array) -> list[Array]:
    """Evaluate a closed program (a ``ClosedJaxpr``) on ``consts`` and ``args``."""
    return jex_core.jaxpr_as_fun(jaxpr)(*consts, *args)


@pytree(
    ("solve_consts", "transpose_consts"),
    ("out_sizes", "in_sizes", "dtype_name", "programs", "layout"),
)
class LinearSolve(Map):
    """b -> A^{-1} b through the solver programs of ``custom_linear_solve`` (``solve`` for the
    map, ``transpose_solve`` for its transpose), with their constants (a factorization,
    stored once when both programs use the same one)."""

    solve_consts: tuple[Array, ...]
    transpose_consts: tuple[Array, ...]
    programs: Static
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        solve, _, _ = self.programs.value
        return run_closed(solve, self.solve_consts, tangent)[0]

    def _apply_transpose(self, cotangent: Array) -> Array:
        _, transpose_solve, shared = self.programs.value
        consts = self.solve_consts if shared else self.transpose_consts
        if transpose_solve is None:
            raise ValueError(
                "LinearSolve.vm: this custom_linear_solve has no transpose_solve; pass one "
                "(or symmetric=True) to jax.lax.custom_linear_solve"
            )
        return run_closed(transpose_solve, consts, cotangent)[0]
