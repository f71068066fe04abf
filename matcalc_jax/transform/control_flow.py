"""Rules for control flow: ``cond`` (``lax.cond``, ``lax.switch``), ``scan``
(``lax.scan``, ``lax.fori_loop`` with static bounds, ``lax.map``) and ``while``
(``lax.while_loop``, ``fori_loop`` with traced bounds).

``cond``: with a concrete index (outside ``jit``), the Jacobian of the branch taken. Under
``jit`` the index is traced: every branch's Jacobian is built and the result selects
between them row by row (``select``), which is what JAX's ``jvp`` of ``cond`` computes
(only the branch taken contributes, a NaN in another never does).

``scan`` and ``while``: the Jacobian of the carry is carried through the loop as an
operator, step by step: ``J_c <- d(step)/dc J_c + d(step)/d(consts) J_consts +
d(step)/dx_t J_xs[t]``. To carry it inside ``lax.scan`` / ``lax.while_loop`` its structure
(its operator types, shapes, static parameters: the pytree structure) must be the same
after a step as before, as JAX's own loop rules first find a fixed point of which tangents
are nonzero (``_scan_jvp``). The rule probes it:

- a structure that stays the same (a diagonal stays diagonal, blocks stay blocks, a dense
  carry stays dense) is carried as it is, the loop's arrays being the operator's leaves;
- a structure that settles after a few steps (a carry that starts constant, a
  ``Composition`` that folds) runs those steps unrolled, then the loop;
- a structure that keeps growing (a chain of dense layers composes lazily) is carried
  dense: each step's Jacobian is multiplied out (``to_dense``), as ``jax.jacfwd`` does.

Which it is, is found by tracing the first steps (``_Loop._plan``): a loop that would go
dense after steps unrolled carries dense Jacobians from its first step instead.

The stacked outputs ``ys`` come back as a ``Stacked`` operator: the step's output
Jacobian, one per iteration, its leaves stacked along the loop axis. ``while`` carries the
Jacobian forward only (as ``jax.jvp`` does; ``jax.vjp`` refuses a ``while_loop``), but the
result is an operator: its ``vm`` exists.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.extend import core as jex_core

from matcalc_jax.operators.base import JacobianOperator, Shared, add, compose, tree_signature
from matcalc_jax.operators.dense import Dense
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.index_maps import DynamicSlice, Embed, Reshape
from matcalc_jax.operators.selection import diagonal_factor, select
from matcalc_jax.operators.stacked import Stacked
from matcalc_jax.transform.interpreter import Context, NoRule, NotLinear, Operator, bind
from matcalc_jax.transform.registry import RELEVANT, rule, scan_layout

#: Steps run unrolled, at most, while a carry's structure settles.
SETTLE_STEPS = 3


def _concrete_index(index: Array) -> int | None:
    try:
        return int(index)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return None


@rule("cond", complex=True, linear=True)
def _cond(ctx: Context, eqn: Any, ins: list[Array], ops: list[Operator]) -> Any:
    index, operands, operand_ops = ins[0], ins[1:], ops[1:]
    branches = eqn.params["branches"]
    taken = _concrete_index(index)
    if taken is not None:
        branch = branches[taken]
        inner = ctx.inside(f"cond[branch {taken}]", eqn)
        return inner.run(branch.jaxpr, branch.consts, operands, operand_ops)
    outs = bind(eqn, ins)
    per_branch = [
        ctx.inside(f"cond[branch {k}]", eqn).run(b.jaxpr, b.consts, operands, operand_ops)[1]
        for k, b in enumerate(branches)
    ]
    out_ops = [
        select(index, [ops_k[j] for ops_k in per_branch], whole=True) for j in range(len(outs))
    ]
    return outs, out_ops


RELEVANT["cond"] = lambda eqn: list(range(1, len(eqn.invars)))


# ---------------------------------------------------------------------------- loops


def _structure(ops: Sequence[Operator]) -> Any:
    return jax.tree_util.tree_structure(list(ops))


def _signature(ops: Sequence[Any]) -> tuple:
    """What a loop's carried Jacobians must keep from step to step: their structure and
    their leaves' shapes, dtypes and weak types (a low-rank factor that gains a column
    keeps its structure but not its shape)."""
    return tree_signature(list(ops))


def _dense(op: Operator) -> Operator:
    return None if op is None else Dense.from_array(op.to_dense(), len(op.out_shape))


def _widened(op: Operator, x: Array, argument: tuple, *, square: bool = True) -> Operator:
    """A map that is diagonal (an identity, a scaled one) as the ``Diagonal`` it is, the
    structure an elementwise step gives it; a constant float carry (``None``) as a zero ``Diagonal``
    when it has the argument's shape, or (``square=False``) a zero ``Dense``."""
    if op is None:
        if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            return None
        if square and tuple(jnp.shape(x)) == tuple(argument):
            return Diagonal(jnp.zeros(argument, jnp.result_type(x)))
        if square:
            return None
        zeros = jnp.zeros((*jnp.shape(x), *argument), jnp.result_type(x))
        return Dense.from_array(zeros, jnp.ndim(x))
    values, inner = diagonal_factor(op)
    return Diagonal(values.astype(op.dtype)) if inner is None else op


def _row(op: JacobianOperator, t: Array, dtype: Any) -> JacobianOperator:
    """The Jacobian of ``xs[t]`` from that of ``xs``."""
    shape = tuple(op.out_shape)
    name = jnp.dtype(dtype).name
    start = (jnp.asarray(t, jnp.int32), *(jnp.zeros((), jnp.int32) for _ in shape[1:]))
    window = DynamicSlice((1, *shape[1:]), shape, name, start)
    return compose(Reshape(shape[1:], (1, *shape[1:]), name), compose(window, op))


def _placed(op: Operator, first: int, length: int) -> Operator:
    """The Jacobian of rows ``first, first + 1, ...`` of a stacked output of ``length``
    rows, from that of those rows (``op``, out shape ``(count, *y.shape)``)."""
    if op is None:
        return None
    count, *shape = op.out_shape
    if count == length:
        return op
    config = ((first, length - first - count, 0), *((0, 0, 0) for _ in shape))
    return compose(Embed((length, *shape), tuple(op.out_shape), op.dtype.name, config), op)


def _one_row(op: Operator) -> Operator:
    if op is None:
        return None
    shape = tuple(op.out_shape)
    return compose(Reshape((1, *shape), shape, op.dtype.name), op)


#: Why a loop is refused when a map in it is not a matrix.
NOT_A_MATRIX = (
    "with a custom_vjp whose backward rule is not linear in its cotangent, or a "
    "reduce_precision that rounds the tangent,"
)


def _all_matrices(ops: list[Operator]) -> bool:
    return all(op is None or (op.composes_as_matrix() and op.commutes_with_scaling()) for op in ops)


class _Loop:
    """One loop's step as a function of the carry, its Jacobians and the step's index,
    and what the rules need to carry the Jacobians through it."""

    def __init__(self, step: Callable[..., tuple]) -> None:
        self.raw_step = step
        self.dense = False

    def step(self, carry: list[Array], carry_ops: list[Operator], t: Any) -> tuple:
        # Carried from step to step, a map that does not compose as a matrix (a backward
        # rule not linear in its cotangent, a rounding of the tangent) would be densified
        # or stacked as one: no step-by-step structure follows JAX there.
        if not _all_matrices(carry_ops):
            raise NoRule(f"{NOT_A_MATRIX} in what it carries in (made before the loop)")
        new_carry, new_ops, *rest = self.raw_step(carry, carry_ops, t)
        if not _all_matrices([*new_ops, *(rest[1] if len(rest) > 1 else ())]):
            raise NoRule(
                f"{NOT_A_MATRIX} in its body or in an input it reads "
                "(clip_gradient, g + 0.1 x, reduce_precision)"
            )
        if self.dense:
            new_ops = [_dense(op) for op in new_ops]
        return (new_carry, new_ops, *rest)

    def _shared_step(self, state: Shared, t: Any) -> Shared:
        """``step`` with its Jacobians in and out as graphs (``Shared``), for ``jax.jit``."""
        return Shared(self.step(*state.value, t))

    def structure_after(self, carry: list[Array], carry_ops: list[Operator], t: Any) -> Any:
        """The structure of the Jacobians after a step, as traced inside a loop (every
        value abstract: a ``cond`` inside selects, as it does in the loop)."""
        return jax.tree_util.tree_structure(
            list(jax.eval_shape(self.step, carry, carry_ops, t)[1:])
        )

    def stable(self, carry: list, carry_ops: list[Operator], t: Any) -> bool:
        """True when a step leaves the Jacobians' structure (and their arrays' shapes and
        types) as it found them."""
        after = jax.eval_shape(self._shared_step, Shared((carry, carry_ops)), t).value[1]
        return _signature(after) == _signature(carry_ops)

    def settle(
        self, carry: list, carry_ops: list[Operator], times: Sequence[int], argument: tuple
    ) -> tuple:
        """Bring the carried Jacobians to a structure a step keeps: as they are; an identity
        as the diagonal it becomes; a constant carry becoming a Jacobian by running steps
        unrolled (at most ``SETTLE_STEPS``, traced as in the loop); else dense. A structure
        that changes when nothing is constant any more keeps growing (a chain of lazy
        compositions): it goes dense at once. Which it is, is found first by tracing those
        steps (``_plan``): a loop that goes dense after steps unrolled carries dense
        Jacobians from its first step instead (a constant carry a zero matrix, as in
        ``while``), so that no step runs, and no carry is densified, outside the loop.
        Returns the unrolled steps' ``(t, ys, ys_ops)`` and the carry and its Jacobians
        after them."""
        steps, how = self._plan(carry, carry_ops, times, argument)
        if how == "dense" and steps:
            self.dense = True
            zeros = [
                _dense(_widened(op, x, argument, square=False))
                for x, op in zip(carry, carry_ops, strict=True)
            ]
            if self.stable(carry, zeros, times[0]):
                return [], carry, zeros
            self.dense = False
        unrolled: list[tuple] = []
        for t in times[:steps]:
            new_carry, new_ops, ys, ys_ops = jax.jit(self._shared_step)(
                Shared((carry, carry_ops)), t
            ).value
            unrolled.append((t, ys, ys_ops))
            carry, carry_ops = list(new_carry), list(new_ops)
        if how == "widened":
            carry_ops = [_widened(op, x, argument) for x, op in zip(carry, carry_ops, strict=True)]
        elif how == "dense":
            self.dense = True
            carry_ops = [_dense(op) for op in carry_ops]
        return unrolled, carry, carry_ops

    def _plan(
        self, carry: list, carry_ops: list[Operator], times: Sequence[int], argument: tuple
    ) -> tuple[int, str]:
        """How ``settle`` brings the Jacobians to a structure, found in one trace (nothing
        runs): the number of steps to unroll, and after them the Jacobians carried "as it
        is", "widened" or "dense"."""
        plan: list[tuple[int, str]] = []

        def replay(*steps: Array) -> None:
            values, ops = carry, carry_ops
            for k, t in enumerate(steps):
                if self.stable(values, ops, t):
                    plan.append((k, "as it is"))
                    return
                widened = [_widened(op, x, argument) for x, op in zip(values, ops, strict=True)]
                if self.stable(values, widened, t):
                    plan.append((k, "widened"))
                    return
                constant = any(
                    op is None and jnp.issubdtype(jnp.result_type(x), jnp.inexact)
                    for x, op in zip(values, ops, strict=True)
                )
                if not constant:
                    plan.append((k, "dense"))
                    return
                new_values, new_ops, _, _ = self.step(values, ops, t)
                values, ops = list(new_values), list(new_ops)
            plan.append((len(steps), "dense" if len(steps) < len(times) else "as it is"))

        jax.eval_shape(replay, *times[:SETTLE_STEPS])
        return plan[0]


@rule("scan", complex=True, linear=True)
def _scan(ctx: Context, eqn: Any, ins: list[Array], ops: list[Operator]) -> Any:
    params = eqn.params
    body, length, reverse = params["jaxpr"], params["length"], params["reverse"]
    n_consts, n_carry = scan_layout(params)
    split = (n_consts, n_consts + n_carry)
    consts, init, xs = ins[: split[0]], ins[split[0] : split[1]], ins[split[1] :]
    const_ops, init_ops, xs_ops = ops[: split[0]], ops[split[0] : split[1]], ops[split[1] :]
    inner = ctx.inside(f"scan[length {length}]", eqn)

    def step(carry: list[Array], carry_ops: list[Operator], t: Any) -> tuple:
        x_t = [lax.dynamic_index_in_dim(x, t, 0, keepdims=False) for x in xs]
        x_ops = [
            None if op is None else _row(op, t, x.dtype) for x, op in zip(xs, xs_ops, strict=True)
        ]
        outs, out_ops = inner.run(
            body.jaxpr, body.consts, [*consts, *carry, *x_t], [*const_ops, *carry_ops, *x_ops]
        )
        return outs[:n_carry], out_ops[:n_carry], outs[n_carry:], out_ops[n_carry:]

    loop = _Loop(step)
    times = list(range(length))[::-1] if reverse else list(range(length))
    argument = next(op for op in ops if op is not None).in_shape
    unrolled, carry, carry_ops = loop.settle(list(init), list(init_ops), times, argument)
    remaining = times[len(unrolled) :]
    n_ys = len(eqn.outvars) - n_carry
    # Per stacked output: (first row, rows, their Jacobian) for the unrolled steps and the loop.
    ys_parts: list[list[tuple[int, Array, Operator]]] = [
        [(t, ys[j][None], _one_row(ys_ops[j])) for t, ys, ys_ops in unrolled] for j in range(n_ys)
    ]
    if remaining:
        first, count = min(remaining), len(remaining)
        carry_structure = _structure(carry_ops)
        ys_structure = loop.structure_after(carry, carry_ops, first).children()[2]

        def body_fn(state: tuple, t: Array) -> tuple:
            values, leaves = state
            now = jax.tree_util.tree_unflatten(carry_structure, leaves)
            new_values, new_ops, ys, ys_ops = loop.step(list(values), list(now), t)
            return (new_values, jax.tree_util.tree_leaves(list(new_ops))), (
                ys, jax.tree_util.tree_leaves(list(ys_ops)),
            )  # fmt: skip

        state = (list(carry), jax.tree_util.tree_leaves(list(carry_ops)))
        # A device array, not NumPy's: JAX's scan puts a NumPy operand it forwards to an
        # output on its CPU backend, which a process on a GPU alone (``JAX_PLATFORMS=cuda``)
        # does not have. ``asarray`` copies it to the device; no eager program.
        steps = jnp.asarray(np.arange(first, first + count, dtype=np.int32))
        (carry, leaves), (ys, ys_leaves) = lax.scan(body_fn, state, steps, reverse=reverse)
        carry_ops = jax.tree_util.tree_unflatten(carry_structure, leaves)
        offset = 0
        for j, child in enumerate(ys_structure.children()):
            chunk = ys_leaves[offset : offset + child.num_leaves]
            offset += child.num_leaves
            stacked = None if child.num_nodes == 1 and child.num_leaves == 0 else Stacked.of(
                chunk, child, count
            )  # fmt: skip
            ys_parts[j].append((first, ys[j], stacked))
    ys_out, ys_ops_out = [], []
    for j, var in enumerate(eqn.outvars[n_carry:]):
        if len(ys_parts[j]) == 1:  # one part holds every row: the loop's (or one step's)
            value = ys_parts[j][0][1]
        else:
            value = jnp.zeros(var.aval.shape, var.aval.dtype)
            for t, rows, _ in ys_parts[j]:
                value = lax.dynamic_update_slice_in_dim(value, rows, t, 0)
        terms = [_placed(op, t, length) for t, _, op in ys_parts[j]]
        present = [term for term in terms if term is not None]
        ys_out.append(value)
        ys_ops_out.append(functools.reduce(add, present) if present else None)
    return [*carry, *ys_out], [*carry_ops, *ys_ops_out]


def _reads_varying(cond: Any, n_consts: int, carry_ops: list[Operator]) -> bool:
    """Whether a loop's condition reads a carry that has a Jacobian: in a linear context
    (a backward rule) the number of steps would then depend on the cotangent."""
    read = {v for eqn in cond.eqns for v in eqn.invars if not isinstance(v, jex_core.Literal)}
    read |= {v for v in cond.outvars if not isinstance(v, jex_core.Literal)}
    carries = cond.invars[n_consts:]
    return any(op is not None and v in read for v, op in zip(carries, carry_ops, strict=True))


@rule("while", complex=True, linear=True)
def _while(ctx: Context, eqn: Any, ins: list[Array], ops: list[Operator]) -> Any:
    params = eqn.params
    cond, body = params["cond_jaxpr"], params["body_jaxpr"]
    n_cond, n_body = params["cond_nconsts"], params["body_nconsts"]
    cond_consts = ins[:n_cond]
    body_consts, body_const_ops = ins[n_cond : n_cond + n_body], ops[n_cond : n_cond + n_body]
    init, init_ops = ins[n_cond + n_body :], ops[n_cond + n_body :]
    # Under jax.vmap a loop that stops at a different step per example has a condition per
    # example, of the batch's shape (leading in every carry): JAX runs the body while any
    # goes on and keeps each example's carry from its own last step, a select per example.
    # The carried Jacobians are selected the same way, row by row, which needs them dense.
    per_example = cond.out_avals[0].shape
    if per_example and any(tuple(x.shape[: len(per_example)]) != per_example for x in init):
        raise NoRule(f"with a condition of shape {per_example} that not every carry leads with")
    inner = ctx.inside("while", eqn)

    def step(carry: list[Array], carry_ops: list[Operator], t: Any) -> tuple:
        outs, out_ops = inner.run(
            body.jaxpr, body.consts, [*body_consts, *carry], [*body_const_ops, *carry_ops]
        )
        return outs, out_ops

    # No steps can be unrolled (the count is known only at run time): the carry as it is,
    # an identity as the diagonal it is, or dense, whichever keeps its structure.
    loop = _Loop(step)
    argument = next(op for op in ops if op is not None).in_shape
    for attempt in ("dense",) if per_example else ("as it is", "widened", "dense"):
        if attempt == "widened":
            carry_ops = [_widened(op, x, argument) for x, op in zip(init, init_ops, strict=True)]
        elif attempt == "dense":
            loop.dense = True
            carry_ops = [
                _dense(_widened(op, x, argument, square=False))
                for x, op in zip(init, init_ops, strict=True)
            ]
        else:
            carry_ops = list(init_ops)
        if loop.stable(list(init), carry_ops, 0):
            break
    else:
        raise NoRule("whose carried Jacobian changes structure even when dense")
    if ctx.linear is not None and _reads_varying(cond.jaxpr, n_cond, carry_ops):
        raise NotLinear(f"a while_loop whose condition reads what varies {ctx.where(eqn)}")
    structure = _structure(carry_ops)
    condition = jex_core.jaxpr_as_fun(cond)

    def keep_going(state: tuple) -> Array:
        going = condition(*cond_consts, *state[0])[0]
        return jnp.any(going) if per_example else going

    def body_fn(state: tuple) -> tuple:
        values, leaves = state
        old_ops = jax.tree_util.tree_unflatten(structure, leaves)
        new_values, new_ops = loop.step(list(values), old_ops, 0)
        if per_example:
            going = condition(*cond_consts, *values)[0]
            pairs = zip(new_values, values, strict=True)
            new_values = [_per_example(going, new, old) for new, old in pairs]
            new_ops = [
                None if new is None else _dense_per_example(going, new, old)
                for new, old in zip(new_ops, old_ops, strict=True)
            ]
        return list(new_values), jax.tree_util.tree_leaves(list(new_ops))

    state = (list(init), jax.tree_util.tree_leaves(carry_ops))
    values, leaves = lax.while_loop(keep_going, body_fn, state)
    return list(values), list(jax.tree_util.tree_unflatten(structure, leaves))


def _per_example(going: Array, new: Array, old: Array) -> Array:
    """``new`` where the example goes on, ``old`` where it has stopped: ``going`` has the
    shape of ``new``'s leading axes (JAX's select of a batched while_loop's carry)."""
    return jnp.where(going.reshape(going.shape + (1,) * (new.ndim - going.ndim)), new, old)


def _dense_per_example(going: Array, new: Dense, old: Dense) -> Dense:
    """The carried Jacobian of ``_per_example``: the rows of ``new`` where the example goes
    on, those of ``old`` where it has stopped (both dense, numerator order)."""
    return Dense.from_array(_per_example(going, new.array, old.array), new.out_ndim)


RELEVANT["while"] = lambda eqn: list(range(eqn.params["cond_nconsts"], len(eqn.invars)))
