"""WeightedGram: X^T diag(w) X, a Hessian kept in factored form."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.core.sharding import batch_like, sum_over_rows
from matcalc_jax.operators.base import JacobianOperator, check_tangent, pytree


@pytree(("X", "weights"), ("layout",))
class WeightedGram(JacobianOperator):
    """X^T diag(w) X for X of shape (n, d) and weights w of shape (n,) (or one number for every
    row, as in ``WeightedGram(A, 2)``): a (d, d) symmetric map.

    The Hessians of logistic regression (w = s(1 - s)) and of least squares (w = 2) have this
    form. It is never multiplied out unless asked: ``mv`` is X^T (w * (X v)), two
    matrix-vector products, O(n d) work and memory instead of the O(n d^2) work of forming
    the (d, d) matrix and the O(d^2) of applying it; ``diagonal`` is sum_k w_k X_ki^2, also
    O(n d) (a Jacobi preconditioner without the matrix). Symmetric, so ``vm`` is ``mv``, the
    transpose is itself, and the two layouts agree.

    Sharded by rows (``X`` and ``w`` split over devices along n, as a dataset is): ``mv``,
    ``diagonal`` and ``to_dense`` form each device's partial sum over its rows and add them
    with one all-reduce of d (or d x d) values; ``X`` is never gathered, and the result is
    replicated.
    """

    X: Array
    weights: Array
    layout: Layout = "numerator"

    def __post_init__(self) -> None:
        rows = tuple(jnp.shape(self.X))[:1]
        if jnp.ndim(self.X) != 2:
            raise ValueError(
                f"WeightedGram(X, weights): X must be a matrix (n, d); got shape "
                f"{tuple(jnp.shape(self.X))}"
            )
        if jnp.ndim(self.weights) == 0:  # one weight for every row: X^T X w
            object.__setattr__(self, "weights", jnp.broadcast_to(self.weights, rows))
        elif tuple(jnp.shape(self.weights)) != rows:
            raise ValueError(
                f"WeightedGram(X, weights): weights must be a number or of shape {rows} (one "
                f"per row of X); got shape {tuple(jnp.shape(self.weights))}"
            )

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.X.shape[1],)

    in_shape = out_shape

    @property
    def dtype(self) -> Any:
        return jnp.result_type(self.X, self.weights)

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        u = batch_like(self.weights, self.X) * (self.X @ tangent)
        return sum_over_rows("k,kd->d", u, self.X)  # X^T u, no transpose

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.mv(check_tangent(self, "vm", cotangent, self.out_shape))

    def _numerator(self) -> Array:
        weighted = self.X * batch_like(self.weights, self.X)[:, None]
        return sum_over_rows("kd,ke->de", weighted, self.X)

    def transpose(self) -> JacobianOperator:
        return self

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        return WeightedGram(self.X, jnp.asarray(scale) * self.weights, self.layout)

    def diagonal(self) -> Array:
        return sum_over_rows("k,kd->d", self.weights, jnp.square(self.X))
