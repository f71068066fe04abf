"""The rule table: one entry per JAX primitive, in the seed page's terms.

============================  ==============================================================
primitive                     Jacobian of the output (J_a: the operand's Jacobian)
============================  ==============================================================
elementwise ``f``             diag(f'(x)) J_x                          (the seed's rule)
``add``, ``sub``              J_a +- J_b                                   (sum rule)
``mul``, ``div``              diag(b) J_a + diag(a) J_b, diag(1/b) J_a - diag(a/b^2) J_b
                                                                       (product rule)
``max``, ``min``, ``pow``,    diag(df/da) J_a + diag(df/db) J_b
``atan2``, ``clamp``
``select_n``                  sum_k diag([p = k]) J_k
``dot_general``               (x -> einsum(x, B)) J_a + (y -> einsum(A, y)) J_b
                              (d(Ax)/dx = A, and the product rule)
``reduce_sum``, ``transpose``,  a ``Contraction`` without core (sum, permute,
``broadcast_in_dim``,         broadcast axes)
``squeeze``, unit ``reshape``
``reduce_max``, ``reduce_min``  the mean over the maximizers, as JAX differentiates it
``cumsum``                    a triangular core
``reshape``, ``slice``,       ``.maps``: index maps that never materialize
``pad``, ``concatenate``, ``rev``, ``gather``,
``dynamic_slice``,
``convert_element_type``
``triangular_solve``          B -> op(A)^{-1} B for a constant A
``custom_linear_solve``       A^{-1} (J_b - d(A x)/dA J_A): JAX's own solve rule
``jit``, ``closed_call``,     recurse into the inner program
``remat``, ``custom_vjp_call``
``custom_jvp_call``           interpret the function's own JVP rule (jax.nn's and
                              matcalc_jax.nn's closed forms are kept)
``stop_gradient``             0
============================  ==============================================================
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import Array

from matcalc_jax.operators.base import add, compose
from matcalc_jax.operators.contraction import LETTERS, contraction
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.transform import elementwise, maps
from matcalc_jax.transform.interpreter import Context, NoRule, Operator, Rule, bind

RULES: dict[str, Rule] = {}
#: Primitives whose output depends on only some operands for differentiation.
RELEVANT: dict[str, Callable[[Any], list[int]]] = {"stop_gradient": lambda eqn: []}


def rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn

    return register


def pointwise(*names: str) -> Callable[[Callable[..., list[Operator]]], Rule]:
    """A rule that needs the outputs' values: evaluate the equation first, then
    ``fn(context, eqn, ins, in_ops, outs) -> out_ops``."""

    def register(fn: Callable[..., list[Operator]]) -> Rule:
        @functools.wraps(fn)
        def apply(ctx: Context, eqn: Any, ins: list[Array], ops: list[Operator]) -> Any:
            outs = bind(eqn, ins)
            return outs, fn(ctx, eqn, ins, ops, outs)

        return rule(*names)(apply)

    return register


# ------------------------------------------------------------------------------ helpers


def total(terms: Sequence[Operator]) -> Operator:
    """The sum of the terms that are not ``None`` (``None`` if there are none)."""
    present = [t for t in terms if t is not None]
    if not present:
        return None
    return functools.reduce(add, present)


def broadcast(op: Operator, shape: tuple[int, ...]) -> Operator:
    """The Jacobian of an operand broadcast to ``shape`` by an elementwise primitive (a
    scalar, or unit axes as in ``sub x (x_max broadcast to (1,))``)."""
    if op is None or op.out_shape == tuple(shape):
        return op
    source = op.out_shape
    labels = LETTERS[: len(source)]
    fresh = iter(LETTERS[len(source) :])
    lead = len(shape) - len(source)
    out_labels = "".join(
        labels[j - lead] if j >= lead and source[j - lead] == size else next(fresh)
        for j, size in enumerate(shape)
    )
    return index_map(labels, out_labels, source, shape, op)


def index_map(
    in_labels: str,
    out_labels: str,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    op: Any,
    dtype: Any = None,
) -> Operator:
    """A map that only permutes, sums and broadcasts axes (labels as in ``einsum``), in
    ``dtype`` (``op``'s by default), after ``op``."""
    dtype = op.dtype if dtype is None else dtype
    spread = contraction(None, (in_labels, "", out_labels), in_shape, out_shape, dtype)
    return compose(spread, op)


def times(partial: Array, op: Operator) -> Operator:
    """diag(partial) J, or c J for a scalar partial."""
    if op is None:
        return None
    partial = jnp.asarray(partial)
    if partial.ndim == 0 and partial.shape != op.out_shape:
        return op.scaled(partial)
    values = jnp.broadcast_to(partial, op.out_shape).astype(op.dtype)
    return compose(Diagonal(values, op.layout), op)


def _label(ndim: int, start: int = 0) -> str:
    return LETTERS[start : start + ndim]


# ---------------------------------------------------------------------- elementwise maps


@pointwise(*elementwise.UNARY)
def _unary(ctx, eqn, ins, ops, outs):
    derivative = elementwise.UNARY[eqn.primitive.name](ins[0], outs[0])
    return [times(derivative.astype(outs[0].dtype), ops[0])]


@pointwise(*elementwise.PIECEWISE_CONSTANT, "stop_gradient")
def _zero_derivative(ctx, eqn, ins, ops, outs):
    return [None]


@pointwise("integer_pow")
def _integer_pow(ctx, eqn, ins, ops, outs):
    derivative = elementwise.integer_pow(ins[0], outs[0], power=eqn.params["y"])
    return [times(derivative.astype(outs[0].dtype), ops[0])]


@pointwise("neg")
def _neg(ctx, eqn, ins, ops, outs):
    return [ops[0].scaled(jnp.asarray(-1, outs[0].dtype))]


@pointwise("copy", "copy_p", "optimization_barrier", "reduce_precision")
def _same(ctx, eqn, ins, ops, outs):
    return list(ops)


@pointwise("add", "add_any")
def _add(ctx, eqn, ins, ops, outs):
    shape = outs[0].shape
    return [total([broadcast(ops[0], shape), broadcast(ops[1], shape)])]


@pointwise("sub")
def _sub(ctx, eqn, ins, ops, outs):
    shape = outs[0].shape
    minus = broadcast(ops[1], shape)
    minus = None if minus is None else minus.scaled(jnp.asarray(-1, outs[0].dtype))
    return [total([broadcast(ops[0], shape), minus])]


@pointwise("mul")
def _mul(ctx, eqn, ins, ops, outs):
    a, b = ins
    shape = outs[0].shape
    return [total([times(b, broadcast(ops[0], shape)), times(a, broadcast(ops[1], shape))])]


@pointwise("div")
def _div(ctx, eqn, ins, ops, outs):
    b = ins[1]
    y = outs[0]
    shape = y.shape
    return [
        total([times(1 / b, broadcast(ops[0], shape)), times(-(y / b), broadcast(ops[1], shape))])
    ]


@pointwise(*elementwise.BINARY)
def _binary(ctx, eqn, ins, ops, outs):
    a, b = ins
    y = outs[0]
    partials = elementwise.BINARY[eqn.primitive.name]
    terms = [
        times(partial(a, b, y).astype(y.dtype), broadcast(op, y.shape))
        for partial, op in zip(partials, ops, strict=True)
        if op is not None
    ]
    return [total(terms)]


@pointwise("clamp")
def _clamp(ctx, eqn, ins, ops, outs):
    low, x, high = ins
    y = outs[0]
    zero, one = jnp.zeros((), y.dtype), jnp.ones((), y.dtype)
    partials = (  # as jax.lax differentiates clamp
        jnp.where((low > x) & (low < high), one, zero),
        jnp.where((x > low) & (x < high), one, zero),
        jnp.where(high < x, one, zero),
    )
    return [total([times(p, broadcast(op, y.shape)) for p, op in zip(partials, ops, strict=True)])]


@pointwise("select_n")
def _select_n(ctx, eqn, ins, ops, outs):
    predicate = ins[0]
    y = outs[0]
    terms = []
    for k, op in enumerate(ops[1:]):
        if op is not None:
            chosen = jnp.where(predicate == k, jnp.ones((), y.dtype), jnp.zeros((), y.dtype))
            terms.append(times(jnp.broadcast_to(chosen, y.shape), broadcast(op, y.shape)))
    return [total(terms)]


RELEVANT["select_n"] = lambda eqn: list(range(1, len(eqn.invars)))


# ------------------------------------------------------------- linear maps: contractions


@pointwise("dot_general")
def _dot_general(ctx, eqn, ins, ops, outs):
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    y = outs[0]
    lhs_labels = _label(lhs.ndim)
    rhs_labels = list(_label(rhs.ndim, lhs.ndim))
    for left, right in zip(lhs_contract, rhs_contract, strict=True):
        rhs_labels[right] = lhs_labels[left]
    for left, right in zip(lhs_batch, rhs_batch, strict=True):
        rhs_labels[right] = lhs_labels[left]
    rhs_labels = "".join(rhs_labels)
    batch = "".join(lhs_labels[k] for k in lhs_batch)
    lhs_free = "".join(
        c for k, c in enumerate(lhs_labels) if k not in lhs_contract and k not in lhs_batch
    )
    rhs_free = "".join(
        c for k, c in enumerate(rhs_labels) if k not in rhs_contract and k not in rhs_batch
    )
    out_labels = batch + lhs_free + rhs_free
    # The product rule: d(A B) = dA B + A dB, each term a contraction with the other factor.
    sides = ((lhs, lhs_labels, rhs, rhs_labels, ops[0]), (rhs, rhs_labels, lhs, lhs_labels, ops[1]))
    terms = [
        compose(contraction(other.astype(y.dtype), (labels, other_labels, out_labels),
                            operand.shape, y.shape, y.dtype), op)
        for operand, labels, other, other_labels, op in sides
        if op is not None
    ]  # fmt: skip
    return [total(terms)]


@pointwise("transpose")
def _transpose(ctx, eqn, ins, ops, outs):
    labels = _label(ins[0].ndim)
    permuted = "".join(labels[k] for k in eqn.params["permutation"])
    return [index_map(labels, permuted, ins[0].shape, outs[0].shape, ops[0], outs[0].dtype)]


def _without(labels: str, axes: Sequence[int]) -> str:
    """``labels`` without those of ``axes`` (the axes a reduction or a squeeze removes)."""
    dropped = {axis % len(labels) for axis in axes}
    return "".join(c for k, c in enumerate(labels) if k not in dropped)


#: The parameter that names the axes a reduction or a squeeze removes.
_REMOVED_AXES = {"reduce_sum": "axes", "squeeze": "dimensions"}


@pointwise(*_REMOVED_AXES)
def _remove_axes(ctx, eqn, ins, ops, outs):
    labels = _label(ins[0].ndim)
    kept = _without(labels, eqn.params[_REMOVED_AXES[eqn.primitive.name]])
    return [index_map(labels, kept, ins[0].shape, outs[0].shape, ops[0], outs[0].dtype)]


@pointwise("broadcast_in_dim")
def _broadcast_in_dim(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    labels = _label(x.ndim)
    fresh = iter(LETTERS[x.ndim :])
    source = dict(zip(eqn.params["broadcast_dimensions"], range(x.ndim), strict=True))
    out_labels = ""
    for j, size in enumerate(y.shape):
        k = source.get(j)
        out_labels += labels[k] if k is not None and x.shape[k] == size else next(fresh)
    return [index_map(labels, out_labels, x.shape, y.shape, ops[0], y.dtype)]


@pointwise("reshape")
def _reshape(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    op, x_shape = ops[0], tuple(x.shape)
    if eqn.params.get("dimensions") is not None:  # a transpose first
        x_shape = tuple(x.shape[k] for k in eqn.params["dimensions"])
        labels = _label(x.ndim)
        permuted = "".join(labels[k] for k in eqn.params["dimensions"])
        op = index_map(labels, permuted, x.shape, x_shape, op, y.dtype)
    if [s for s in x_shape if s != 1] == [s for s in y.shape if s != 1]:
        # Only unit axes come or go: label the others alike.
        labels, out_labels, fresh = _label(len(x_shape)), "", iter(LETTERS[len(x_shape) :])
        kept = iter(c for c, s in zip(labels, x_shape, strict=True) if s != 1)
        for size in y.shape:
            out_labels += next(fresh) if size == 1 else next(kept)
        return [index_map(labels, out_labels, x_shape, y.shape, op, y.dtype)]
    return [compose(maps.Reshape(tuple(y.shape), x_shape, y.dtype.name), op)]


@pointwise("reduce_max", "reduce_min")
def _reduce_chooser(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    labels = _label(x.ndim)
    axes = tuple(sorted(eqn.params["axes"]))
    chosen = (x == jnp.expand_dims(y, axes)).astype(y.dtype)
    core = chosen / jnp.sum(chosen, axis=axes, keepdims=True)  # JAX splits evenly among ties
    spec = (labels, labels, _without(labels, axes))
    return [compose(contraction(core, spec, x.shape, y.shape, y.dtype), ops[0])]


@pointwise("cumsum")
def _cumsum(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    axis, n = eqn.params["axis"], x.shape[eqn.params["axis"]]
    labels = _label(x.ndim)
    twin = LETTERS[x.ndim]
    core = jnp.tril(jnp.ones((n, n), y.dtype))  # core[j, i] = [i <= j]
    if eqn.params.get("reverse"):
        core = core.T
    out_labels = labels.replace(labels[axis], twin)
    spec = (labels, twin + labels[axis], out_labels)
    return [compose(contraction(core, spec, x.shape, y.shape, y.dtype), ops[0])]


# -------------------------------------------------------------------- linear maps: indexing


@pointwise("convert_element_type")
def _convert(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    if y.dtype == x.dtype:
        return [ops[0]]
    shape = tuple(y.shape)
    return [compose(maps.ChangeType(shape, shape, y.dtype.name, x.dtype.name), ops[0])]


@pointwise("slice")
def _slice(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    strides = eqn.params["strides"] or (1,) * x.ndim
    config = maps.slice_config(
        x.shape, eqn.params["start_indices"], eqn.params["limit_indices"], strides
    )
    return [compose(maps.Restrict(tuple(y.shape), tuple(x.shape), y.dtype.name, config), ops[0])]


@pointwise("rev")
def _rev(ctx, eqn, ins, ops, outs):
    y = outs[0]
    shape = tuple(y.shape)
    flip = maps.Reverse(shape, shape, y.dtype.name, tuple(eqn.params["dimensions"]))
    return [compose(flip, ops[0])]


@pointwise("pad")
def _pad(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    config = tuple(tuple(c) for c in eqn.params["padding_config"])
    if any(lo < 0 or hi < 0 for lo, hi, _ in config):
        raise NoRule(f"with negative edges {config}")
    embed = maps.Embed(tuple(y.shape), tuple(x.shape), y.dtype.name, config)
    terms = [None if ops[0] is None else compose(embed, ops[0])]
    if ops[1] is not None:  # the padding value fills every padded entry
        mask = jnp.ones_like(y) - embed.mv(jnp.ones_like(x))
        terms.append(times(mask, broadcast(ops[1], y.shape)))
    return [total(terms)]


@pointwise("concatenate")
def _concatenate(ctx, eqn, ins, ops, outs):
    y = outs[0]
    axis = eqn.params["dimension"]
    terms, offset = [], 0
    for x, op in zip(ins, ops, strict=True):
        width = x.shape[axis]
        if op is not None:
            config = tuple(
                (offset, y.shape[k] - offset - width, 0) if k == axis else (0, 0, 0)
                for k in range(y.ndim)
            )
            embed = maps.Embed(tuple(y.shape), tuple(x.shape), y.dtype.name, config)
            terms.append(compose(embed, op))
        offset += width
    return [total(terms)]


@pointwise("dynamic_slice")
def _dynamic_slice(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    start = tuple(jnp.asarray(i) for i in ins[1:])
    return [compose(maps.DynamicSlice(tuple(y.shape), tuple(x.shape), y.dtype.name, start), ops[0])]


RELEVANT["dynamic_slice"] = lambda eqn: [0]


@pointwise("gather")
def _gather(ctx, eqn, ins, ops, outs):
    x, indices = ins
    y = outs[0]
    params = {
        key: eqn.params[key]
        for key in ("dimension_numbers", "slice_sizes", "indices_are_sorted", "unique_indices")
    }
    params |= {"mode": eqn.params["mode"], "fill_value": eqn.params["fill_value"]}
    take = maps.Gather(tuple(y.shape), tuple(x.shape), y.dtype.name, indices, maps.Static(params))
    return [compose(take, ops[0])]


RELEVANT["gather"] = lambda eqn: [0]


# ---------------------------------------------------------------- linear algebra


@pointwise("triangular_solve")
def _triangular_solve(ctx, eqn, ins, ops, outs):
    a, b = ins
    y = outs[0]
    if ops[0] is not None:
        raise NoRule("with a matrix that depends on the argument (jnp.linalg.solve has one)")
    params = maps.Static(tuple(sorted(eqn.params.items())))
    solve = maps.TriangularSolve(tuple(y.shape), tuple(b.shape), y.dtype.name, a, params)
    return [compose(solve, ops[1])]


def _linear_solve_parts(eqn: Any) -> tuple[list[int], ...]:
    lengths = eqn.params["const_lengths"]
    bounds = np.cumsum([0, lengths.matvec, lengths.vecmat, lengths.solve, lengths.transpose_solve])
    return tuple(list(range(lo, hi)) for lo, hi in itertools.pairwise(bounds))


def _linear_solve_relevant(eqn: Any) -> list[int]:
    matvec, _, _, _ = _linear_solve_parts(eqn)
    return matvec + list(range(sum(eqn.params["const_lengths"]), len(eqn.invars)))


RELEVANT["custom_linear_solve"] = _linear_solve_relevant


@pointwise("custom_linear_solve")
def _custom_linear_solve(ctx, eqn, ins, ops, outs):
    # x = A^{-1} b with A given by its matvec: dx = A^{-1} (db - (dA) x), as JAX's rule.
    matvec_at, _, solve_at, transpose_at = _linear_solve_parts(eqn)
    programs = eqn.params["jaxprs"]
    b_start = sum(eqn.params["const_lengths"])
    if len(ins) - b_start != 1 or len(outs) != 1:
        raise NoRule("with a pytree right-hand side")
    x = outs[0]
    # The transposed solver usually reuses the solver's factorization: store it once.
    shared = [eqn.invars[k] for k in solve_at] == [eqn.invars[k] for k in transpose_at]
    solve = maps.LinearSolve(
        tuple(x.shape), tuple(ins[b_start].shape), x.dtype.name,
        tuple(ins[k] for k in solve_at),
        () if shared else tuple(ins[k] for k in transpose_at),
        maps.Static((programs.solve, programs.transpose_solve, shared)),
    )  # fmt: skip
    rhs = [ops[b_start]]
    if any(ops[k] is not None for k in matvec_at):
        matvec = programs.matvec
        _, (by_matrix,) = ctx.inside("custom_linear_solve matvec", eqn).run(
            matvec.jaxpr,
            matvec.consts,
            [ins[k] for k in matvec_at] + [x],
            [ops[k] for k in matvec_at] + [None],
        )
        if by_matrix is not None:
            rhs.append(by_matrix.scaled(jnp.asarray(-1, x.dtype)))
    inner = total(rhs)
    return [None if inner is None else compose(solve, inner)]


# ------------------------------------------------------------------- calls and custom rules


def _call(param: str) -> Rule:
    def call(ctx: Context, eqn: Any, ins: list[Array], ops: list[Operator]) -> Any:
        program = eqn.params[param]
        jaxpr, consts = (
            (program.jaxpr, program.consts) if hasattr(program, "consts") else (program, ())
        )
        label = eqn.params.get("name", eqn.primitive.name)
        return ctx.inside(f"{eqn.primitive.name}[{label}]", eqn).run(jaxpr, consts, ins, ops)

    return call


for _name in ("jit", "pjit"):
    RULES[_name] = _call("jaxpr")
for _name in ("closed_call", "core_call", "custom_vjp_call"):
    RULES[_name] = _call("call_jaxpr")
RULES["custom_vjp_call_jaxpr"] = _call("fun_jaxpr")
for _name in ("remat", "remat2", "checkpoint"):
    RULES[_name] = _call("jaxpr")


@rule("custom_jvp_call")
def _custom_jvp_call(ctx: Context, eqn: Any, ins: list[Array], ops: list[Operator]) -> Any:
    """Interpret the function's JVP rule, its tangents carrying the inputs' Jacobians: the
    hand-written derivative (softmax's ``y (dx - <y, dx>)``, relu's ``dx [x > 0]``) is what
    the transform differentiates, as ``jax.jacfwd`` does."""
    num_consts = eqn.params["num_consts"]
    if any(op is not None for op in ops[:num_consts]):
        return _call("call_jaxpr")(ctx, eqn, ins, ops)  # closed-over values that vary
    primals, tangent_ops = ins[num_consts:], ops[num_consts:]
    # Without symbolic zeros JAX hands the rule instantiated zero tangents: do the same.
    symbolic = eqn.params.get("symbolic_zeros", False)
    zeros = [op is None and symbolic for op in tangent_ops]
    # The rule's program for these symbolic zeros (the interface custom_jvp_call's own
    # evaluation uses): inputs (primals, nonzero tangents), outputs (primals, nonzero tangents).
    jvp_jaxpr, jvp_consts, out_zeros = eqn.params["jvp_jaxpr_fun"].call_wrapped(*zeros)
    nonzero = [(p, op) for p, op, z in zip(primals, tangent_ops, zeros, strict=True) if not z]
    values = list(primals) + [jnp.zeros_like(p) for p, _ in nonzero]
    operators = [None] * len(primals) + [op for _, op in nonzero]
    label = eqn.params.get("name", "custom_jvp")
    results, result_ops = ctx.inside(f"custom_jvp_call[{label}]", eqn).run(
        jvp_jaxpr, jvp_consts, values, operators
    )
    n_out = len(out_zeros)
    outs = results[:n_out]
    tangent_ops_out = iter(result_ops[n_out:])
    out_ops = [None if z else next(tangent_ops_out) for z in out_zeros]
    return outs, out_ops


def fallback(ctx: Context, eqn: Any, ins: list[Array], ops: list[Operator]) -> Any:
    """The opt-in autodiff fallback: the primitive's local Jacobian, one operand at a time,
    as a lazy ``matcalc_jax.transform.maps.Linearized`` map."""
    outs = bind(eqn, ins)
    where = ctx.where(eqn)
    primitive = maps.Static((eqn.primitive, dict(eqn.params)))
    out_ops = []
    for j, y in enumerate(outs):
        if not jnp.issubdtype(y.dtype, jnp.floating):
            out_ops.append(None)
            continue
        terms = []
        for k, op in enumerate(ops):
            if op is not None:
                shapes = (tuple(y.shape), tuple(ins[k].shape), y.dtype.name)
                local = maps.Linearized(*shapes, tuple(ins), primitive, k, j, where)
                terms.append(compose(local, op))
        out_ops.append(total(terms))
    return outs, out_ops


def supported() -> tuple[str, ...]:
    """The primitives with a rule, sorted."""
    return tuple(sorted(RULES))
