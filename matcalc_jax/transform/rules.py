"""The core of the rule table, in the seed page's terms (the other families of rules live
beside it: ``indexing``, ``cumulative``, ``control_flow``, ``convolution``,
``linear_algebra``, ``complex_values``; all register in ``registry``).

============================  ==============================================================
primitive                     Jacobian of the output (J_a: the operand's Jacobian)
============================  ==============================================================
elementwise ``f``             diag(f'(x)) J_x                          (the seed's rule)
``add``, ``sub``              J_a +- J_b                                   (sum rule)
``mul``, ``div``              diag(b) J_a + diag(a) J_b, diag(1/b) J_a - diag(a/b^2) J_b
                                                                       (product rule)
``max``, ``min``, ``pow``,    diag(df/da) J_a + diag(df/db) J_b
``atan2``
``select_n``, ``clamp``       row i from the Jacobian of the operand chosen there
                              (``select``: a NaN not chosen never reaches it)
``dot_general``               (x -> einsum(x, B)) J_a + (y -> einsum(A, y)) J_b
                              (d(Ax)/dx = A, and the product rule)
``reduce_sum``, ``transpose``,  a ``Contraction`` without core (sum, permute,
``broadcast_in_dim``,         broadcast axes)
``squeeze``, unit ``reshape``
``reduce_max``, ``reduce_min``  the mean over the maximizers, as JAX differentiates it
``cumsum``                    a triangular core
``reshape``, ``slice``,       index maps that never materialize (``index_maps``)
``pad``, ``concatenate``, ``rev``, ``gather``,
``dynamic_slice``,
``convert_element_type``
``custom_linear_solve``       A^{-1} (J_b - d(A x)/dA J_A): JAX's own solve rule
``jit``, ``closed_call``,     recurse into the inner program
``remat``
``custom_jvp_call``           interpret the function's own JVP rule (jax.nn's and
                              matcalc_jax.nn's closed forms are kept)
``custom_vjp_call``           the transpose of the backward rule, interpreted in its
                              cotangent (as jax.grad sees the function)
``stop_gradient``             0
============================  ==============================================================
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.extend import core as jex_core

from matcalc_jax.operators.base import compose
from matcalc_jax.operators.contraction import LETTERS, contraction
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.identity import Identity
from matcalc_jax.operators.index_maps import (
    ChangeType,
    DynamicSlice,
    Embed,
    Gather,
    Reshape,
    Restrict,
    Reverse,
    Rounding,
    Static,
    slice_config,
)
from matcalc_jax.operators.programs import (
    JointPullback,
    Linearized,
    LinearizedByRows,
    Pullback,
    backward_cotangents,
)
from matcalc_jax.operators.selection import select
from matcalc_jax.operators.solves import LinearSolve
from matcalc_jax.transform import complex_values, elementwise
from matcalc_jax.transform.interpreter import (
    Context,
    NoRule,
    NotLinear,
    Operator,
    Rule,
    bind,
    nonzero,
)
from matcalc_jax.transform.registry import (
    COMPLEX,
    LINEAR,
    RELEVANT,
    RULES,
    broadcast,
    index_map,
    numerator,
    one_factor,
    pointwise,
    rule,
    times,
    total,
)
from matcalc_jax.transform.zeros import facts


def _label(ndim: int, start: int = 0) -> str:
    return LETTERS[start : start + ndim]


# ---------------------------------------------------------------------- elementwise maps


@pointwise(*elementwise.UNARY)
def _unary(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    if eqn.primitive.name == "abs" and jnp.iscomplexobj(x):
        return [complex_values.complex_abs(x, y, ops[0])]
    derivative = elementwise.UNARY[eqn.primitive.name](x, y)
    return [times(derivative.astype(y.dtype), ops[0])]


# Not linear in a backward rule (a linear context): the derivative is 0, the value is not.
@pointwise(*elementwise.PIECEWISE_CONSTANT, "stop_gradient")
def _zero_derivative(ctx, eqn, ins, ops, outs):
    return [None]


@pointwise("integer_pow", complex=True)
def _integer_pow(ctx, eqn, ins, ops, outs):
    derivative = elementwise.integer_pow(ins[0], outs[0], power=eqn.params["y"])
    return [times(derivative.astype(outs[0].dtype), ops[0])]


@pointwise("neg", complex=True, linear=True)
def _neg(ctx, eqn, ins, ops, outs):
    return [ops[0].scaled(jnp.asarray(-1, outs[0].dtype))]


# ``name``: jax.ad_checkpoint.checkpoint_name, a label for remat's policies.
@pointwise("copy", "copy_p", "optimization_barrier", "device_put", "name", linear=True)
def _same(ctx, eqn, ins, ops, outs):
    return list(ops)


@pointwise("reduce_precision")  # a quantizer: not linear in a backward rule
def _reduce_precision(ctx, eqn, ins, ops, outs):
    shape, bits = tuple(outs[0].shape), (eqn.params["exponent_bits"], eqn.params["mantissa_bits"])
    return [compose(Rounding(shape, shape, outs[0].dtype.name, bits), ops[0])]


# Holomorphic maps keep their derivative formula on complex values; sign's is 0 in JAX.
COMPLEX.update(elementwise.HOLOMORPHIC, ("abs", "sign", "stop_gradient", "pow"))
COMPLEX.update(("copy", "copy_p", "optimization_barrier", "device_put", "name"))


@pointwise("add", "add_any", complex=True, linear=True)
def _add(ctx, eqn, ins, ops, outs):
    shape = outs[0].shape
    return [total([broadcast(ops[0], shape), broadcast(ops[1], shape)])]


@pointwise("sub", complex=True, linear=True)
def _sub(ctx, eqn, ins, ops, outs):
    shape = outs[0].shape
    minus = broadcast(ops[1], shape)
    minus = None if minus is None else minus.scaled(jnp.asarray(-1, outs[0].dtype))
    return [total([broadcast(ops[0], shape), minus])]


@pointwise("mul", complex=True, linear=one_factor)
def _mul(ctx, eqn, ins, ops, outs):
    a, b = (ctx.scalar_or_value(var, value) for var, value in zip(eqn.invars, ins, strict=True))
    shape = outs[0].shape
    return [total([times(b, broadcast(ops[0], shape)), times(a, broadcast(ops[1], shape))])]


@pointwise("div", complex=True, linear=numerator)
def _div(ctx, eqn, ins, ops, outs):
    # d(a / b)/db = -a b^-2, written as JAX's jvp writes it: b^-2 overflows to inf where
    # b is tiny (1e-30 in float32) as JAX's does, where -(y / b) stayed finite eagerly and
    # overflowed under jit alone (XLA rewrites (a / b) / b as a / (b b))
    a, b = ins
    shape = outs[0].shape
    partial_b = -a * lax.integer_pow(b, -2)
    return [
        total([times(1 / b, broadcast(ops[0], shape)), times(partial_b, broadcast(ops[1], shape))])
    ]


@pointwise("polynomial", complex=True, linear=lambda carried: not carried[0])
def _polynomial(ctx, eqn, ins, ops, outs):
    """JAX 0.12's ``lax.polynomial(x, (c_0, ..., c_N))`` = sum_k c_k x^k, by Horner's
    scheme, its coefficients broadcast with x. dy/dx is the polynomial of the k c_k; dy/dc_k
    is that of the k-th unit coefficients, x^k evaluated by the same scheme (NaN at an
    infinite x where a 0 coefficient multiplies it, as JAX's jvp evaluates it)."""
    x, *coefficients = ins
    y, unroll = outs[0], eqn.params.get("unroll")
    terms = []
    if ops[0] is not None:
        scaled = [jnp.asarray(k, c.dtype) * c for k, c in enumerate(coefficients[1:], 1)]
        terms.append(times(lax.polynomial(x, scaled, unroll=unroll), broadcast(ops[0], y.shape)))
    for k, op in enumerate(ops[1:]):
        if op is not None:
            units = [jnp.zeros_like(x)] * len(coefficients)
            units[k] = jnp.ones_like(x)
            power = jnp.broadcast_to(lax.polynomial(x, units, unroll=unroll), y.shape)
            terms.append(times(power, broadcast(op, y.shape)))
    return [total(terms)]


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


@pointwise("regularized_incomplete_beta")
def _betainc(ctx, eqn, ins, ops, outs):
    # jax.scipy.special.betainc(a, b, x); JAX raises for a derivative in a or b
    if ops[0] is not None or ops[1] is not None:
        raise NoRule("in a or b (JAX defines its derivative in x only)")
    y = outs[0]
    return [times(elementwise.betainc_x(*ins).astype(y.dtype), broadcast(ops[2], y.shape))]


@pointwise("polygamma")
def _polygamma(ctx, eqn, ins, ops, outs):
    # jax.scipy.special.polygamma(m, x): d/dx psi^(m)(x) = psi^(m+1)(x); JAX raises for a
    # derivative in m (an integer order)
    if ops[0] is not None:
        raise NoRule("in m, the order (JAX defines its derivative in x only)")
    m, x = ins
    y = outs[0]
    partial = lax.polygamma(m + jnp.ones((), m.dtype), x).astype(y.dtype)
    return [times(partial, broadcast(ops[1], y.shape))]


@pointwise("clamp")
def _clamp(ctx, eqn, ins, ops, outs):
    # As jax.lax differentiates clamp: each operand's tangent where it is the one chosen,
    # selected (a NaN tangent of an operand not chosen stays out).
    low, x, high = ins
    y = outs[0]
    chosen = (
        (low > x) & (low < high),
        (x > low) & (x < high),
        high < x,
    )
    terms = [
        select(jnp.broadcast_to(mask, y.shape), (None, broadcast(op, y.shape)))
        for mask, op in zip(chosen, ops, strict=True)
        if op is not None
    ]
    return [total(terms)]


@pointwise("select_n", complex=True, linear=True)
def _select_n(ctx, eqn, ins, ops, outs):
    y = outs[0]
    return [select(ins[0], [broadcast(op, y.shape) for op in ops[1:]])]


RELEVANT["select_n"] = lambda eqn: list(range(1, len(eqn.invars)))


# ------------------------------------------------------------- linear maps: contractions


@pointwise("dot_general", complex=True, linear=one_factor)
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


@pointwise("transpose", complex=True, linear=True)
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


@pointwise(*_REMOVED_AXES, complex=True, linear=True)
def _remove_axes(ctx, eqn, ins, ops, outs):
    labels = _label(ins[0].ndim)
    kept = _without(labels, eqn.params[_REMOVED_AXES[eqn.primitive.name]])
    return [index_map(labels, kept, ins[0].shape, outs[0].shape, ops[0], outs[0].dtype)]


@pointwise("broadcast_in_dim", complex=True, linear=True)
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


@pointwise("reshape", complex=True, linear=True)
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
    return [compose(Reshape(tuple(y.shape), x_shape, y.dtype.name), op)]


@pointwise("reduce_max", "reduce_min")
def _reduce_chooser(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    labels = _label(x.ndim)
    axes = tuple(sorted(eqn.params["axes"]))
    chosen = (x == jnp.expand_dims(y, axes)).astype(y.dtype)
    count = jnp.sum(chosen, axis=axes, keepdims=True)  # JAX splits evenly among ties
    # A NaN maximum chooses nothing: 0 / 0, NaN as JAX's jvp has it. Spelt as a select,
    # since XLA rewrites a one-hot quotient as select(chosen, 1 / count, 0) under jit.
    core = jnp.where(count > 0, chosen / count, jnp.nan).astype(y.dtype)
    spec = (labels, labels, _without(labels, axes))
    return [compose(contraction(core, spec, x.shape, y.shape, y.dtype), ops[0])]


# -------------------------------------------------------------------- linear maps: indexing


@pointwise("convert_element_type", complex=True, linear=True)
def _convert(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    if y.dtype == x.dtype:
        return [ops[0]]
    shape = tuple(y.shape)
    return [compose(ChangeType(shape, shape, y.dtype.name, x.dtype.name), ops[0])]


@pointwise("slice", complex=True, linear=True)
def _slice(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    strides = eqn.params["strides"] or (1,) * x.ndim
    config = slice_config(
        x.shape, eqn.params["start_indices"], eqn.params["limit_indices"], strides
    )
    return [compose(Restrict(tuple(y.shape), tuple(x.shape), y.dtype.name, config), ops[0])]


@pointwise("rev", complex=True, linear=True)
def _rev(ctx, eqn, ins, ops, outs):
    y = outs[0]
    shape = tuple(y.shape)
    flip = Reverse(shape, shape, y.dtype.name, tuple(eqn.params["dimensions"]))
    return [compose(flip, ops[0])]


@pointwise("pad", complex=True, linear=True)
def _pad(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    config = tuple(tuple(int(e) for e in c) for c in eqn.params["padding_config"])
    # Negative edges crop: pad by the positive edges (an Embed), then slice (a Restrict).
    grown = tuple((max(lo, 0), max(hi, 0), interior) for lo, hi, interior in config)
    middle = tuple(
        lo + hi + size + max(size - 1, 0) * interior
        for size, (lo, hi, interior) in zip(x.shape, grown, strict=True)
    )
    embed = Embed(middle, tuple(x.shape), y.dtype.name, grown)
    if middle != tuple(y.shape):
        crop = tuple((max(-lo, 0), max(-hi, 0), 0) for lo, hi, _ in config)
        embed = compose(Restrict(tuple(y.shape), middle, y.dtype.name, crop), embed)
    terms = [None if ops[0] is None else compose(embed, ops[0])]
    if ops[1] is not None:  # the padding value fills every padded entry
        mask = jnp.ones_like(y) - lax.pad(jnp.ones_like(x), jnp.zeros((), y.dtype), config)
        terms.append(times(mask, broadcast(ops[1], y.shape)))
    return [total(terms)]


@pointwise("concatenate", complex=True, linear=True)
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
            embed = Embed(tuple(y.shape), tuple(x.shape), y.dtype.name, config)
            terms.append(compose(embed, op))
        offset += width
    return [total(terms)]


@pointwise("dynamic_slice", complex=True, linear=True)
def _dynamic_slice(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    start = tuple(jnp.asarray(i) for i in ins[1:])
    return [compose(DynamicSlice(tuple(y.shape), tuple(x.shape), y.dtype.name, start), ops[0])]


RELEVANT["dynamic_slice"] = lambda eqn: [0]


@pointwise("gather", complex=True, linear=True)
def _gather(ctx, eqn, ins, ops, outs):
    x, indices = ins
    y = outs[0]
    params = {
        key: eqn.params[key]
        for key in ("dimension_numbers", "slice_sizes", "indices_are_sorted", "unique_indices")
    }
    # Out-of-bounds rows of a "fill" gather hold the fill value, a constant: their
    # tangent is 0, as in JAX's gather rule (which gathers tangents with fill_value=0).
    # Under "promise_in_bounds" (x[idx]'s default) XLA clamps an out-of-bounds index, and
    # the value is computed so; JAX's transpose scatters with the promise and drops it
    # (jax.grad of x[7] on 4 entries is 0, jax.jacfwd's row e_3). "clip" clamps both ways.
    mode = eqn.params["mode"]
    if mode == lax.GatherScatterMode.PROMISE_IN_BOUNDS:
        mode = lax.GatherScatterMode.CLIP
    params |= {"mode": mode, "fill_value": 0}
    take = Gather(tuple(y.shape), tuple(x.shape), y.dtype.name, indices, Static(params))
    return [compose(take, ops[0])]


RELEVANT["gather"] = lambda eqn: [0]


# ---------------------------------------------------------------- linear algebra


def _linear_solve_parts(eqn: Any) -> tuple[list[int], ...]:
    lengths = eqn.params["const_lengths"]
    bounds = np.cumsum([0, lengths.matvec, lengths.vecmat, lengths.solve, lengths.transpose_solve])
    return tuple(list(range(lo, hi)) for lo, hi in itertools.pairwise(bounds))


def _linear_solve_relevant(eqn: Any) -> list[int]:
    matvec, _, _, _ = _linear_solve_parts(eqn)
    return matvec + list(range(sum(eqn.params["const_lengths"]), len(eqn.invars)))


RELEVANT["custom_linear_solve"] = _linear_solve_relevant


@pointwise("custom_linear_solve", linear=True)
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
    solve = LinearSolve(
        tuple(x.shape), tuple(ins[b_start].shape), x.dtype.name,
        tuple(ins[k] for k in solve_at),
        () if shared else tuple(ins[k] for k in transpose_at),
        Static((programs.solve, programs.transpose_solve, shared)),
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


# A call is linear when its inner program is: the interpreter checks that equation by equation.
rule("jit", "pjit", "remat", "remat2", "checkpoint", complex=True, linear=True)(_call("jaxpr"))
# ``eval_jaxpr``: JAX 0.11 and later's closed_call, the same parameter.
rule("closed_call", "core_call", "eval_jaxpr", complex=True, linear=True)(_call("call_jaxpr"))


@rule("custom_jvp_call", complex=True)
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


def _subfuns(eqn: Any) -> tuple[Any, dict[str, Any]]:
    """A call primitive's functions and parameters as ``bind`` takes them."""
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        return params
    params = dict(params)
    return params.pop("subfuns"), params


def _is_symbolic_zero(value: Any) -> bool:
    return type(value).__name__ in ("Zero", "SymbolicZero") and not hasattr(value, "shape")


@rule("custom_vjp_call", complex=True)
def _custom_vjp_call(ctx: Context, eqn: Any, ins: list[Array], ops: list[Operator]) -> Any:
    """As ``jax.grad`` sees a ``custom_vjp`` function: its local Jacobian is the transpose of
    the backward rule. ``fwd`` runs at the inputs for the outputs and the residuals;
    ``bwd``, with the residuals held constant, is linear in the cotangent, and its program
    is interpreted by the transform itself (B: output cotangent -> input cotangent, in a
    context that checks every equation is linear), so the Jacobian of output j in input k
    is ``B_kj^T`` and ``J.vm`` is ``bwd``, as ``jax.vjp``. A ``bwd`` that is not linear
    (``clip_gradient``) gives a ``Pullback``: ``vm`` calls ``bwd`` and the matrix is
    ``jax.jacrev``'s. (``jax.jvp`` refuses such functions; ``J.mv`` applies the matrix.)"""
    (_, fwd, bwd), params = _subfuns(eqn)
    # fwd takes (value, has a tangent) pairs; a tangent on a closed-over value is JAX's
    # own error (CustomVJPException), raised here as by jax.grad.
    flagged = [item for x, op in zip(ins, ops, strict=True) for item in (x, op is not None)]
    res_and_outs = fwd.call_wrapped(*flagged)
    _, res_tree, input_fwds = params["out_trees"]()  # known once fwd has run
    fresh = res_tree.num_leaves - sum(f is not None for f in input_fwds)
    computed, outs = iter(res_and_outs[:fresh]), list(res_and_outs[fresh:])
    # jnp arrays: a constant of the program may come as a NumPy array, which bwd could not
    # index with a traced value (odeint's bwd does)
    res = [jnp.asarray(next(computed) if f is None else ins[f]) for f in input_fwds]
    wanted = [k for k, op in enumerate(ops) if op is not None]

    def pullback(*cotangents: Array) -> list[Array]:
        cts_in = backward_cotangents(bwd, *res, *cotangents)
        return [
            jnp.zeros(ins[k].shape, ins[k].dtype) if _is_symbolic_zero(cts_in[k]) else cts_in[k]
            for k in wanted
        ]

    cotangents = [jnp.zeros(y.shape, y.dtype) for y in outs]
    program = jax.make_jaxpr(pullback)(*cotangents)
    label = eqn.params.get("name", "custom_vjp")
    complex_cotangent = any(jnp.iscomplexobj(y) for y in outs)
    inner = dataclasses.replace(
        ctx.inside(f"custom_vjp_call[{label}] bwd", eqn),
        linear=LINEAR,
        complex_cotangent=complex_cotangent,
    )
    backward = Static(
        (bwd, [(y.shape, y.dtype) for y in outs], [(jnp.shape(x), jnp.result_type(x)) for x in ins])
    )
    differentiable = [j for j, y in enumerate(outs) if jnp.issubdtype(y.dtype, jnp.inexact)]

    # bwd(g) = B g + bwd(0), linear when bwd(0) = 0: read when concrete; when traced (under
    # jit, in a loop's body), proven 0 from the program, or up to NaN (0 log(r) at r = 0),
    # which JAX's rows then carry: B^T is followed by diag(1, or NaN where bwd(0) is)
    proven = facts(program, [True] * len(cotangents))
    maybe_nan: dict[int, Array] = {}

    def transposed(seeds: list[Operator]) -> list[Operator]:  # the B_k^T, or NotLinear
        at_zero, pulled = inner.run(program.jaxpr, program.consts, cotangents, seeds)
        for i, (value, fact) in enumerate(zip(at_zero, proven, strict=True)):
            if not isinstance(value, jax.core.Tracer):
                if nonzero(value):  # NaN included: JAX's rows are NaN there
                    raise NotLinear(f"custom_vjp_call[{label}] bwd: not 0 at a 0 cotangent")
            elif not fact.zero:
                raise NotLinear(f"custom_vjp_call[{label}] bwd: not proven 0 at a 0 cotangent")
            elif not fact.exact:
                maybe_nan[i] = value
        return [None if b is None else b.transpose() for b in pulled]

    try:  # one output's cotangent at a time: the structured B_kj^T
        locals_ = {
            j: transposed([_identity_of(y) if i == j else None for i, y in enumerate(outs)])
            for j in differentiable
        }
        if len(differentiable) > 1:  # linear in each output's cotangent, and in all at once?
            transposed(_pieces_of(outs, differentiable))
    except NotLinear:
        if len(differentiable) > 1:
            return outs, _joint_pullback(outs, differentiable, ins, wanted, ops, res, backward)
        (j,) = differentiable
        shape, dtype = tuple(outs[j].shape), outs[j].dtype.name
        locals_ = {
            j: [Pullback(shape, ins[k].shape, dtype, tuple(res), backward, j, k) for k in wanted]
        }
    else:
        for i, value in maybe_nan.items():
            nan_where_not_0 = Diagonal(jnp.where(value == 0, jnp.ones((), value.dtype), jnp.nan))
            for local in locals_.values():
                if local[i] is not None:
                    local[i] = compose(local[i], nan_where_not_0)
    out_ops = []
    for j, y in enumerate(outs):
        terms = [
            compose(_as_dtype(local, y.dtype), ops[k])
            for k, local in zip(wanted, locals_.get(j, [None] * len(wanted)), strict=True)
            if local is not None
        ]
        out_ops.append(total(terms))
    return outs, out_ops


def _identity_of(y: Array) -> Operator:
    return Identity(tuple(y.shape), y.dtype.name)


def _as_dtype(op: Operator, dtype: Any) -> Operator:
    """``op`` followed by a cast of its values to ``dtype`` (none when it has that dtype)."""
    dtype = jnp.dtype(dtype)
    if op.dtype == dtype:
        return op
    shape = tuple(op.out_shape)
    return compose(ChangeType(shape, shape, dtype.name, jnp.dtype(op.dtype).name), op)


def _flat_layout(arrays: list[Array], chosen: list[int]) -> tuple[Any, list[tuple[int, int]]]:
    """The dtype of ``arrays[chosen]`` ravelled and stacked in one vector, and each one's
    (offset, size) in it."""
    dtype = jnp.result_type(*(arrays[j].dtype for j in chosen))
    offsets = np.cumsum([0] + [arrays[j].size for j in chosen])
    return dtype, [(int(offsets[i]), arrays[j].size) for i, j in enumerate(chosen)]


def _pieces_of(outs: list[Array], chosen: list[int], dtype: Any = None) -> list[Operator]:
    """Per output, the map from all ``chosen`` outputs ravelled and stacked in one vector
    of ``dtype`` (theirs, by default) to that one (None for the others): seeds in which
    every output's cotangent varies at once."""
    common, places = _flat_layout(outs, chosen)
    dtype = jnp.dtype(common if dtype is None else dtype)
    total_size = sum(size for _, size in places)
    pieces: list[Operator] = [None] * len(outs)
    for j, (offset, size) in zip(chosen, places, strict=True):
        config = ((offset, total_size - offset - size, 0),)
        y = outs[j]
        piece = compose(
            Reshape(tuple(y.shape), (size,), dtype.name),
            Restrict((size,), (total_size,), dtype.name, config),
        )
        pieces[j] = _as_dtype(piece, y.dtype)
    return pieces


def _joint_pullback(
    outs: list[Array],
    differentiable: list[int],
    ins: list[Array],
    wanted: list[int],
    ops: list[Operator],
    res: list[Array],
    backward: Static,
) -> list[Operator]:
    """The outputs' Jacobians through one ``JointPullback``."""

    def joint(m: int, n: int, dtype: Any, outputs: tuple, positions: tuple) -> Operator:
        return JointPullback((m,), (n,), dtype.name, tuple(res), backward, outputs, positions)

    return _through_joint(outs, differentiable, ins, wanted, ops, joint)


def _through_joint(
    outs: list[Array],
    differentiable: list[int],
    ins: list[Array],
    wanted: list[int],
    ops: list[Operator],
    joint: Any,
) -> list[Operator]:
    """The outputs' Jacobians through one map on flat vectors, ``joint(m, n, dtype,
    outputs, positions)`` (the ``differentiable`` outputs' m entries <- the ``wanted``
    inputs' n, as tuples of their indices): the inputs' Jacobians ravelled and
    stacked, the joint map, then each output's piece of it. Every output's path goes
    through the same map, so ``vm`` hands it all the outputs' cotangents in one call."""
    dtype = jnp.result_type(
        *(outs[j].dtype for j in differentiable), *(ins[k].dtype for k in wanted)
    )
    _, places = _flat_layout(ins, wanted)
    n = sum(size for _, size in places)
    stacked = total([
        compose(
            Embed((n,), (size,), dtype.name, ((offset, n - offset - size, 0),)),
            compose(Reshape((size,), tuple(ins[k].shape), dtype.name), _as_dtype(ops[k], dtype)),
        )
        for k, (offset, size) in zip(wanted, places, strict=True)
    ])  # fmt: skip
    m = sum(outs[j].size for j in differentiable)
    through = compose(joint(m, n, dtype, tuple(differentiable), tuple(wanted)), stacked)
    pieces = _pieces_of(outs, differentiable, dtype)
    return [None if piece is None else compose(piece, through) for piece in pieces]


def _calls_custom_vjp(jaxpr: Any) -> bool:
    """Whether a ``custom_vjp`` function is called in ``jaxpr`` or a program inside it."""
    return any(
        eqn.primitive.name == "custom_vjp_call"
        or any(_calls_custom_vjp(inner) for inner in jex_core.jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns
    )


def fallback(ctx: Context, eqn: Any, ins: list[Array], ops: list[Operator]) -> Any:
    """The opt-in autodiff fallback: the primitive's local Jacobian, one operand at a time,
    as a lazy ``matcalc_jax.operators.programs.Linearized`` map."""
    outs = bind(eqn, ins)
    where = ctx.where(eqn)
    primitive = Static((eqn.primitive, dict(eqn.params)))
    operands = tuple(jnp.asarray(v) for v in ins)  # arrays, not Python scalars, as leaves
    inner = jex_core.jaxprs_in_params(eqn.params)
    if any(_calls_custom_vjp(program) for program in inner):  # jax.jvp refuses it
        differentiable = [j for j, y in enumerate(outs) if jnp.issubdtype(y.dtype, jnp.inexact)]
        wanted = [k for k, op in enumerate(ops) if op is not None]

        def joint(m: int, n: int, dtype: Any, outputs: tuple, positions: tuple) -> Operator:
            local = LinearizedByRows(
                (m,), (n,), dtype.name, operands, primitive, outputs, positions, where
            )
            ctx.fallbacks.append(local.describe())
            return local

        return outs, _through_joint(outs, differentiable, list(ins), wanted, ops, joint)
    out_ops = []
    varied = tuple(k for k, op in enumerate(ops) if op is not None)
    for j, y in enumerate(outs):
        if not jnp.issubdtype(y.dtype, jnp.inexact):
            out_ops.append(None)
            continue
        terms = []
        for k, op in enumerate(ops):
            if op is not None:
                shapes = (tuple(y.shape), tuple(ins[k].shape), y.dtype.name)
                local = Linearized(*shapes, operands, primitive, k, j, where, varied)
                ctx.fallbacks.append(local.describe())
                terms.append(compose(local, op))
        out_ops.append(total(terms))
    return outs, out_ops


def supported() -> tuple[str, ...]:
    """The primitives with a rule, sorted."""
    return tuple(sorted(RULES))
