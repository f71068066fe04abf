"""Rules for the primitives that move entries: split, stack, tile, scatters, updates of a
slice, sort and top_k. Each Jacobian is an index map that never materializes: a slice, an
embedding, a gather and its transpose (a scatter-add), or a permutation read from the
indices the primitive computed, as JAX's own rules read them.

============================  ==============================================================
primitive                     Jacobian of the output
============================  ==============================================================
``split``                     each piece: the slice it takes (``Restrict``)
``stack``, ``tile``           an embedding along the new axis; a broadcast and a reshape
``dynamic_update_slice``      the operand where not overwritten (selected) + the update
                              embedded at the clamped start
``scatter-add``               J_operand + (the transpose of the matching gather) J_updates
``scatter``                   the operand where no update lands + the updates that land
                              (of duplicates, the one JAX's scatter keeps), scattered
``scatter-max``, ``-min``     the entries that reach the extremum, sharing it equally on a
                              tie (JAX's rule); an entry no update reaches: the operand's
``scatter-mul``               diag(the product of the updates landing) J_operand + diag(the
                              operand) (the gather's transpose) J_updates, for unique indices
``sort``                      each operand's Jacobian, permuted as the keys sort
``top_k``                     the operand's entries at the returned indices
============================  ==============================================================
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from matcalc_jax.operators.base import compose
from matcalc_jax.operators.contraction import LETTERS
from matcalc_jax.operators.index_maps import (
    DynamicSlice,
    Embed,
    Gather,
    Reshape,
    Restrict,
    Static,
    TakeAlong,
    slice_config,
)
from matcalc_jax.operators.selection import select
from matcalc_jax.transform.interpreter import NoRule
from matcalc_jax.transform.registry import (
    RELEVANT,
    index_map,
    numerator,
    pointwise,
    times,
    total,
)


def _restrict(x: Array, y: Array, axis: int, start: int) -> Restrict:
    limit = [*x.shape]
    begin = [0] * x.ndim
    begin[axis], limit[axis] = start, start + y.shape[axis]
    config = slice_config(x.shape, begin, limit, (1,) * x.ndim)
    return Restrict(tuple(y.shape), tuple(x.shape), y.dtype.name, config)


@pointwise("split", complex=True, linear=True)
def _split(ctx, eqn, ins, ops, outs):
    axis, offset, out_ops = eqn.params["axis"], 0, []
    for y in outs:
        out_ops.append(compose(_restrict(ins[0], y, axis, offset), ops[0]))
        offset += y.shape[axis]
    return out_ops


@pointwise("unstack", complex=True, linear=True)
def _unstack(ctx, eqn, ins, ops, outs):
    # piece k = x[..., k, ...] along axis: the slice k:k+1, then its unit axis dropped
    x, axis, out_ops = ins[0], eqn.params["axis"], []
    for k, y in enumerate(outs):
        piece = jax.ShapeDtypeStruct((*y.shape[:axis], 1, *y.shape[axis:]), y.dtype)
        restricted = compose(_restrict(x, piece, axis, k), ops[0])
        out_ops.append(compose(Reshape(tuple(y.shape), piece.shape, y.dtype.name), restricted))
    return out_ops


def _insert_unit_axis(x: Array, axis: int, op: Any, dtype: Any) -> Any:
    """The Jacobian of ``expand_dims(x, axis)`` after ``op``."""
    labels = LETTERS[: x.ndim]
    out_labels = labels[:axis] + LETTERS[x.ndim] + labels[axis:]
    shape = (*x.shape[:axis], 1, *x.shape[axis:])
    return index_map(labels, out_labels, x.shape, shape, op, dtype)


@pointwise("stack", complex=True, linear=True)
def _stack(ctx, eqn, ins, ops, outs):
    y = outs[0]
    axis, count, terms = eqn.params["axis"], len(ins), []
    for k, (x, op) in enumerate(zip(ins, ops, strict=True)):
        if op is not None:
            expanded = _insert_unit_axis(x, axis, op, y.dtype)
            config = tuple((k, count - 1 - k, 0) if d == axis else (0, 0, 0) for d in range(y.ndim))
            embed = Embed(tuple(y.shape), expanded.out_shape, y.dtype.name, config)
            terms.append(compose(embed, expanded))
    return [total(terms)]


@pointwise("tile", complex=True, linear=True)
def _tile(ctx, eqn, ins, ops, outs):
    # tile(x, reps) = reshape(broadcast of x to (r_1, n_1, r_2, n_2, ...)).
    x, y = ins[0], outs[0]
    reps = tuple(eqn.params["reps"])
    if len(reps) != x.ndim:
        raise NoRule(f"with {len(reps)} repetitions of a {x.ndim}-d array")
    labels = LETTERS[: x.ndim]
    fresh = LETTERS[x.ndim : 2 * x.ndim]
    spread = "".join(r + a for r, a in zip(fresh, labels, strict=True))
    shape = tuple(s for r, n in zip(reps, x.shape, strict=True) for s in (r, n))
    broadcast = index_map(labels, spread, x.shape, shape, ops[0], y.dtype)
    return [compose(Reshape(tuple(y.shape), shape, y.dtype.name), broadcast)]


@pointwise("dynamic_update_slice", complex=True, linear=True)
def _dynamic_update_slice(ctx, eqn, ins, ops, outs):
    _, update, *start = ins
    y = outs[0]
    start = tuple(jnp.asarray(i) for i in start)
    window = DynamicSlice(tuple(update.shape), tuple(y.shape), y.dtype.name, start)
    kept = lax.dynamic_update_slice(
        jnp.ones(y.shape, bool),
        jnp.zeros(update.shape, bool),
        start,
        allow_negative_indices=False,
    )  # operand entries the update does not overwrite; the start as the primitive clamps it
    terms = [None if ops[0] is None else select(kept, (None, ops[0]))]
    if ops[1] is not None:
        terms.append(compose(window.transpose(), ops[1]))
    return [total(terms)]


RELEVANT["dynamic_update_slice"] = lambda eqn: [0, 1]


def _gather_for(eqn: Any, operand: Array, indices: Array, updates: Array) -> Gather:
    """The gather whose transpose is this scatter's map of its updates (JAX's rule)."""
    numbers = eqn.params["dimension_numbers"]
    gather_numbers = lax.GatherDimensionNumbers(
        offset_dims=numbers.update_window_dims,
        collapsed_slice_dims=numbers.inserted_window_dims,
        start_index_map=numbers.scatter_dims_to_operand_dims,
        operand_batching_dims=numbers.operand_batching_dims,
        start_indices_batching_dims=numbers.scatter_indices_batching_dims,
    )
    window = iter(numbers.update_window_dims)
    unit = set(numbers.inserted_window_dims) | set(numbers.operand_batching_dims)
    slice_sizes = tuple(
        1 if d in unit else updates.shape[next(window)] for d in range(operand.ndim)
    )
    # A scatter drops an out-of-bounds update under every mode but "clip" (XLA's scatter
    # skips it), so its gather reads 0 there: "fill_or_drop", not the promise, under which
    # a gather clamps (JAX's transpose does, and pulls a cotangent back to the dropped
    # update).
    mode = eqn.params["mode"]
    if mode == lax.GatherScatterMode.PROMISE_IN_BOUNDS:
        mode = lax.GatherScatterMode.FILL_OR_DROP
    params = {
        "dimension_numbers": gather_numbers,
        "slice_sizes": slice_sizes,
        "indices_are_sorted": eqn.params["indices_are_sorted"],
        "unique_indices": eqn.params["unique_indices"],
        "mode": mode,
        "fill_value": 0,
    }
    return Gather(
        tuple(updates.shape), tuple(operand.shape), updates.dtype.name, indices, Static(params)
    )


def _options(eqn: Any) -> dict[str, Any]:
    """The scatter's own dimension numbers and options, to scatter other values as it does."""
    names = ("dimension_numbers", "indices_are_sorted", "unique_indices", "mode")
    return {name: eqn.params[name] for name in names}


@pointwise("scatter-add", complex=True, linear=True)
def _scatter_add(ctx, eqn, ins, ops, outs):
    operand, indices, updates = ins
    terms = [ops[0]]
    if ops[2] is not None:
        scatter = _gather_for(eqn, operand, indices, updates).transpose()
        terms.append(compose(scatter, ops[2]))
    return [total(terms)]


RELEVANT["scatter-add"] = lambda eqn: [0, 2]


@pointwise("scatter", complex=True, linear=True)
def _scatter(ctx, eqn, ins, ops, outs):
    # Which update lands where: scatter the updates' ids, gather them back (JAX's rule for
    # indices that may repeat); the operand keeps its entries where none lands.
    operand, indices, updates = ins
    if eqn.params.get("update_jaxpr") is not None:
        raise NoRule("with a combining function")
    ids = jnp.arange(1, updates.size + 1, dtype=jnp.int32).reshape(updates.shape)
    landed = lax.scatter(jnp.zeros(operand.shape, jnp.int32), indices, ids, **_options(eqn))
    gather = _gather_for(eqn, operand, indices, updates)
    won = gather.mv(landed) == ids
    terms = [None if ops[0] is None else select(landed == 0, (None, ops[0]))]
    if ops[2] is not None:
        terms.append(compose(gather.transpose(), select(won, (None, ops[2]))))
    return [total(terms)]


RELEVANT["scatter"] = lambda eqn: [0, 2]


@pointwise("scatter-max", "scatter-min")
def _scatter_extremal(ctx, eqn, ins, ops, outs):
    # JAX's rule: where k updates reach the extremum an entry takes, each gets 1 / k of the
    # derivative, 1 / (k + 1) if the operand's entry ties with them (which keeps that
    # share); an entry no update reaches is the operand's. NaN won nowhere: derivative 0.
    operand, indices, updates = ins
    gather = _gather_for(eqn, operand, indices, updates)
    scatter = gather.transpose()
    dtype = operand.dtype
    landing = gather.mv(jnp.ones(operand.shape, dtype)) == 1  # not dropped
    won = landing & (updates == gather.mv(outs[0]))
    winners = scatter.mv(won.astype(dtype))  # per entry of the operand
    reached = scatter.mv(landing.astype(dtype)) > 0
    kept = reached & (operand == outs[0])
    terms = [times(jnp.where(reached, jnp.where(kept, 1 / (winners + 1), 0), 1), ops[0])]
    if ops[2] is not None:
        share = 1 / (gather.mv(winners) + gather.mv(kept.astype(dtype)))
        terms.append(compose(scatter, times(jnp.where(won, share, 0), ops[2])))
    return [total(terms)]


RELEVANT["scatter-max"] = RELEVANT["scatter-min"] = lambda eqn: [0, 2]


@pointwise("scatter-mul", linear=numerator)
def _scatter_mul(ctx, eqn, ins, ops, outs):
    # d/d operand: the product of the updates that land on each entry; d/d updates (JAX's
    # rule, for indices promised unique): the operand's entry each update multiplies.
    operand, indices, updates = ins
    factors = lax.scatter_mul(jnp.ones_like(operand), indices, updates, **_options(eqn))
    terms = [times(factors, ops[0])]
    if ops[2] is not None:
        if not eqn.params["unique_indices"]:
            raise NoRule(
                "with respect to updates whose indices may repeat (x.at[i].mul(y) of a "
                "differentiated y): JAX's rule needs unique_indices=True too"
            )
        scatter = _gather_for(eqn, operand, indices, updates).transpose()
        terms.append(times(operand, compose(scatter, ops[2])))
    return [total(terms)]


RELEVANT["scatter-mul"] = lambda eqn: [0, 2]


@pointwise("sort", complex=True, linear=True)  # by a constant key (Context._check_linear)
def _sort(ctx, eqn, ins, ops, outs):
    dimension = eqn.params["dimension"]
    shape = ins[0].shape
    iota = lax.broadcasted_iota(np.int32, shape, dimension)
    permutation = lax.sort(
        (*ins, iota), dimension=dimension, is_stable=eqn.params["is_stable"],
        num_keys=eqn.params["num_keys"],
    )[-1]  # fmt: skip
    return [
        None if op is None else compose(TakeAlong(tuple(y.shape), tuple(shape),
                                        y.dtype.name, permutation, dimension), op)
        for y, op in zip(outs, ops, strict=True)
    ]  # fmt: skip


@pointwise(
    "top_k", "approx_top_k"
)  # the indices depend on the operand: not linear in a backward rule
def _top_k(ctx, eqn, ins, ops, outs):
    """The entries the primitive chose, read from the indices it returns (``approx_max_k``
    and ``approx_min_k`` too, along their ``reduction_dimension``, as JAX's jvp reads them)."""
    x = ins[0]
    values, indices = outs
    params = eqn.params
    axis = params.get("reduction_dimension", params.get("axis", -1)) % x.ndim
    take = TakeAlong(tuple(values.shape), tuple(x.shape), values.dtype.name, indices, axis)
    return [compose(take, ops[0]), None]
