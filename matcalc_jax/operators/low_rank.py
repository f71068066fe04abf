"""Low rank U V^T, and diagonal plus low rank diag(d) + U V^T (softmax's Jacobian)."""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.arrays import add_to_diagonal
from matcalc_jax.core.layout import Layout
from matcalc_jax.core.precision import is_half
from matcalc_jax.operators.base import (
    JacobianOperator,
    addition_rule,
    check_tangent,
    composition_rule,
    is_concrete,
    is_concrete_graph,
    keeping_width,
    keeps_width,
    on_graph,
    one_program_when_eager,
    pytree,
    size_of,
)
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.identity import Identity


@pytree(("U", "V"), ("layout",))
class LowRank(JacobianOperator):
    """U V^T: U of shape ``out_shape + (r,)``, V of shape ``in_shape + (r,)`` (for vectors,
    (n, r) and (m, r)). Any map composed with it stays low rank: ``A (U V^T) = (A U) V^T``
    and ``(U V^T) B = U (B^T V)^T``, r products with the other map."""

    U: Array
    V: Array
    layout: Layout = "numerator"

    def __post_init__(self) -> None:
        if not (hasattr(self.U, "ndim") and hasattr(self.V, "ndim")):
            return  # a pytree being rebuilt with placeholder leaves
        if not (self.U.ndim and self.V.ndim and self.U.shape[-1] == self.V.shape[-1]):
            raise ValueError(
                f"LowRank(U, V): U and V must end in the same rank axis (out_shape + (r,), "
                f"in_shape + (r,)); got shapes {tuple(self.U.shape)} and {tuple(self.V.shape)}"
            )

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.U.shape[:-1])

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.V.shape[:-1])

    @property
    def rank(self) -> int:
        return self.U.shape[-1]

    @property
    def dtype(self) -> Any:
        """U's: the output side's (V may be wider: the argument's side of a narrowing map)."""
        return jnp.result_type(self.U, self.V if jnp.iscomplexobj(self.V) else self.U)

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        return (self.U @ jnp.tensordot(tangent, self.V, axes=tangent.ndim)).astype(self.dtype)

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = check_tangent(self, "vm", cotangent, self.out_shape)
        return self.V @ jnp.tensordot(cotangent, self.U, axes=cotangent.ndim)

    def _numerator(self) -> Array:
        return jnp.tensordot(self.U, self.V, axes=((-1,), (-1,))).astype(self.dtype)

    def transpose(self) -> JacobianOperator:
        return LowRank(self.V, self.U, self.layout)

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        return LowRank(jnp.asarray(scale) * self.U, self.V, self.layout)  # promoted as JAX does

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        return jnp.sum(self.U * self.V, axis=-1).astype(self.dtype)


@pytree(("values", "U", "V"), ("layout",))
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

    def __post_init__(self) -> None:
        shapes = [tuple(jnp.shape(a)) for a in (self.values, self.U, self.V)]
        n = shapes[0][:1]
        if not (
            len(shapes[0]) == 1 and len(shapes[1]) == 2 and n == shapes[1][:1] == shapes[2][:1]
            and shapes[1] == shapes[2]
        ):  # fmt: skip
            raise ValueError(
                "DiagonalPlusLowRank(values, U, V): values must be a vector (n,) and U, V "
                f"matrices (n, r); got shapes {shapes[0]}, {shapes[1]} and {shapes[2]}"
            )

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    in_shape = out_shape

    @property
    def dtype(self) -> Any:
        """d's and U's: the output side's (V may be wider, as a ``LowRank``'s)."""
        if jnp.iscomplexobj(self.V):
            return jnp.result_type(self.values, self.U, self.V)
        return jnp.result_type(self.values, self.U)

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        return (self.values * tangent + self.U @ (tangent @ self.V)).astype(self.dtype)

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = check_tangent(self, "vm", cotangent, self.out_shape)
        return cotangent * self.values + self.V @ (cotangent @ self.U)

    def _numerator(self) -> Array:
        low_rank = (self.U @ self.V.T).astype(self.dtype)  # a complex or wider d promotes
        return add_to_diagonal(low_rank, self.values)

    def transpose(self) -> JacobianOperator:
        return DiagonalPlusLowRank(self.values, self.V, self.U, self.layout)

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        scale = jnp.asarray(scale)  # promoted as JAX promotes
        return DiagonalPlusLowRank(scale * self.values, scale * self.U, self.V, self.layout)

    def diagonal(self) -> Array:
        return (self.values + jnp.sum(self.U * self.V, axis=-1)).astype(self.dtype)

    def _with_invertible_diagonal(self) -> tuple[Array, Array, Array, Array]:
        """(d', U', V', singular) with diag(d) + U V^T = diag(d') + U' V'^T and d' safe to
        divide by. Woodbury divides by d: an entry small beside its own row's low-rank part
        (|d_k| < rho_k, rho_k = sum_i |U_ki| max_j |V_ji|; a zero, as relu's derivative
        gives, where D + U V^T is invertible and D is not) makes the r x r system
        ill-conditioned however well conditioned the matrix is. The r entries of smallest
        |d_k| / rho_k below 1 get rho_k added, and the rank-one terms -rho_k e_k e_k^T join
        U V^T (rank <= 2r): exact but for the rounding of d_k + rho_k, at most eps rho_k,
        a change of eps in that row. An entry small only beside max|d| is its row's own
        scale and is kept (d = (1e20, 1, 2) with O(1) factors: only the smallest shifts).
        More than r zeros in d leave a matrix of rank below its size (their rows lie in
        the span of V^T), and so does a zero d_k whose row of U or of V is zero (a zero
        row or column: a relu unit off in a Hessian): ``singular``, exactly, where the
        shifted system would only be nearly singular after rounding."""
        magnitudes = jnp.abs(self.values)
        rows = (jnp.abs(self.U) @ jnp.max(jnp.abs(self.V), axis=0, initial=0)).astype(
            magnitudes.dtype
        )
        fallback = jnp.max(magnitudes, initial=0)  # a zero row of U V^T: any positive shift
        fallback = jnp.where(fallback > 0, fallback, jnp.ones((), fallback.dtype))
        shift = jnp.where(rows > 0, rows, fallback)
        tiny = jnp.finfo(self.dtype).tiny
        alone = jnp.where(magnitudes < tiny, 0.0, jnp.inf).astype(magnitudes.dtype)
        ratio = jnp.where(rows > 0, magnitudes / jnp.where(rows > 0, rows, 1), alone)
        ratio = jnp.where(jnp.isnan(ratio), jnp.inf, ratio)
        small = ratio < 1
        zero = self.values == 0
        count = min(self.U.shape[-1], self.values.shape[0])
        _, chosen = jax.lax.top_k(-ratio, count)  # the smallest ratios, zeros first
        W = jax.nn.one_hot(chosen, self.values.shape[0], dtype=self.dtype).T * small[chosen]
        shifts = jnp.sum(W, axis=-1) * shift
        values = self.values + shifts
        U = jnp.concatenate([self.U, -shift[:, None] * W], axis=-1)
        V = jnp.concatenate([self.V, W.astype(self.V.dtype)], axis=-1)
        columns = jnp.abs(self.V) @ jnp.max(jnp.abs(self.U), axis=0, initial=0)
        empty = zero & ((rows == 0) | (columns == 0))  # a zero row or column
        return values, U, V, (jnp.sum(zero) > count) | jnp.any(empty)

    @one_program_when_eager
    def capacitance_condition(self) -> Array:
        """||I_r + |V|^T |D|^{-1} |U|||_2 / sigma_min(I_r + V^T D^{-1} U): how far the r x r
        system of Woodbury's identity is from singular beside the size of its terms. Past
        1 / (16 eps) its rounding decides the solve: I - (1 - 1e-15) 1 1^T / n in float64
        has a capacitance of 1e-15, and Woodbury then returns a finite x of size ||b||
        whose part along 1 is arbitrary. Infinite when ``solve`` finds the matrix singular
        exactly."""
        if is_half(self.dtype):
            return self._in_float32().capacitance_condition()
        values, U, V, singular = self._with_invertible_diagonal()
        if U.shape[-1] == 0:
            return jnp.where(singular, jnp.inf, 1.0)
        terms = (jnp.abs(V) / jnp.abs(values)[:, None]).T @ jnp.abs(U)
        size = jnp.linalg.norm(jnp.eye(U.shape[-1], dtype=terms.dtype) + terms, 2)
        smallest = jnp.linalg.svd(_capacitance(values, U, V), compute_uv=False)[-1]
        condition = jnp.where(smallest > 0, size / jnp.where(smallest > 0, smallest, 1), jnp.inf)
        return jnp.where(singular, jnp.inf, condition)

    def _in_float32(self) -> DiagonalPlusLowRank:
        """The same map in float32: a half-precision d, U, V overflow in Woodbury's V / d
        and lose a small d_k beside its shift."""
        return DiagonalPlusLowRank(
            *(a.astype(jnp.float32) for a in (self.values, self.U, self.V)), self.layout
        )

    def logdet(self) -> Array:
        if is_half(self.dtype):  # computed in float32, rounded once (no half LAPACK)
            return self._in_float32().logdet().astype(self.dtype)
        values, U, V, singular = self._with_invertible_diagonal()
        diagonal_part = jnp.sum(jnp.log(jnp.abs(values)))
        total = diagonal_part + jnp.linalg.slogdet(_capacitance(values, U, V))[1]
        return jnp.where(singular, -jnp.inf, total)

    @one_program_when_eager  # it checks no value: the caller's check (a Hessian's) does
    def solve(self, rhs: ArrayLike) -> Array:
        rhs = check_tangent(self, "solve", rhs, self.out_shape)
        if is_half(self.dtype):
            wide = self._in_float32().solve(rhs.astype(jnp.result_type(rhs, jnp.float32)))
            return wide.astype(self.dtype)
        values, U, V, singular = self._with_invertible_diagonal()
        scaled_rhs = rhs / values
        correction = jnp.linalg.solve(_capacitance(values, U, V), scaled_rhs @ V)
        solution = scaled_rhs - (U @ correction) / values
        return jnp.where(singular, jnp.nan, solution)


def _capacitance(values: Array, U: Array, V: Array) -> Array:
    """I_r + V^T D^{-1} U, the r x r matrix of the lemma and of Woodbury's identity, its
    sums of n products by ``_products_summed``."""
    rank = U.shape[1]
    dtype = jnp.result_type(values, U, V)
    return jnp.eye(rank, dtype=dtype) + _products_summed(V / values[:, None], U)


#: The most products (n r s) ``_products_summed`` holds at once (with their errors and
#: padding, up to four arrays of that size: 128 MB in float64); past it, a matmul.
_SUMMED_PRODUCTS = 2**22


def _products_summed(A: Array, B: Array) -> Array:
    """A^T B for A (n, r) and B (n, s), each entry's n products summed pairwise with the
    error of every addition carried along (Knuth's TwoSum: a sum in two floats), so that it
    is off by about eps sum_i |A_ik B_il|, where a matmul's running sum is off by up to
    n eps times that. Woodbury's r x r system sums n products, and near singular it turns
    that rounding into the solution's: I - 0.999 1 1^T / n (condition 1e3) at n = 1000 in
    float32 was solved 9e-3 off, 6e-7 with these sums. Past ``_SUMMED_PRODUCTS`` products
    (their memory), a matmul. Its callers (``solve``, ``logdet``,
    ``capacitance_condition``) run as one program each when called eagerly, so its
    log2(n) levels do not compile op by op."""
    n = A.shape[0]
    if n < 2 or n * A.shape[1] * B.shape[1] > _SUMMED_PRODUCTS:
        return A.T @ B
    hi = A[:, :, None] * B[:, None, :]
    hi = jnp.concatenate([hi, jnp.zeros((2 ** (n - 1).bit_length() - n, *hi.shape[1:]), hi.dtype)])
    lo = jnp.zeros_like(hi)
    while hi.shape[0] > 1:
        a, b = hi[0::2], hi[1::2]
        total = a + b
        b_part = total - a
        error = (a - (total - b_part)) + (b - b_part)
        hi, lo = total, lo[0::2] + lo[1::2] + error
    return hi[0] + lo[0]


def _columns(op: JacobianOperator, product: str, factor: Array) -> Array:
    """``op.mv`` or ``op.vm`` (``product``) of each of the r columns of a factor of shape
    ``shape + (r,)``, one ``jax.vmap``-ped call. On concrete arrays it is one compiled
    program per operator structure and shapes: eagerly, the vmapped product of a composite
    compiles each of its operations on its own (the transform's eager Jacobian of
    ``gp_log_likelihood`` made 118 of them)."""
    if is_concrete_graph(op, (factor,)):
        return _columns_program(op, product, keeps_width(), factor)
    return _apply_to_columns(op, product, keeps_width(), factor)


def _apply_to_columns(op: JacobianOperator, product: str, wide: bool, factor: Array) -> Array:
    """``_columns``, traced inside ``keeping_width`` where ``wide`` (the caller's, passed
    so that a compiled program is kept per width)."""
    with keeping_width() if wide else contextlib.nullcontext():
        return jax.vmap(getattr(op, product), in_axes=-1, out_axes=-1)(factor)


_columns_program = on_graph(_apply_to_columns, static_argnums=(1, 2))


def _canonical(U: Array, V: Array, layout: Layout) -> LowRank:
    """U V^T with a one-entry side folded into the other: rank one. U is on the output's
    side, so its dtype is the map's (complex when V is: a real U V^T after a complex map);
    V keeps a wider dtype of its own (a float16 output of a float32 argument: V of 1e4
    in float16 overflowed ``vm`` where ``jax.vjp`` computes in float32)."""
    if jnp.iscomplexobj(V) and not jnp.iscomplexobj(U):
        U = U.astype(jnp.result_type(U.dtype, V.dtype))
    V = V.astype(jnp.result_type(U.dtype, V.dtype))
    if U.shape[-1] > 1 and size_of(U.shape[:-1]) == 1:
        return LowRank(jnp.ones_like(U[..., :1]), (V @ U.reshape(-1))[..., None], layout)
    if V.shape[-1] > 1 and size_of(V.shape[:-1]) == 1:
        return LowRank((U @ V.reshape(-1))[..., None], jnp.ones_like(V[..., :1]), layout)
    return LowRank(U, V, layout)


@composition_rule(JacobianOperator, LowRank)
def _after_low_rank(outer: JacobianOperator, inner: LowRank) -> LowRank:
    return _canonical(_columns(outer, "mv", inner.U), inner.V, inner.layout)


@composition_rule(LowRank, JacobianOperator)
def _before_low_rank(outer: LowRank, inner: JacobianOperator) -> LowRank:
    return _canonical(outer.U, _pulled_back(inner, outer.V), outer.layout)


#: Unit tangents pushed through a map at once by ``_pulled_back``'s forward recomputation.
FORWARD_CHUNK = 8


def _pulled_back(inner: JacobianOperator, V: Array) -> Array:
    """B^T V for the map B = ``inner``, as the rows of jax.jacfwd's matrix of V^T B.

    First the r products ``inner.vm`` of V's columns, as jax.vjp pulls them back. An entry
    j that comes out NaN or infinite is then recomputed forward, V^T (B e_j), as jax.jvp
    pushes e_j through B: ``vm`` multiplies a cotangent's zeros by B's infinite entries
    (the rows a gather leaves out, the branch a ``where`` masks, sqrt' at 0), where ``mv``
    selects them away, so ``sqrt(x)[1]`` at x_0 = 0 has the row (0, 1 / (2 sqrt x_1), 0)
    of jax.jacfwd, not NaN in column 0. An entry that is non-finite forward too stays so.
    The forward pass costs one ``mv`` per non-finite entry, ``FORWARD_CHUNK`` at a time,
    and runs only if there is one (a ``lax.cond``). A map from complex values is left to
    ``vm`` (a real-linear map needs both e_j and i e_j)."""
    with keeping_width():  # the float64 digits of a map from float32 values: jacfwd's
        W = _columns(inner, "vm", V)
    if not jnp.issubdtype(W.dtype, jnp.floating) or W.size == 0:
        return W
    rows = W.reshape(size_of(tuple(inner.in_shape)), V.shape[-1])
    if not is_concrete(rows):  # traced: the forward pass is a branch, taken when needed
        bad = ~jnp.all(jnp.isfinite(rows), axis=1)
        rows = jax.lax.cond(jnp.any(bad), _forward_rows, lambda *a: a[0], rows, bad, inner, V)
        return rows.reshape(W.shape)
    bad = ~np.all(np.isfinite(np.asarray(rows)), axis=1)  # eager: on the host, no compile
    if bad.any():  # one program per operator structure, compiled once
        rows = _forward_rows_program(rows, jnp.asarray(bad), inner, V)
    return rows.reshape(W.shape)


def _forward_rows(rows: Array, bad: Array, inner: JacobianOperator, V: Array) -> Array:
    """``rows`` (B^T V, (n, r)) with each row j flagged ``bad`` replaced by V^T (B e_j),
    ``FORWARD_CHUNK`` unit tangents at a time."""
    n = rows.shape[0]
    chunk = min(FORWARD_CHUNK, n)
    count = jnp.sum(bad)
    order = jnp.argsort(~bad, stable=True)  # the non-finite entries first
    order = jnp.concatenate([order, jnp.zeros(chunk, order.dtype)])
    out_axes = tuple(range(1, 1 + len(inner.out_shape)))

    def step(state: tuple[Array, Array]) -> tuple[Array, Array]:
        start, rows = state
        index = jax.lax.dynamic_slice(order, (start,), (chunk,))
        valid = start + jnp.arange(chunk) < count
        basis = jax.nn.one_hot(index, n, dtype=rows.dtype).reshape((chunk, *inner.in_shape))
        images = jax.vmap(inner.mv)(basis)  # B e_j, (chunk,) + out_shape
        fresh = jnp.tensordot(images, V, axes=(out_axes, tuple(a - 1 for a in out_axes)))
        fresh = jnp.real(fresh).astype(rows.dtype)
        written = jnp.where(valid, index, n)  # past the end: dropped
        return start + chunk, rows.at[written].set(fresh, mode="drop")

    return jax.lax.while_loop(lambda state: state[0] < count, step, (0, rows))[1]


_forward_rows_program = jax.jit(_forward_rows)


@addition_rule(LowRank, LowRank)
def _add_low_ranks(left: LowRank, right: LowRank) -> LowRank:
    U = jnp.concatenate([left.U, right.U.astype(left.U.dtype)], axis=-1)
    V = jnp.concatenate([left.V, right.V.astype(left.V.dtype)], axis=-1)
    return _canonical(U, V, left.layout)


def _diagonal_values(op: JacobianOperator) -> Array:
    return op.diagonal() if isinstance(op, Identity) else op.values


@addition_rule(Diagonal, LowRank)
@addition_rule(Identity, LowRank)
def _diagonal_plus_low_rank(left: JacobianOperator, right: LowRank) -> JacobianOperator | None:
    if len(left.in_shape) != 1:
        return None
    return DiagonalPlusLowRank(_diagonal_values(left), right.U, right.V, left.layout)


@addition_rule(LowRank, Diagonal)
@addition_rule(LowRank, Identity)
def _low_rank_plus_diagonal(left: LowRank, right: JacobianOperator) -> JacobianOperator | None:
    return _diagonal_plus_low_rank(right, left)


@addition_rule(DiagonalPlusLowRank, LowRank)
def _dplr_plus_low_rank(left: DiagonalPlusLowRank, right: LowRank) -> DiagonalPlusLowRank:
    low_rank = _add_low_ranks(LowRank(left.U, left.V), right)
    return DiagonalPlusLowRank(left.values, low_rank.U, low_rank.V, left.layout)


@addition_rule(LowRank, DiagonalPlusLowRank)
def _low_rank_plus_dplr(left: LowRank, right: DiagonalPlusLowRank) -> DiagonalPlusLowRank:
    return _dplr_plus_low_rank(right, left)


@addition_rule(DiagonalPlusLowRank, Diagonal)
@addition_rule(DiagonalPlusLowRank, Identity)
def _dplr_plus_diagonal(left: DiagonalPlusLowRank, right: JacobianOperator) -> JacobianOperator:
    values = left.values + _diagonal_values(right)
    return DiagonalPlusLowRank(values, left.U, left.V, left.layout)


@addition_rule(Diagonal, DiagonalPlusLowRank)
@addition_rule(Identity, DiagonalPlusLowRank)
def _diagonal_plus_dplr(left: JacobianOperator, right: DiagonalPlusLowRank) -> JacobianOperator:
    return _dplr_plus_diagonal(right, left)


@addition_rule(DiagonalPlusLowRank, DiagonalPlusLowRank)
def _add_dplrs(left: DiagonalPlusLowRank, right: DiagonalPlusLowRank) -> DiagonalPlusLowRank:
    sum_ = _dplr_plus_low_rank(left, LowRank(right.U, right.V))
    return _dplr_plus_diagonal(sum_, Diagonal(right.values))


@composition_rule(Diagonal, DiagonalPlusLowRank)
def _diagonal_after_dplr(outer: Diagonal, inner: DiagonalPlusLowRank) -> DiagonalPlusLowRank:
    d = outer.values
    return DiagonalPlusLowRank(d * inner.values, d[:, None] * inner.U, inner.V, inner.layout)


@composition_rule(DiagonalPlusLowRank, Diagonal)
def _dplr_after_diagonal(outer: DiagonalPlusLowRank, inner: Diagonal) -> DiagonalPlusLowRank:
    d = inner.values
    return DiagonalPlusLowRank(outer.values * d, outer.U, d[:, None] * outer.V, outer.layout)
