"""The linear maps of JAX's structural and linear-algebra primitives, as operators.

Each stores only what it needs to apply the map and its transpose (an index, a padding
configuration, a triangular factor, a solver's program): ``reshape``, ``slice``, ``pad`` /
``concatenate``, ``dynamic_slice``, a change of float type, ``triangular_solve`` and
``custom_linear_solve``. They never build the dense Jacobian unless ``to_dense`` is called,
which applies ``mv`` to the basis. ``Linearized`` is the one map that is not written here:
the opt-in autodiff fallback for a primitive without a rule.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.extend import core as jex_core
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import (
    Composition,
    JacobianOperator,
    Scaled,
    ShapedOperator,
    check_tangent,
    compose,
    composition_rule,
    pytree,
    size_of,
)
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.identity import Identity


class Static:
    """A compile-time parameter (a primitive's parameters, a program) carried in an
    operator's pytree structure. Two are equal when they hold the same object or equal
    values (so that an operator built at each step of a loop keeps one structure); the
    hash is the value's type, which equal values share."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Static):
            return NotImplemented
        if self.value is other.value:
            return True
        try:
            return bool(self.value == other.value)
        except Exception:  # values without a plain equality (arrays, programs)
            return False

    def __hash__(self) -> int:
        return hash(type(self.value).__name__)

    def __repr__(self) -> str:
        return f"Static({type(self.value).__name__})"


class _Map(ShapedOperator):
    """A map applied by ``_apply`` and transposed by ``_apply_transpose``."""

    def mv(self, tangent: ArrayLike) -> Array:
        return self._apply(check_tangent(self, "mv", tangent, self.in_shape))

    def vm(self, cotangent: ArrayLike) -> Array:
        return self._apply_transpose(check_tangent(self, "vm", cotangent, self.out_shape))

    def _apply(self, tangent: Array) -> Array:
        raise NotImplementedError

    def _apply_transpose(self, cotangent: Array) -> Array:
        raise NotImplementedError

    def _numerator(self) -> Array:
        n = size_of(self.in_shape)
        basis = jnp.eye(n, dtype=self.dtype).reshape((n, *self.in_shape))
        columns = jax.vmap(self._apply)(basis)  # (n, *out_shape)
        return jnp.moveaxis(columns.reshape(n, -1), 0, -1).reshape(self.out_shape + self.in_shape)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class Reshape(_Map):
    """v -> v.reshape(out_shape): the same entries in a new shape."""

    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return tangent.reshape(self.out_shape)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return cotangent.reshape(self.in_shape)

    def _numerator(self) -> Array:
        n = size_of(self.in_shape)
        return jnp.eye(n, dtype=self.dtype).reshape(self.out_shape + self.in_shape)

    def transpose(self) -> JacobianOperator:
        return Reshape(self.in_sizes, self.out_sizes, self.dtype_name, self.layout)


@composition_rule(Reshape, Reshape)
def _reshape_reshape(outer: Reshape, inner: Reshape) -> JacobianOperator:
    return Reshape(outer.out_sizes, inner.in_sizes, outer.dtype_name, outer.layout)


def _unpad(array: Array, config: tuple[tuple[int, int, int], ...]) -> Array:
    """The entries of ``array`` that ``lax.pad(x, 0, config)`` took from x: a strided slice."""
    return lax.slice(
        array,
        tuple(lo for lo, _, _ in config),
        tuple(size - hi for size, (_, hi, _) in zip(array.shape, config, strict=True)),
        tuple(interior + 1 for _, _, interior in config),
    )


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "config", "layout"))
class Embed(_Map):
    """v -> lax.pad(v, 0, config): v placed in a larger zero array (``pad`` with non-negative
    edges, one operand of ``concatenate``); its transpose is the matching strided slice."""

    config: tuple[tuple[int, int, int], ...]
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return lax.pad(tangent, jnp.zeros((), tangent.dtype), self.config)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return _unpad(cotangent, self.config)

    def transpose(self) -> JacobianOperator:
        return Restrict(self.in_sizes, self.out_sizes, self.dtype_name, self.config, self.layout)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "config", "layout"))
class Restrict(_Map):
    """v -> a strided slice of v (``slice``): the transpose of ``Embed`` with the same
    ``config``, here read from the input's side."""

    config: tuple[tuple[int, int, int], ...]
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return _unpad(tangent, self.config)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return lax.pad(cotangent, jnp.zeros((), cotangent.dtype), self.config)

    def transpose(self) -> JacobianOperator:
        return Embed(self.in_sizes, self.out_sizes, self.dtype_name, self.config, self.layout)


def slice_config(
    in_shape: Sequence[int], start: Sequence[int], limit: Sequence[int], strides: Sequence[int]
) -> tuple[tuple[int, int, int], ...]:
    """The padding that puts ``x[start:limit:strides]`` back where it came from."""
    config = []
    for size, lo, hi, step in zip(in_shape, start, limit, strides, strict=True):
        count = max(0, -(-(hi - lo) // step))
        last = lo + (count - 1) * step if count else lo - 1
        config.append((lo, size - last - 1, step - 1))
    return tuple(config)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "dimensions", "layout"))
class Reverse(_Map):
    """v -> v reversed along ``dimensions`` (``rev``, ``x[::-1]``): its own transpose."""

    dimensions: tuple[int, ...]
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return lax.rev(tangent, self.dimensions)

    _apply_transpose = _apply

    def transpose(self) -> JacobianOperator:
        return self


@pytree(("start",), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class DynamicSlice(_Map):
    """v -> lax.dynamic_slice(v, start, out_shape), with traced start indices."""

    start: tuple[Array, ...]
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return lax.dynamic_slice(tangent, self.start, self.out_shape)

    def _apply_transpose(self, cotangent: Array) -> Array:
        zeros = jnp.zeros(self.in_shape, cotangent.dtype)
        return lax.dynamic_update_slice(zeros, cotangent, self.start)


def cast(tangent: Array, dtype: Any) -> Array:
    """``tangent`` in ``dtype``; a complex tangent cast to a real type keeps its real part
    (as ``lax.convert_element_type`` does)."""
    dtype = jnp.dtype(dtype)
    if jnp.iscomplexobj(tangent) and not jnp.issubdtype(dtype, jnp.complexfloating):
        tangent = jnp.real(tangent)
    return tangent.astype(dtype)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "in_dtype_name", "layout"))
class ChangeType(_Map):
    """v -> v in another float type (``convert_element_type``). Between real and complex:
    real to complex embeds (``v + 0i``) and complex to real keeps the real part, each the
    other's transpose in JAX's pairing of complex cotangents (``Re(u^T w)``); a tangent
    reaching the real side as a complex array (a complex basis) is read by its real part."""

    in_dtype_name: str
    layout: Layout = "numerator"

    @property
    def real_linear_only(self) -> bool:  # the real part of a complex tangent
        return jnp.issubdtype(self.in_dtype_name, jnp.complexfloating) and not jnp.issubdtype(
            self.dtype, jnp.complexfloating
        )

    def _apply(self, tangent: Array) -> Array:
        return cast(cast(tangent, self.in_dtype_name), self.dtype)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return cast(cast(cotangent, self.dtype), self.in_dtype_name)

    def transpose(self) -> JacobianOperator:
        return ChangeType(
            self.in_sizes, self.out_sizes, self.in_dtype_name, self.dtype_name, self.layout
        )

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return frozenset((k, k) for k in range(len(self.in_shape)))


@pytree(("a",), ("out_sizes", "in_sizes", "dtype_name", "params", "layout"))
class TriangularSolve(_Map):
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


def run_closed(jaxpr: Any, consts: Sequence[Array], *args: Array) -> list[Array]:
    """Evaluate a closed program (a ``ClosedJaxpr``) on ``consts`` and ``args``."""
    return jex_core.jaxpr_as_fun(jaxpr)(*consts, *args)


@pytree(
    ("solve_consts", "transpose_consts"),
    ("out_sizes", "in_sizes", "dtype_name", "programs", "layout"),
)
class LinearSolve(_Map):
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


@pytree(
    ("operands",),
    (
        "out_sizes",
        "in_sizes",
        "dtype_name",
        "primitive",
        "position",
        "output",
        "where",
        "layout",
    ),
)
class Linearized(_Map):
    """The autodiff fallback: one primitive's local Jacobian with respect to one operand,
    applied through JAX's ``jvp`` and ``vjp`` of that primitive alone. Only built when the
    caller passes ``fallback="autodiff"``; listed in ``J.fallbacks``."""

    operands: tuple[Array, ...]
    primitive: Static
    position: int
    output: int
    where: str
    layout: Layout = "numerator"
    is_fallback = True

    def _local(self) -> Callable[[Array], Array]:
        primitive, params = self.primitive.value
        operands = list(self.operands)

        def local(x: Array) -> Array:
            args = [*operands[: self.position], x, *operands[self.position + 1 :]]
            out = primitive.bind(*args, **params)
            return out[self.output] if primitive.multiple_results else out

        return local

    def _apply(self, tangent: Array) -> Array:
        return jax.jvp(self._local(), (self.operands[self.position],), (tangent,))[1]

    def _apply_transpose(self, cotangent: Array) -> Array:
        _, pullback = jax.vjp(self._local(), self.operands[self.position])
        return pullback(cotangent)[0]

    def describe(self) -> str:
        primitive, _ = self.primitive.value
        return f"{primitive.name} (autodiff fallback, operand {self.position}, {self.where})"


@pytree(("indices",), ("out_sizes", "in_sizes", "dtype_name", "params", "layout"))
class Gather(_Map):
    """v -> lax.gather(v, indices, ...) for constant indices (``x[idx]``, ``jnp.take``); its
    transpose scatters back with addition, as JAX transposes a gather."""

    indices: Array
    params: Static
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return lax.gather(tangent, self.indices, **self.params.value)

    def _apply_transpose(self, cotangent: Array) -> Array:
        params = self.params.value
        numbers = params["dimension_numbers"]
        scatter_numbers = lax.ScatterDimensionNumbers(
            update_window_dims=numbers.offset_dims,
            inserted_window_dims=numbers.collapsed_slice_dims,
            scatter_dims_to_operand_dims=numbers.start_index_map,
            operand_batching_dims=numbers.operand_batching_dims,
            scatter_indices_batching_dims=numbers.start_indices_batching_dims,
        )
        zeros = jnp.zeros(self.in_shape, cotangent.dtype)
        return lax.scatter_add(
            zeros, self.indices, cotangent, scatter_numbers,
            indices_are_sorted=params["indices_are_sorted"],
            unique_indices=params["unique_indices"], mode=params["mode"],
        )  # fmt: skip


@pytree(("predicate", "branches"), ("layout",))
class Select(JacobianOperator):
    """The Jacobian of ``lax.select_n(p, y_0, y_1, ...)``: row i is row i of the Jacobian of
    the branch ``p_i`` chooses (``None``: a constant branch, a zero row). ``mv`` applies the
    branches and selects, as JAX's ``jvp`` of ``select_n`` does, so a NaN or an infinity in
    a branch not taken (``sqrt`` of a negative entry under ``jnp.where(x > 0, ...)``) never
    reaches the result; ``vm`` masks the cotangent before each branch, as JAX's ``vjp``."""

    predicate: Array
    branches: tuple[JacobianOperator | None, ...]
    layout: Layout = "numerator"

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
        return Select(self.predicate, branches, layout)

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        return self._select([None if b is None else b.diagonal() for b in self.branches])

    def batch_axes(self) -> frozenset[tuple[int, int]]:
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


def select(predicate: Array, branches: Sequence[JacobianOperator | None]) -> Any:
    """The Jacobian of ``select_n(predicate, *branches)``, as structured as selection allows:
    branches that are diagonal after a common factor X (``diag(d_k) o X``, X the identity
    for elementwise branches) select their diagonals, ``diag(select(p, d_k)) o X``; a
    constant branch beside a non-trivial X keeps the selection after X (a NaN row of X in a
    branch not taken must not reach the result); anything else is a lazy ``Select``."""
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
        return compose(Select(predicate, tuple(diagonals)), inner)
    return Select(predicate, tuple(branches))


@pytree(("operator",), ("notes",))
class WithFallbacks(JacobianOperator):
    """A Jacobian part of which the opt-in autodiff fallback derived: the operator as the
    rules built it, and ``notes``, where the fallback ran (kept through every
    simplification, which may fold a fallback's map into a low-rank or diagonal term)."""

    operator: JacobianOperator
    notes: tuple[str, ...]

    layout = property(lambda self: self.operator.layout)  # type: ignore[assignment]
    out_shape = property(lambda self: self.operator.out_shape)
    in_shape = property(lambda self: self.operator.in_shape)
    dtype = property(lambda self: self.operator.dtype)

    def mv(self, tangent: ArrayLike) -> Array:
        return self.operator.mv(tangent)

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.operator.vm(cotangent)

    def _numerator(self) -> Array:
        return self.operator._numerator()

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return WithFallbacks(self.operator.with_layout(layout), self.notes)

    def transpose(self) -> JacobianOperator:
        return WithFallbacks(self.operator.transpose(), self.notes)

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        return WithFallbacks(self.operator.scaled(scale), self.notes)

    def diagonal(self) -> Array:
        return self.operator.diagonal()

    def trace(self) -> Array:
        return self.operator.trace()

    def logdet(self) -> Array:
        return self.operator.logdet()

    def solve(self, rhs: ArrayLike) -> Array:
        return self.operator.solve(rhs)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return self.operator.batch_axes()

    @property
    def fallbacks(self) -> tuple[str, ...]:
        return self.notes

    def describe(self) -> str:
        return "with autodiff fallbacks: " + "; ".join(self.notes)


@pytree(
    ("residuals",),
    ("out_sizes", "in_sizes", "dtype_name", "backward", "output", "position", "layout"),
)
class Pullback(_Map):
    """The local Jacobian of a ``custom_vjp`` function whose backward rule is not linear in
    the cotangent (``clip_gradient``): no matrix then stands for it, and this follows JAX
    call by call. ``vm(u)`` is ``bwd(residuals, u)``, what ``jax.vjp`` returns; the matrix
    (``to_dense``, and ``mv`` through it) is ``jax.jacrev``'s, whose rows are ``bwd`` at
    the unit cotangents. ``backward`` holds ``bwd`` and the outputs' cotangent shapes;
    ``output`` and ``position`` say which output and which input this part maps."""

    residuals: tuple[Array, ...]
    backward: Static
    output: int
    position: int
    layout: Layout = "numerator"

    def _apply_transpose(self, cotangent: Array) -> Array:
        bwd, shapes = self.backward.value
        cotangents = [
            cotangent if j == self.output else jnp.zeros(shape, dtype)
            for j, (shape, dtype) in enumerate(shapes)
        ]
        pulled = bwd.call_wrapped(*self.residuals, *cotangents)[self.position]
        if not hasattr(pulled, "shape"):  # a symbolic zero: this input gets no cotangent
            return jnp.zeros(self.in_shape, self.dtype)
        return pulled.astype(self.dtype)

    def _numerator(self) -> Array:
        m = size_of(self.out_shape)
        units = jnp.eye(m, dtype=self.dtype).reshape((m, *self.out_shape))
        rows = jax.vmap(self._apply_transpose)(units)  # (m, *in_shape)
        return rows.reshape(self.out_shape + self.in_shape)

    def _apply(self, tangent: Array) -> Array:
        m, n = size_of(self.out_shape), size_of(self.in_shape)
        matrix = self._numerator().reshape(m, n)
        return (matrix @ tangent.reshape(n)).reshape(self.out_shape)

    def describe(self) -> str:
        return "of a backward rule not linear in its cotangent"


@pytree(("indices",), ("out_sizes", "in_sizes", "dtype_name", "axis", "layout"))
class TakeAlong(_Map):
    """v -> v at ``indices`` along ``axis`` (the same position on the other axes): the
    permutation of ``sort``, the selection of ``top_k``, as JAX's rules index the tangent;
    its transpose adds each entry back where it was taken from."""

    indices: Array
    axis: int
    layout: Layout = "numerator"

    def _grid(self) -> tuple[Array, ...]:
        shape = self.indices.shape
        return tuple(
            self.indices if d == self.axis else lax.broadcasted_iota(jnp.int32, shape, d)
            for d in range(len(shape))
        )

    def _apply(self, tangent: Array) -> Array:
        return tangent[self._grid()]

    def _apply_transpose(self, cotangent: Array) -> Array:
        return jnp.zeros(self.in_shape, cotangent.dtype).at[self._grid()].add(cotangent)
