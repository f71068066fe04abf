"""The rule table's registration API and the helpers every family of rules shares.

``RULES`` maps a primitive's name to its rule, ``RELEVANT`` names the operands a primitive
is differentiated in (when not all), and ``COMPLEX`` the primitives whose rule also holds
for complex values (the interpreter refuses any other primitive on a complex value instead
of treating it as a constant). Rules register with ``rule`` or ``pointwise``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
from jax import Array

from matcalc_jax.operators.base import add, compose
from matcalc_jax.operators.contraction import LETTERS, contraction
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.transform.interpreter import Context, Operator, Rule, bind

RULES: dict[str, Rule] = {}
#: Primitives whose output depends on only some operands for differentiation.
RELEVANT: dict[str, Callable[[Any], list[int]]] = {"stop_gradient": lambda eqn: []}
#: Primitives whose rule holds for complex values too.
COMPLEX: set[str] = set()
#: Primitives that are linear maps of their operands with Jacobians, as a test of which
#: operands carry one (``mul`` is linear in one factor, not in both).
LINEAR: dict[str, Callable[[list[bool]], bool]] = {}
Linearity = bool | Callable[[list[bool]], bool]


def scan_layout(params: dict[str, Any]) -> tuple[int, int]:
    """A ``scan`` equation's operands are its constants, its initial carry and the arrays it
    scans over, in that order: the first two counts. JAX up to 0.10 names them
    ``num_consts`` and ``num_carry``; from 0.11 the flat tree ``ft_in`` packs the three
    groups."""
    if "num_consts" in params:
        return params["num_consts"], params["num_carry"]
    if "ft_in" in params:
        consts, carry, _ = params["ft_in"].unpack()
        return len(consts), len(carry)
    raise NotImplementedError(
        "scan: this JAX's scan names its operand groups neither num_consts/num_carry nor "
        f"ft_in (its parameters: {sorted(params)}); the transform does not know this JAX"
    )


def one_factor(carried: list[bool]) -> bool:
    """Linear when one operand varies (a product, a contraction)."""
    return sum(carried) == 1


def numerator(carried: list[bool]) -> bool:
    """Linear when only the first operand varies (a quotient by a constant)."""
    return not any(carried[1:])


def rule(*names: str, complex: bool = False, linear: Linearity = False) -> Callable[[Rule], Rule]:
    """Register ``fn(context, eqn, ins, in_ops) -> (outs, out_ops)`` for the primitives
    ``names``; ``complex=True`` where it also holds for complex operands and outputs;
    ``linear``: True for a primitive linear in its operands, or a test of which operands
    vary (``one_factor``, ``numerator``)."""

    def register(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
            if complex:
                COMPLEX.add(name)
            if linear:
                LINEAR[name] = (lambda carried: True) if linear is True else linear
        return fn

    return register


def pointwise(
    *names: str, complex: bool = False, linear: Linearity = False
) -> Callable[[Callable[..., list[Operator]]], Rule]:
    """A rule that needs the outputs' values: evaluate the equation first, then
    ``fn(context, eqn, ins, in_ops, outs) -> out_ops``."""

    def register(fn: Callable[..., list[Operator]]) -> Rule:
        @functools.wraps(fn)
        def apply(ctx: Context, eqn: Any, ins: list[Array], ops: list[Operator]) -> Any:
            outs = bind(eqn, ins)
            return outs, fn(ctx, eqn, ins, ops, outs)

        return rule(*names, complex=complex, linear=linear)(apply)

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
