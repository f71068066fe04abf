"""Structured Jacobians: linear operators that know what the rule says the Jacobian is.

The seed's formulas name the shape of their Jacobians: ``I``, ``A^T``, ``diag(f'(x))``,
``diag(s) - s s^T``, and for Y = A X B a Kronecker product. Autodiff cannot know this and
builds dense K x K (or s x t x p x q) arrays. These types keep the structure:

============================  =====================================  ==================
type                          the Jacobian                           memory
============================  =====================================  ==================
``Identity``                  I                                      O(1)
``Diagonal``                  diag(d)                                O(K)
``Dense``                     any array                              O(out * in)
``LowRank``                   U V^T                                  O((out + in) r)
``DiagonalPlusLowRank``       diag(d) + U V^T (softmax: r = 1)       O(K r)
``Kronecker``                 X -> A X B (vec: A (x) B^T)            O(sp + qt)
``BlockDiagonal``             a map applied over a batch axis        O(N n m)
``WeightedGram``              X^T diag(w) X (a Hessian, factored)    O(n d)
``Scaled``, ``Sum``,          c J, J1 + J2, J1 o J2                  their parts
``Composition``
============================  =====================================  ==================

Every operator is a JAX pytree (it passes through ``jit``, ``vmap`` and ``tree_map``), has
``out_shape``, ``in_shape`` and a ``layout``, and offers ``mv`` (Jacobian-vector product,
a tangent of ``in_shape`` to one of ``out_shape``), ``vm`` / ``rmv`` (vector-Jacobian
product, a cotangent of ``out_shape`` to one of ``in_shape``), ``to_dense(layout=...)``,
``transpose()`` (the same map in the other layout), ``diagonal()`` where square, and ``@``
for composition in the layout's order: numerator ``(dz/dy) @ (dy/dx)``, denominator
``(dy/dx) @ (dz/dy)``, each giving dz/dx. ``mv`` and ``vm`` do not depend on the layout,
which only says how ``to_dense`` arranges the axes and how ``@`` reads its operands.

Composition keeps the structure the algebra allows (identity disappears, diagonal times
diagonal is diagonal, Kronecker times Kronecker is Kronecker, block-diagonal times
block-diagonal is block-diagonal, scales factor out); anything else stays a lazy
``Composition`` whose ``mv`` and ``vm`` apply the parts in turn and whose ``to_dense``
multiplies them out only when asked.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax._layout import Layout, check_layout, contract_output, from_numerator

_OTHER: dict[str, Layout] = {"numerator": "denominator", "denominator": "numerator"}


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


class JacobianOperator:
    """The interface every structured Jacobian offers (see the module docstring)."""

    layout: Layout

    @property
    def out_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def in_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def dtype(self) -> Any:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``to_dense()`` in this operator's layout."""
        if self.layout == "numerator":
            return self.out_shape + self.in_shape
        return self.in_shape + self.out_shape

    def mv(self, tangent: ArrayLike) -> Array:
        """J v: a tangent of ``in_shape`` to a tangent of ``out_shape`` (what ``jax.jvp`` gives)."""
        raise NotImplementedError

    def vm(self, cotangent: ArrayLike) -> Array:
        """u^T J: a cotangent of ``out_shape`` to one of ``in_shape`` (what ``jax.vjp`` gives)."""
        raise NotImplementedError

    def rmv(self, cotangent: ArrayLike) -> Array:
        """J^T u, the same as :meth:`vm`."""
        return self.vm(cotangent)

    def _numerator(self) -> Array:
        """The dense Jacobian in numerator layout, ``out_shape + in_shape``."""
        raise NotImplementedError

    def to_dense(self, layout: Layout | None = None) -> Array:
        """The dense Jacobian in ``layout`` (default: the operator's own)."""
        layout = self.layout if layout is None else check_layout("to_dense", layout)
        return from_numerator(self._numerator(), len(self.out_shape), layout)

    def with_layout(self, layout: Layout) -> JacobianOperator:
        """The same map, arranged in ``layout``."""
        layout = check_layout("with_layout", layout)
        return dataclasses.replace(self, layout=layout)  # type: ignore[type-var]

    def transpose(self) -> JacobianOperator:
        """The same map in the other layout: ``J.transpose().to_dense()`` is the transpose
        (out and in axes swapped) of ``J.to_dense()``."""
        return self.with_layout(_OTHER[self.layout])

    @property
    def T(self) -> JacobianOperator:  # noqa: N802
        return self.transpose()

    def diagonal(self) -> Array:
        """The diagonal, of shape ``in_shape``; only for square operators (in = out shape)."""
        self._check_square("diagonal")
        n = _size(self.in_shape)
        dense = self._numerator().reshape(n, n)
        return jnp.diagonal(dense).reshape(self.in_shape)

    def _check_square(self, what: str) -> None:
        if self.in_shape != self.out_shape:
            raise ValueError(
                f"{what}() of a {type(self).__name__} needs a square operator; got out shape "
                f"{self.out_shape} and in shape {self.in_shape}"
            )

    def __matmul__(self, other: JacobianOperator) -> JacobianOperator:
        if not isinstance(other, JacobianOperator):
            return NotImplemented
        if self.layout != other.layout:
            raise ValueError(
                f"cannot compose a {self.layout}-layout {type(self).__name__} with a "
                f"{other.layout}-layout {type(other).__name__}; use .with_layout() first"
            )
        if self.layout == "numerator":
            return compose(self, other)
        return compose(other, self)

    def __add__(self, other: JacobianOperator) -> JacobianOperator:
        if not isinstance(other, JacobianOperator):
            return NotImplemented
        return Sum((self, other))

    def __mul__(self, scale: ArrayLike) -> JacobianOperator:
        return Scaled(jnp.asarray(scale), self)

    __rmul__ = __mul__

    def __neg__(self) -> JacobianOperator:
        return Scaled(jnp.asarray(-1, self.dtype), self)


def _check_tangent(op: JacobianOperator, name: str, value: ArrayLike, shape: tuple) -> Array:
    array = jnp.asarray(value)
    if tuple(array.shape) != tuple(shape):
        raise ValueError(
            f"{type(op).__name__}.{name}: argument has shape {tuple(array.shape)}; "
            f"expected {tuple(shape)}"
        )
    return array


def _register(cls: type, data: tuple[str, ...], meta: tuple[str, ...]) -> type:
    cls = dataclasses.dataclass(frozen=True)(cls)
    jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))
    return cls


# ------------------------------------------------------------------------------- leaves


class Identity(JacobianOperator):
    """dx/dx = I on arrays of ``shape``; stores nothing but the shape and dtype."""

    size_shape: tuple[int, ...]
    dtype_name: str
    layout: Layout = "numerator"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.size_shape)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.size_shape)

    @property
    def dtype(self) -> Any:
        return jnp.dtype(self.dtype_name)

    def mv(self, tangent: ArrayLike) -> Array:
        return _check_tangent(self, "mv", tangent, self.in_shape)

    def vm(self, cotangent: ArrayLike) -> Array:
        return _check_tangent(self, "vm", cotangent, self.out_shape)

    def _numerator(self) -> Array:
        n = _size(self.in_shape)
        return jnp.eye(n, dtype=self.dtype).reshape(self.out_shape + self.in_shape)

    def diagonal(self) -> Array:
        return jnp.ones(self.in_shape, self.dtype)


Identity = _register(Identity, (), ("size_shape", "dtype_name", "layout"))


class Diagonal(JacobianOperator):
    """diag(d): the Jacobian of an elementwise map; d has the shape of x (and of f(x))."""

    values: Array
    layout: Layout = "numerator"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    in_shape = out_shape

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    def mv(self, tangent: ArrayLike) -> Array:
        return self.values * _check_tangent(self, "mv", tangent, self.in_shape)

    def vm(self, cotangent: ArrayLike) -> Array:
        return _check_tangent(self, "vm", cotangent, self.out_shape) * self.values

    def _numerator(self) -> Array:
        n = _size(self.in_shape)
        flat = self.values.reshape(n)
        dense = jnp.where(jnp.eye(n, dtype=bool), flat[None, :], jnp.zeros((), self.dtype))
        return dense.reshape(self.out_shape + self.in_shape)

    def diagonal(self) -> Array:
        return self.values


Diagonal = _register(Diagonal, ("values",), ("layout",))


class Dense(JacobianOperator):
    """Any Jacobian, stored as a dense array.

    ``array`` is arranged as ``stored`` says: ``out_shape + in_shape`` ("numerator", the
    default) or ``in_shape + out_shape`` ("denominator"); ``out_ndim`` is the number of
    output axes. Storing a Jacobian in the arrangement it was made in, and contracting the
    right axes in ``mv`` / ``vm``, means no transpose is ever materialized (on a CPU,
    ``A.T @ v`` copies A first and is an order of magnitude slower than ``v @ A``).
    ``layout`` is independent of ``stored``: it only says how ``to_dense`` arranges the axes.
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
        tangent = _check_tangent(self, "mv", tangent, self.in_shape)
        if self.stored == "numerator":
            return jnp.tensordot(self.array, tangent, axes=self._in_ndim)
        return jnp.tensordot(tangent, self.array, axes=self._in_ndim)

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = _check_tangent(self, "vm", cotangent, self.out_shape)
        return contract_output(cotangent, self.array, self.stored)

    def _numerator(self) -> Array:
        if self.stored == "numerator":
            return self.array
        return from_numerator(self.array, self._in_ndim, "denominator")

    def to_dense(self, layout: Layout | None = None) -> Array:
        layout = self.layout if layout is None else check_layout("to_dense", layout)
        if layout == self.stored:
            return self.array
        return from_numerator(self._numerator(), self.out_ndim, layout)


Dense = _register(Dense, ("array",), ("out_ndim", "layout", "stored"))


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
        return self.U @ (_check_tangent(self, "mv", tangent, self.in_shape) @ self.V)

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.V @ (_check_tangent(self, "vm", cotangent, self.out_shape) @ self.U)

    def _numerator(self) -> Array:
        return self.U @ self.V.T

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        return jnp.sum(self.U * self.V, axis=-1)


LowRank = _register(LowRank, ("U", "V"), ("layout",))


class DiagonalPlusLowRank(JacobianOperator):
    """diag(d) + U V^T; softmax's Jacobian diag(s) - s s^T is d = s, U = -s, V = s (r = 1)."""

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
        tangent = _check_tangent(self, "mv", tangent, self.in_shape)
        return self.values * tangent + self.U @ (tangent @ self.V)

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = _check_tangent(self, "vm", cotangent, self.out_shape)
        return cotangent * self.values + self.V @ (cotangent @ self.U)

    def _numerator(self) -> Array:
        n = self.values.shape[0]
        low_rank = self.U @ self.V.T
        return jnp.where(jnp.eye(n, dtype=bool), self.values[None, :] + low_rank, low_rank)

    def diagonal(self) -> Array:
        return self.values + jnp.sum(self.U * self.V, axis=-1)


DiagonalPlusLowRank = _register(DiagonalPlusLowRank, ("values", "U", "V"), ("layout",))


class Kronecker(JacobianOperator):
    """The map X -> A X B from (p, q) matrices to (s, t) matrices, A (s, p), B (q, t).

    In row-major vec form it is the Kronecker product A (x) B^T. B may also be a vector of
    shape (q,), for X -> A X b from (p, q) matrices to (s,) vectors.
    """

    A: Array
    B: Array
    layout: Layout = "numerator"

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
        return self.A @ _check_tangent(self, "mv", tangent, self.in_shape) @ self.B

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = _check_tangent(self, "vm", cotangent, self.out_shape)
        if self.B.ndim == 1:
            return jnp.outer(cotangent @ self.A, self.B)
        return jnp.einsum("ai,ab,jb->ij", self.A, cotangent, self.B)

    def _numerator(self) -> Array:
        if self.B.ndim == 1:
            return jnp.einsum("ai,j->aij", self.A, self.B)
        return jnp.einsum("ai,jb->abij", self.A, self.B)

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        return jnp.outer(jnp.diagonal(self.A), jnp.diagonal(self.B))


Kronecker = _register(Kronecker, ("A", "B"), ("layout",))


class BlockDiagonal(JacobianOperator):
    """The Jacobian of a map applied over a batch: x (N, m) -> y (N, n), y_b = f(x_b).

    Stores the N blocks dy_b/dx_b as an (N, n, m) array; the dense (N, n, N, m) Jacobian is
    zero across different batch entries and is only built by ``to_dense``.
    """

    blocks: Array
    layout: Layout = "numerator"

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
        tangent = _check_tangent(self, "mv", tangent, self.in_shape)
        return jnp.einsum("bnm,bm->bn", self.blocks, tangent)

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = _check_tangent(self, "vm", cotangent, self.out_shape)
        return jnp.einsum("bn,bnm->bm", cotangent, self.blocks)

    def _numerator(self) -> Array:
        batch = self.blocks.shape[0]
        eye = jnp.eye(batch, dtype=self.dtype)
        return jnp.einsum("bc,bnm->bncm", eye, self.blocks)

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        return jnp.diagonal(self.blocks, axis1=1, axis2=2)


BlockDiagonal = _register(BlockDiagonal, ("blocks",), ("layout",))


class WeightedGram(JacobianOperator):
    """X^T diag(w) X for X of shape (n, d) and weights w of shape (n,): a (d, d) symmetric map.

    The Hessians of logistic regression (w = s(1 - s)) and of least squares (w = 2) have this
    form. It is never multiplied out unless asked: ``mv`` is X^T (w * (X v)), two
    matrix-vector products, O(n d) work and memory instead of the O(n d^2) work of forming
    the (d, d) matrix and the O(d^2) of applying it; ``diagonal`` is sum_k w_k X_ki^2, also
    O(n d) (a Jacobi preconditioner without the matrix). Symmetric, so ``vm`` is ``mv`` and
    the two layouts agree.
    """

    X: Array
    weights: Array
    layout: Layout = "numerator"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.X.shape[1],)

    in_shape = out_shape

    @property
    def dtype(self) -> Any:
        return jnp.result_type(self.X, self.weights)

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = _check_tangent(self, "mv", tangent, self.in_shape)
        return (self.weights * (self.X @ tangent)) @ self.X  # X^T u as u @ X: no transpose

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.mv(_check_tangent(self, "vm", cotangent, self.out_shape))

    def _numerator(self) -> Array:
        return (self.X * self.weights[:, None]).T @ self.X

    def diagonal(self) -> Array:
        return self.weights @ jnp.square(self.X)


WeightedGram = _register(WeightedGram, ("X", "weights"), ("layout",))


# --------------------------------------------------------------------------- composites


class Scaled(JacobianOperator):
    """c J for a scalar c."""

    scale: Array
    operator: JacobianOperator

    @property
    def layout(self) -> Layout:  # type: ignore[override]
        return self.operator.layout

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.operator.out_shape

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.operator.in_shape

    @property
    def dtype(self) -> Any:
        return jnp.result_type(self.scale, self.operator.dtype)

    def mv(self, tangent: ArrayLike) -> Array:
        return self.scale * self.operator.mv(tangent)

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.scale * self.operator.vm(cotangent)

    def _numerator(self) -> Array:
        return self.scale * self.operator._numerator()

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return Scaled(self.scale, self.operator.with_layout(layout))

    def diagonal(self) -> Array:
        return self.scale * self.operator.diagonal()


Scaled = _register(Scaled, ("scale", "operator"), ())


class Sum(JacobianOperator):
    """J1 + J2 + ...: terms of the same shapes and layout."""

    terms: tuple[JacobianOperator, ...]

    def __post_init__(self) -> None:
        if not all(isinstance(t, JacobianOperator) for t in self.terms):
            return  # a pytree being rebuilt with placeholder leaves
        first = self.terms[0]
        for term in self.terms[1:]:
            if (term.out_shape, term.in_shape, term.layout) != (
                first.out_shape,
                first.in_shape,
                first.layout,
            ):
                raise ValueError(
                    f"cannot add a {term.layout}-layout {type(term).__name__} "
                    f"({term.out_shape} <- {term.in_shape}) to a {first.layout}-layout "
                    f"{type(first).__name__} ({first.out_shape} <- {first.in_shape})"
                )

    @property
    def layout(self) -> Layout:  # type: ignore[override]
        return self.terms[0].layout

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.terms[0].out_shape

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.terms[0].in_shape

    @property
    def dtype(self) -> Any:
        return jnp.result_type(*(t.dtype for t in self.terms))

    def mv(self, tangent: ArrayLike) -> Array:
        return functools.reduce(operator.add, (t.mv(tangent) for t in self.terms))

    def vm(self, cotangent: ArrayLike) -> Array:
        return functools.reduce(operator.add, (t.vm(cotangent) for t in self.terms))

    def _numerator(self) -> Array:
        return functools.reduce(operator.add, (t._numerator() for t in self.terms))

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return Sum(tuple(t.with_layout(layout) for t in self.terms))

    def diagonal(self) -> Array:
        return functools.reduce(operator.add, (t.diagonal() for t in self.terms))


Sum = _register(Sum, ("terms",), ())


class Composition(JacobianOperator):
    """outer o inner: apply ``inner`` (dy/dx), then ``outer`` (dz/dy); lazy."""

    outer: JacobianOperator
    inner: JacobianOperator

    @property
    def layout(self) -> Layout:  # type: ignore[override]
        return self.outer.layout

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.outer.out_shape

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.inner.in_shape

    @property
    def dtype(self) -> Any:
        return jnp.result_type(self.outer.dtype, self.inner.dtype)

    def mv(self, tangent: ArrayLike) -> Array:
        return self.outer.mv(self.inner.mv(tangent))

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.inner.vm(self.outer.vm(cotangent))

    def _numerator(self) -> Array:
        # Apply the outer operator to every column of the inner Jacobian: a broadcast for
        # a diagonal outer factor, one matrix product for a dense one.
        inner = self.inner._numerator()
        mid_ndim = len(self.inner.out_shape)
        columns = inner.reshape((*inner.shape[:mid_ndim], -1))
        dense = jax.vmap(self.outer.mv, in_axes=-1, out_axes=-1)(columns)
        return dense.reshape(self.out_shape + self.in_shape)

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return Composition(self.outer.with_layout(layout), self.inner.with_layout(layout))


Composition = _register(Composition, ("outer", "inner"), ())


def compose(outer: JacobianOperator, inner: JacobianOperator) -> JacobianOperator:
    """dz/dx from dz/dy (``outer``) and dy/dx (``inner``), keeping structure where the algebra
    allows; layout-free (``@`` reads its operands in the layout's order and calls this)."""
    if outer.in_shape != inner.out_shape:
        raise ValueError(
            f"cannot compose: the outer {type(outer).__name__} takes {outer.in_shape} but the "
            f"inner {type(inner).__name__} gives {inner.out_shape}"
        )
    if outer.layout != inner.layout:
        raise ValueError(
            f"cannot compose a {outer.layout}-layout {type(outer).__name__} with a "
            f"{inner.layout}-layout {type(inner).__name__}"
        )
    if isinstance(outer, Identity):
        return inner
    if isinstance(inner, Identity):
        return outer
    if isinstance(outer, Scaled):
        return Scaled(outer.scale, compose(outer.operator, inner))
    if isinstance(inner, Scaled):
        return Scaled(inner.scale, compose(outer, inner.operator))
    if isinstance(outer, Diagonal) and isinstance(inner, Diagonal):
        return Diagonal(outer.values * inner.values, outer.layout)
    if isinstance(outer, Kronecker) and isinstance(inner, Kronecker) and inner.B.ndim == 2:
        return Kronecker(outer.A @ inner.A, inner.B @ outer.B, outer.layout)
    if isinstance(outer, BlockDiagonal) and isinstance(inner, BlockDiagonal):
        blocks = jnp.einsum("bij,bjk->bik", outer.blocks, inner.blocks)
        return BlockDiagonal(blocks, outer.layout)
    return Composition(outer, inner)


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
      a :class:`BlockDiagonal` with (N, n, m) blocks: never the (N, n, N, m) array
      ``jax.jacfwd`` of the batched map gives.
    """
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


def is_operator(value: Any) -> bool:
    """True for a structured Jacobian."""
    return isinstance(value, JacobianOperator)


def as_operator(
    rule_id: str,
    name: str,
    piece: Any,
    out_shape: tuple[int, ...],
    layout: Layout,
    in_shape: tuple[int, ...] | None = None,
) -> JacobianOperator:
    """A combinator's piece as an operator: an operator is checked (layout, shapes), an array
    is checked as a dense Jacobian in ``layout`` and wrapped in :class:`Dense`."""
    from matcalc_jax import _validate

    if not is_operator(piece):
        array, _ = _validate.jacobian(rule_id, name, piece, out_shape, layout, in_shape)
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
