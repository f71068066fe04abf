"""Which values of a program are 0 wherever some of its inputs are: a static analysis of
the jaxpr, read from the program alone (no value of it is computed).

A ``custom_vjp`` backward rule ``bwd`` whose equations are each linear in the cotangent
``g`` up to constants they add in is affine, ``bwd(g) = B g + bwd(0)``, and linear only when
``bwd(0) = 0``. Eagerly ``bwd(0)`` is a number to read. Under ``jit``, or in a loop's body,
the residuals are traced and it is not: this analysis proves it 0 or does not, the same
for every value the residuals may take.

Each variable gets a ``Fact``: whether its part that does not vary with ``g`` (its
constant part) is 0; whether exactly, or only up to NaN (``0 log(r)`` at r = 0 is NaN);
and whether it varies with ``g``. The chosen inputs (the cotangents) vary and are exactly
0; a literal or concrete constant is exactly 0 when all its entries are. Then, equation by
equation, read from the transform's table of linear primitives (``registry.LINEAR``):

- a primitive linear in all its operands together (reshapes, slices, gathers, casts, sums,
  ``split``, ``tile``, ``fft``, ``pad``, scatters, ``select_n``'s cases, ``add``) is 0 when
  all its operands are, those that only say where aside (indices, a predicate), unless a
  parameter adds a constant in (a gather's fill); exactly when all are exactly;
- a product, linear in one factor at a time (``mul``, ``dot_general``, a convolution; a
  quotient in its numerator, a triangular solve in its right-hand side) is 0 when one of
  those factors is: exactly when that factor varies (a term ``g / (2 r)`` of the rule's
  matrix, whose 0 inf at g = 0 is the matrix's own) or every operand is an exactly 0
  factor; a constant 0 times (or over) a constant may be NaN (``0 log(r)``, ``0 / r``).
  Integer values are not followed (XLA's integer ``0 // 0`` is -1);
- a ``sort``'s, a ``device_put``'s output is its own operand's;
- a call (``jit``, ``checkpoint``, ``custom_jvp`` / ``custom_vjp`` functions) is its program's
  analysis, a ``cond`` every branch's (0 where all are, whichever runs), a
  ``custom_linear_solve`` its solver program's (a warm start adds to the right-hand side);
- a loop's carry is 0 when it is 0 on entry and stays 0 through the body: the body is
  analysed from the facts the carry enters with, which only weaken, to a fixed point, so a
  ``fori_loop`` of ``0.5 a`` keeps 0 and one of ``a + 1`` does not;
- anything else is not known to be 0.

The analysis never calls a value 0 that some value of the traced constants could make a
nonzero number. It may miss a 0 (``(g + x) - x``); the rule is then a ``Pullback``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
from jax.extend import core as jex_core

from matcalc_jax.transform.interpreter import adds_a_constant, is_float, nonzero
from matcalc_jax.transform.registry import LINEAR, scan_layout


class Fact(NamedTuple):
    """What the analysis knows of a value at a 0 cotangent."""

    #: its constant part (what does not vary with the cotangent) is 0, or NaN
    zero: bool
    #: and not NaN: exactly 0
    exact: bool
    #: it varies with the cotangent
    varying: bool


UNKNOWN = Fact(False, False, False)

#: output k is operand k, moved or reordered
_PER_OPERAND = frozenset(("sort", "device_put", "optimization_barrier"))

#: calls whose outputs are their program's, and the parameter that holds it
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "eval_jaxpr": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}


def _open(program: Any) -> tuple[Any, Sequence[Any]]:
    """A jaxpr and its constants, from a closed or an open one."""
    return (program.jaxpr, program.consts) if hasattr(program, "consts") else (program, ())


def _constant(value: Any) -> Fact:
    """A constant: exactly 0 when all its entries are (a traced one is not known to be)."""
    if isinstance(value, jax.core.Tracer):
        return UNKNOWN
    try:
        zero = not nonzero(value)
    except (TypeError, ValueError):  # a key, a token: not a number
        return UNKNOWN
    return Fact(zero, zero, False)


def facts(program: Any, chosen: Sequence[bool]) -> list[Fact]:
    """Per output of ``program`` (a closed or open jaxpr), what is known of it where the
    inputs flagged in ``chosen`` are 0 (and vary), whatever the others and its traced
    constants are."""
    inputs = [Fact(True, True, True) if c else UNKNOWN for c in chosen]
    return _call(program, inputs)


def known_zeros(program: Any, chosen: Sequence[bool]) -> list[bool]:
    """Per output of ``program``, whether its constant part is 0 (or NaN) where the
    inputs flagged in ``chosen`` are 0 (``facts``)."""
    return [fact.zero for fact in facts(program, chosen)]


def _run(jaxpr: Any, facts_in: Sequence[Fact]) -> list[Fact]:
    """``facts`` of an open jaxpr, its constants' before its inputs'."""
    known: dict[Any, Fact] = dict(zip([*jaxpr.constvars, *jaxpr.invars], facts_in, strict=True))

    def read(var: Any) -> Fact:
        if isinstance(var, jex_core.Literal):
            return _constant(var.val)
        return known.get(var, UNKNOWN)

    for eqn in jaxpr.eqns:
        outs = _equation(eqn, [read(v) for v in eqn.invars])
        known.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _equation(eqn: Any, ins: list[Fact]) -> list[Fact]:
    """The outputs' facts of one equation from its inputs'."""
    name, params = eqn.primitive.name, eqn.params
    n_out = len(eqn.outvars)
    if name in _PER_OPERAND:
        return list(ins)
    if name in _CALLS and _CALLS[name] in params:
        return _call(params[_CALLS[name]], ins)
    if name == "cond":
        branches = [_call(branch, ins[1:]) for branch in params["branches"]]
        return [_meet(*found) for found in zip(*branches, strict=True)]
    if name == "scan":
        return _scan(eqn, ins)
    if name == "while":
        return _while(eqn, ins)
    if name == "custom_linear_solve":  # x = solve(b): its program, which may add to b's
        lengths = params["const_lengths"]
        start = lengths.matvec + lengths.vecmat
        return _call(
            params["jaxprs"].solve, [*ins[start : start + lengths.solve], *ins[sum(lengths) :]]
        )
    test = LINEAR.get(name)
    varying = any(fact.varying for fact in ins)
    if test is None or not is_float(eqn.outvars[0]) or adds_a_constant(eqn):
        return [Fact(False, False, varying)] * n_out
    n_in = len(ins)
    if test([True] * n_in):  # linear in all its operands together
        data = [f for k, f in enumerate(ins) if k not in _indices(name, n_in)]
        zero = all(f.zero for f in data)
        return [Fact(zero, zero and all(f.exact for f in data), varying)] * n_out
    factors = [ins[k] for k in range(n_in) if test([j == k for j in range(n_in)])]
    zeros = [f for f in factors if f.zero]
    # exactly 0: a term of the matrix, or a product of exact zeros (not 0 / 0)
    every = len(factors) == n_in and all(f.exact for f in ins)
    exact = any(f.exact and f.varying for f in zeros) or every
    return [Fact(bool(zeros), bool(zeros) and exact, varying)] * n_out


def _meet(*found: Fact) -> Fact:
    """What holds of a value that is one of ``found`` (a branch's, a step's)."""
    return Fact(
        all(f.zero for f in found), all(f.exact for f in found), any(f.varying for f in found)
    )


def _indices(name: str, n_in: int) -> range | tuple[int, ...]:
    """The operands of a primitive linear in the others that say where, not what: its
    output is 0 whatever they are."""
    if name in ("gather", "scatter", "scatter-add"):
        return (1,)
    if name == "select_n":
        return (0,)
    if name == "dynamic_slice":
        return range(1, n_in)
    if name == "dynamic_update_slice":
        return range(2, n_in)
    return ()


def _call(program: Any, ins: Sequence[Fact]) -> list[Fact]:
    jaxpr, consts = _open(program)
    return _run(jaxpr, [*map(_constant, consts), *ins])


def _fixed_point(body: Any, before: list[Fact], carry: list[Fact], after: list[Fact]) -> Any:
    """The carry's facts that hold through ``body`` (inputs: ``before``, the carry,
    ``after``; its first outputs the new carry) and the body's outputs with them."""
    while True:
        outs = _call(body, [*before, *carry, *after])
        kept = [_meet(c, o) for c, o in zip(carry, outs[: len(carry)], strict=True)]
        if kept == carry:
            return carry, outs
        carry = kept


def _scan(eqn: Any, ins: list[Fact]) -> list[Fact]:
    """A scan's carry and stacked outputs: ``(consts, carry, xs) -> (carry, ys)``."""
    n_consts, n_carry = scan_layout(eqn.params)
    consts, carry = ins[:n_consts], ins[n_consts : n_consts + n_carry]
    carry, outs = _fixed_point(eqn.params["jaxpr"], consts, carry, ins[n_consts + n_carry :])
    return [*carry, *outs[n_carry:]]


def _while(eqn: Any, ins: list[Fact]) -> list[Fact]:
    """A while loop's carry: the body is ``(body consts, carry) -> carry``."""
    n_cond, n_body = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    consts, carry = ins[n_cond : n_cond + n_body], ins[n_cond + n_body :]
    carry, _ = _fixed_point(eqn.params["body_jaxpr"], consts, carry, [])
    return carry
