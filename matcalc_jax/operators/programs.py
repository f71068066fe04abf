"""Maps that follow the program instead of a formula: ``Linearized``, the opt-in autodiff
fallback for a primitive without a rule (that primitive's ``jvp`` and ``vjp``);
``Pullback``, a ``custom_vjp`` whose backward rule is not linear in its cotangent (its
``bwd``, called as JAX calls it); ``FromCotangents``, a Jacobian with such a pullback
inside, whose matrix is ``jax.jacrev``'s; ``WithFallbacks``, a Jacobian that names where
the fallback ran; and ``InProgramDtypes``, a Jacobian whose products are rounded to the
program's argument and output dtypes where its structure holds a wider one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import (
    JacobianOperator,
    Transposed,
    Wrapped,
    check_tangent,
    keeps_width,
    pytree,
    size_of,
)
from matcalc_jax.operators.index_maps import Map, Static


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
        "varied",
        "layout",
    ),
)
class Linearized(Map):
    """The autodiff fallback: one primitive's local Jacobian with respect to one operand,
    applied through JAX's ``jvp`` and ``vjp`` of that primitive alone. Only built when the
    caller passes ``fallback="autodiff"``; listed in ``J.fallbacks``.

    JAX differentiates the primitive in every operand that varies with the argument
    (``varied``, which holds ``position``), the others' tangents explicit zeros, and holds
    the rest constant, as its ``jvp`` of the whole program does: its rule for a ``reduce``
    of several arrays cannot take its symbolic zero for a varying operand (a ``TypeError``
    from inside it), and refuses a tangent, even an explicit zero, for an initial value."""

    operands: tuple[Array, ...]
    primitive: Static
    position: int
    output: int
    where: str
    varied: tuple[int, ...]
    layout: Layout = "numerator"
    is_fallback = True

    def _local(self) -> Callable[..., Array]:
        """The primitive as a function of the ``varied`` operands (the others held)."""
        primitive, params = self.primitive.value

        def local(*xs: Array) -> Array:
            args = list(self.operands)
            for i, x in zip(self.varied, xs, strict=True):
                args[i] = x
            out = primitive.bind(*args, **params)
            return out[self.output] if primitive.multiple_results else out

        return local

    def _apply(self, tangent: Array) -> Array:
        # A tangent of the operand's dtype, as jax.jvp asks: one of a real operand is real
        # (the basis a real-to-complex primitive, eig, is densified with is complex).
        operand = self.operands[self.position]
        if not jnp.iscomplexobj(operand):
            tangent = jnp.real(tangent)
        primals = tuple(self.operands[i] for i in self.varied)
        tangents = tuple(
            tangent.astype(operand.dtype) if i == self.position else jnp.zeros_like(primal)
            for i, primal in zip(self.varied, primals, strict=True)
        )
        return jax.jvp(self._local(), primals, tangents)[1]

    def _apply_transpose(self, cotangent: Array) -> Array:
        _, pullback = jax.vjp(self._local(), *(self.operands[i] for i in self.varied))
        return pullback(cotangent)[self.varied.index(self.position)]

    def describe(self) -> str:
        primitive, _ = self.primitive.value
        return f"{primitive.name} (autodiff fallback, operand {self.position}, {self.where})"


@pytree(("operator",), ("notes",))
class WithFallbacks(Wrapped):
    """A Jacobian part of which the opt-in autodiff fallback derived: the operator as the
    rules built it, and ``notes``, where the fallback ran (kept through every
    simplification, which may fold a fallback's map into a low-rank or diagonal term)."""

    operator: JacobianOperator
    notes: tuple[str, ...]

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return WithFallbacks(self.operator.with_layout(layout), self.notes)

    def transpose(self) -> JacobianOperator:
        return WithFallbacks(self.operator.transpose(), self.notes)

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        return WithFallbacks(self.operator.scaled(scale), self.notes)

    @property
    def fallbacks(self) -> tuple[str, ...]:
        return self.notes

    def describe(self) -> str:
        return "with autodiff fallbacks: " + "; ".join(self.notes)


def _rows_of(op: JacobianOperator, vm: Callable[[Array], Array]) -> Array:
    """The numerator matrix ``jax.jacrev`` builds for ``op``: ``vm`` at each unit
    cotangent, a row each (for a ``vm`` that is not linear, the only matrix JAX gives)."""
    out_shape, in_shape = tuple(op.out_shape), tuple(op.in_shape)
    m = size_of(out_shape)
    units = jnp.eye(m, dtype=op.dtype).reshape((m, *out_shape))
    return jax.vmap(vm)(units).reshape(out_shape + in_shape)


def _times_matrix(op: JacobianOperator, tangent: Array) -> Array:
    """``op``'s numerator matrix times ``tangent``: its ``mv`` where no other map is its."""
    m, n = size_of(op.out_shape), size_of(op.in_shape)
    matrix = op._numerator().reshape(m, n)
    return (matrix @ tangent.reshape(n)).reshape(op.out_shape)


class _FollowsBackward(Map):
    """A map whose ``vm`` calls a ``custom_vjp``'s backward rule and whose matrix is
    ``jax.jacrev``'s: its rows are that ``vm`` at the unit cotangents."""

    linear_in_cotangent = False

    def _numerator(self) -> Array:
        return _rows_of(self, self._apply_transpose)

    def _apply(self, tangent: Array) -> Array:
        return _times_matrix(self, tangent)


@pytree(
    ("residuals",),
    ("out_sizes", "in_sizes", "dtype_name", "backward", "output", "position", "layout"),
)
class Pullback(_FollowsBackward):
    """The local Jacobian of a ``custom_vjp`` function whose backward rule is not linear in
    the cotangent (``clip_gradient``): no matrix then stands for it, and this follows JAX
    call by call. ``vm(u)`` is ``bwd(residuals, u)``, what ``jax.vjp`` returns; the matrix
    (``to_dense``, and ``mv`` through it) is ``jax.jacrev``'s, whose rows are ``bwd`` at
    the unit cotangents. ``backward`` holds ``bwd`` and the outputs' and inputs' shapes and
    dtypes; ``output`` and ``position`` say which output and which input this part maps."""

    residuals: tuple[Array, ...]
    backward: Static
    output: int
    position: int
    layout: Layout = "numerator"

    def _apply_transpose(self, cotangent: Array) -> Array:
        pulled = _call_backward(self.backward, self.residuals, {self.output: cotangent})
        return _cotangent_of(self.backward, pulled, self.position).astype(self.dtype)

    def describe(self) -> str:
        return "of a backward rule not linear in its cotangent"


@pytree(
    ("residuals",),
    ("out_sizes", "in_sizes", "dtype_name", "backward", "outputs", "positions", "layout"),
)
class JointPullback(_FollowsBackward):
    """The local Jacobian of a ``custom_vjp`` function of several outputs whose backward
    rule is not linear in their cotangents, on flat vectors: the cotangents of
    ``outputs`` ravelled and stacked in -> those of the inputs at ``positions`` out. A rule
    may mix its outputs' cotangents (a clip by their global norm): ``bwd(u_0, u_1)`` is
    not ``bwd(u_0, 0) + bwd(0, u_1)``, so one map takes them all, and a graph that uses
    each output (through ``Restrict`` from this map) sums each output's cotangent before
    the one ``bwd`` call, as JAX's transpose does."""

    residuals: tuple[Array, ...]
    backward: Static
    outputs: tuple[int, ...]
    positions: tuple[int, ...]
    layout: Layout = "numerator"

    def _apply_transpose(self, cotangent: Array) -> Array:
        _, shapes, _ = self.backward.value
        split = _split(cotangent, [shapes[j] for j in self.outputs])
        cotangents = dict(zip(self.outputs, split, strict=True))
        pulled = _call_backward(self.backward, self.residuals, cotangents)
        return jnp.concatenate([
            _cotangent_of(self.backward, pulled, k).astype(self.dtype).reshape(-1)
            for k in self.positions
        ])  # fmt: skip

    def describe(self) -> str:
        return "of a backward rule of several outputs, not linear in their cotangents"


@pytree(
    ("operands",),
    ("out_sizes", "in_sizes", "dtype_name", "primitive", "outputs", "positions", "where", "layout"),
)
class LinearizedByRows(_FollowsBackward):
    """The autodiff fallback for a primitive with a ``custom_vjp`` inside (a loop whose
    body calls one), on flat vectors as a ``JointPullback``: the cotangents of
    ``outputs`` ravelled and stacked in -> those of the operands at ``positions`` out, by
    one ``jax.vjp`` of the primitive. ``jax.jvp`` refuses such a primitive, and its
    backward rule may not be linear in the cotangent: so the matrix is ``jax.jacrev``'s,
    ``mv`` that matrix times the tangent, and it does not compose as a matrix."""

    operands: tuple[Array, ...]
    primitive: Static
    outputs: tuple[int, ...]
    positions: tuple[int, ...]
    where: str
    layout: Layout = "numerator"
    is_fallback = True

    def _apply_transpose(self, cotangent: Array) -> Array:
        primitive, params = self.primitive.value
        operands = list(self.operands)

        def local(*varied: Array) -> list[Array]:
            args = list(operands)
            for k, value in zip(self.positions, varied, strict=True):
                args[k] = value
            out = primitive.bind(*args, **params)
            return list(out) if primitive.multiple_results else [out]

        outs, pullback = jax.vjp(local, *(operands[k] for k in self.positions))
        split = iter(_split(cotangent, [(outs[j].shape, outs[j].dtype) for j in self.outputs]))
        pulled = pullback(
            [
                next(split) if j in self.outputs else np.zeros(y.shape, jax.dtypes.float0)
                for j, y in enumerate(outs)
            ]
        )  # an integer output has JAX's float0 cotangent
        return jnp.concatenate([p.astype(self.dtype).reshape(-1) for p in pulled])

    def describe(self) -> str:
        primitive, _ = self.primitive.value
        return f"{primitive.name} (autodiff fallback by jax.vjp, a custom_vjp inside, {self.where})"


def _split(vector: Array, shapes: list[tuple]) -> list[Array]:
    """A flat cotangent cut into pieces of the given (shape, dtype), in order (a real
    piece takes the real part of a complex vector's)."""
    pieces, start = [], 0
    for shape, dtype in shapes:
        size = size_of(tuple(shape))
        piece = vector[start : start + size].reshape(tuple(shape))
        if not jnp.issubdtype(dtype, jnp.complexfloating):
            piece = jnp.real(piece)
        pieces.append(piece.astype(dtype))
        start += size
    return pieces


def _call_backward(backward: Static, residuals: tuple, cotangents: dict[int, Array]) -> list:
    """``bwd(residuals, u_0, u_1, ...)`` with the given outputs' cotangents, 0 for the rest."""
    bwd, shapes, _ = backward.value
    full = [
        cotangents[j] if j in cotangents else jnp.zeros(shape, dtype)
        for j, (shape, dtype) in enumerate(shapes)
    ]
    return backward_cotangents(bwd, *residuals, *full)


def backward_cotangents(bwd: Any, *args: Any) -> list:
    """A ``custom_vjp``'s flat backward rule (JAX's ``bwd`` of a ``custom_vjp_call``) at
    ``args``, the residuals then the outputs' cotangents: the inputs' cotangents. JAX up to
    0.10 returns them as a list; from 0.11, the pair (that list, the rule's logs), which read
    as cotangents gave every input a cotangent of 0 without an error."""
    out = bwd.call_wrapped(*args)
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], list):
        return out[0]
    return list(out)


def _cotangent_of(backward: Static, pulled: list, position: int) -> Array:
    """Input ``position``'s cotangent from ``bwd``, in the input's dtype (as ``jax.vjp``
    returns it); a symbolic zero (no cotangent) as an array of 0."""
    shape, dtype = backward.value[2][position]
    if not hasattr(pulled[position], "shape"):
        return jnp.zeros(shape, dtype)
    return pulled[position].astype(dtype)


@pytree(("operator",), (), as_graph=True)
class FromCotangents(Wrapped):
    """A Jacobian with a ``Pullback`` inside: a backward rule not linear in its cotangent
    (``clip_gradient``) does not compose as a matrix (the map after it scales the cotangent
    it receives: (2 clip)'s rows are clip(2 e_i), not 2 clip(e_i)). So the matrix is what
    ``jax.jacrev`` builds, ``vm`` of the whole map at each unit cotangent; ``vm`` is the
    held operator's (``jax.vjp``'s), and ``mv``, the diagonal, trace, log-determinant and
    solve come from that matrix."""

    operator: JacobianOperator

    def _numerator(self) -> Array:
        return _rows_of(self, self.operator.vm)

    def mv(self, tangent: ArrayLike) -> Array:
        return _times_matrix(self, check_tangent(self, "mv", tangent, self.in_shape))

    diagonal = JacobianOperator.diagonal
    trace = JacobianOperator.trace
    logdet = JacobianOperator.logdet
    solve = JacobianOperator.solve

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return frozenset()

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return FromCotangents(self.operator.with_layout(layout))

    def transpose(self) -> JacobianOperator:
        return Transposed(self)

    def describe(self) -> str:
        return "with a backward rule not linear in its cotangent: jax.jacrev's matrix"


@pytree(("operator",), ("in_dtype_name", "out_dtype_name"))
class InProgramDtypes(Wrapped):
    """A Jacobian whose structure computes in a dtype wider than the program's (a cast
    folded into a factor: ``W @ p.astype(float64)`` is a float64 ``Contraction`` of a
    float32 p; a float16 output of a float32 low-rank part): ``mv`` is rounded once to the
    output's dtype, as ``jax.jvp``'s tangent is, ``vm`` to the argument's, as ``jax.vjp``'s
    cotangent is, and the matrix to the output's, as ``jax.jacfwd``'s. The rest is the held
    operator's, in its own dtype."""

    operator: JacobianOperator
    in_dtype_name: str
    out_dtype_name: str

    dtype = property(lambda self: jnp.dtype(self.out_dtype_name))

    def mv(self, tangent: ArrayLike) -> Array:
        return self.operator.mv(tangent).astype(self.out_dtype_name)

    def vm(self, cotangent: ArrayLike) -> Array:
        pulled = self.operator.vm(cotangent)
        # a structure built from it (a Gauss-Newton matrix's rows) keeps the wider digits
        return pulled if keeps_width() else pulled.astype(self.in_dtype_name)

    def _numerator(self) -> Array:
        return self.operator._numerator().astype(self.out_dtype_name)

    def diagonal(self) -> Array:
        return self.operator.diagonal().astype(self.out_dtype_name)

    def trace(self) -> Array:
        return self.operator.trace().astype(self.out_dtype_name)

    def logdet(self) -> Array:
        return self.operator.logdet().astype(self.out_dtype_name)

    def solve(self, rhs: ArrayLike) -> Array:
        return self.operator.solve(rhs).astype(self.in_dtype_name)

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return InProgramDtypes(
            self.operator.with_layout(layout), self.in_dtype_name, self.out_dtype_name
        )

    def transpose(self) -> JacobianOperator:
        return InProgramDtypes(self.operator.transpose(), self.out_dtype_name, self.in_dtype_name)

    def describe(self) -> str:
        return f"rounded to the program's dtypes: {self.in_dtype_name} -> {self.out_dtype_name}"


def in_program_dtypes(op: JacobianOperator, in_dtype: Any, out_dtype: Any) -> JacobianOperator:
    """``op``, wrapped in ``InProgramDtypes`` where its ``mv`` or ``vm`` (read abstractly,
    ``jax.eval_shape``) gives another dtype than the output's or the argument's, of the
    same kind (a real map of complex values keeps its own rule)."""
    in_dtype, out_dtype = jnp.dtype(in_dtype), jnp.dtype(out_dtype)
    tangent = jax.ShapeDtypeStruct(tuple(op.in_shape), in_dtype)
    cotangent = jax.ShapeDtypeStruct(tuple(op.out_shape), out_dtype)
    image, preimage = jax.eval_shape(op.mv, tangent).dtype, jax.eval_shape(op.vm, cotangent).dtype
    if (image, preimage) == (out_dtype, in_dtype):
        return op
    if _kind(image) != _kind(out_dtype) or _kind(preimage) != _kind(in_dtype):
        return op
    return InProgramDtypes(op, in_dtype.name, out_dtype.name)


def _kind(dtype: Any) -> str:
    return "complex" if jnp.issubdtype(dtype, jnp.complexfloating) else "real"
