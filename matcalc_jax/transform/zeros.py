"""Which values of a program are 0 wherever some of its inputs are: a static analysis of
the jaxpr, read from the program alone (no value of it is computed).

A ``custom_vjp`` backward rule ``bwd`` whose equations are each linear in the cotangent
``g`` up to constants they add in is affine, ``bwd(g) = B g + bwd(0)``, and linear only when
``bwd(0) = 0``. Eagerly ``bwd(0)`` is a number to read. Under ``jit``, or in a loop's body,
the residuals are traced and it is not: this analysis proves it 0 or does not, the same
for every value the residuals may take.

The abstract value of a variable is one bit, "known to be 0". An input is 0 when it is one
of the chosen inputs (the cotangents), a literal or concrete constant when all its entries
are. Then, equation by equation:

- a primitive that keeps 0 (``KEEPS_ZERO``: reshapes, slices, gathers, casts, sums, ``fft``,
  ``select_n`` of its cases, ``add`` and ``pad`` of all their operands) is 0 when all its
  operands are, those that only say where aside (indices, a ``select_n``'s predicate), and
  it adds no constant of its own (a gather's fill);
- a product (``mul``, ``dot_general``, a convolution) of floats is 0 when one factor is, a
  quotient when its numerator is, a triangular solve when its right-hand side is (an
  integer ``0 // 0`` is -1); a ``custom_linear_solve`` is its ``solve`` program's analysis
  (a warm start may add to the right-hand side); a ``sort``'s, a ``device_put``'s output
  is 0 when its own operand is;
- a call (``jit``, ``checkpoint``, ``custom_jvp`` / ``custom_vjp`` functions) is its program's
  analysis, a ``cond`` the analysis of every branch (0 where all are 0, whichever runs);
- a loop's carry is 0 when it is 0 on entry and stays 0 through the body: the body is
  analysed from "every carry 0 that enters 0" and the set shrinks to a fixed point (at most
  one pass per carry), so a ``fori_loop`` of ``0.5 a`` keeps 0 and one of ``a + 1`` does not;
- anything else is not known to be 0.

The analysis never calls a value 0 that the chosen zeros and some value of the traced
constants could make a nonzero number: it may be NaN there (``0 inf``, ``0 / 0``), which
the caller checks when the program runs. It may miss a 0 (``(g + x) - x``); the rule is
then a ``Pullback``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from matcalc_jax.transform.interpreter import adds_a_constant, is_float

#: primitives whose output is 0 wherever their operands all are (indices and predicates aside)
KEEPS_ZERO = frozenset(
    ("broadcast_in_dim", "reshape", "convert_element_type", "squeeze", "expand_dims",
     "transpose", "slice", "dynamic_slice", "rev", "neg", "copy", "copy_p", "reduce_sum",
     "cumsum", "gather", "real", "imag", "conj", "complex", "select_n", "concatenate", "pad",
     "dynamic_update_slice", "scatter", "scatter-add", "add", "add_any", "sub", "max", "min",
     "fft", "reduce_precision")
)  # fmt: skip

#: products: 0 when the factor at one of these positions is (None: any operand)
_FACTORS: dict[str, tuple[int, ...] | None] = {
    "mul": None,
    "dot_general": None,
    "conv_general_dilated": None,
    "div": (0,),
    "triangular_solve": (1,),
}

#: output k is operand k, moved or reordered: 0 when it is
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
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}


def _open(program: Any) -> tuple[Any, Sequence[Any]]:
    """A jaxpr and its constants, from a closed or an open one."""
    return (program.jaxpr, program.consts) if hasattr(program, "consts") else (program, ())


def _is_zero_constant(value: Any) -> bool:
    """A constant all of whose entries are 0 (a traced one is not known to be)."""
    if isinstance(value, jax.core.Tracer):
        return False
    try:
        return not np.any(np.asarray(value) != 0)
    except (TypeError, ValueError):  # a key, a token: not a number
        return False


def known_zeros(program: Any, zero_inputs: Sequence[bool]) -> list[bool]:
    """Per output of ``program`` (a closed or open jaxpr), whether it is 0 wherever the
    inputs flagged in ``zero_inputs`` are 0, whatever the others and its traced constants
    are."""
    jaxpr, consts = _open(program)
    consts_zero = [_is_zero_constant(c) for c in consts]
    return _run(jaxpr, [*consts_zero, *zero_inputs])


def _run(jaxpr: Any, zero_in: Sequence[bool]) -> list[bool]:
    """``known_zeros`` of an open jaxpr, its constants' flags before its inputs'."""
    zero: dict[Any, bool] = dict(zip([*jaxpr.constvars, *jaxpr.invars], zero_in, strict=True))

    def read(var: Any) -> bool:
        if isinstance(var, jex_core.Literal):
            return _is_zero_constant(var.val)
        return zero.get(var, False)

    for eqn in jaxpr.eqns:
        outs = _equation(eqn, [read(v) for v in eqn.invars])
        for var, flag in zip(eqn.outvars, outs, strict=True):
            zero[var] = flag
    return [read(v) for v in jaxpr.outvars]


def _equation(eqn: Any, zero_in: list[bool]) -> list[bool]:
    """The outputs' flags of one equation from its inputs'."""
    name, params = eqn.primitive.name, eqn.params
    n_out = len(eqn.outvars)
    if name in _PER_OPERAND:
        return list(zero_in)
    if name in _FACTORS and is_float(eqn.outvars[0]):  # an integer 0 // 0 is -1
        at = _FACTORS[name]
        factors = zero_in if at is None else [zero_in[k] for k in at]
        return [any(factors)] * n_out
    if name in KEEPS_ZERO:
        data = [z for k, z in enumerate(zero_in) if k not in _indices(name, len(zero_in))]
        return [all(data) and not adds_a_constant(eqn)] * n_out
    if name in _CALLS and _CALLS[name] in params:
        return _call(params[_CALLS[name]], zero_in)
    if name == "cond":
        branches = [_call(branch, zero_in[1:]) for branch in params["branches"]]
        return [all(flags) for flags in zip(*branches, strict=True)]
    if name == "scan":
        return _scan(eqn, zero_in)
    if name == "while":
        return _while(eqn, zero_in)
    if name == "custom_linear_solve":  # x = solve(b): its program, which may add to b's
        lengths = params["const_lengths"]
        start = lengths.matvec + lengths.vecmat
        solve_consts = zero_in[start : start + lengths.solve]
        return _call(params["jaxprs"].solve, [*solve_consts, *zero_in[sum(lengths) :]])
    return [False] * n_out


def _indices(name: str, n_in: int) -> range | tuple[int, ...]:
    """The operands of a ``KEEPS_ZERO`` primitive that say where, not what: its output is
    0 whatever they are."""
    if name in ("gather", "scatter", "scatter-add"):
        return (1,)
    if name == "select_n":
        return (0,)
    if name == "dynamic_slice":
        return range(1, n_in)
    if name == "dynamic_update_slice":
        return range(2, n_in)
    return ()


def _call(program: Any, zero_in: Sequence[bool]) -> list[bool]:
    jaxpr, consts = _open(program)
    return _run(jaxpr, [*(_is_zero_constant(c) for c in consts), *zero_in])


def _fixed_point(body: Any, before: list[bool], carry: list[bool], after: list[bool]) -> Any:
    """The carry's flags that hold through ``body`` (inputs: ``before``, the carry,
    ``after``; its first outputs the new carry) and the body's outputs with them."""
    while True:
        outs = _call(body, [*before, *carry, *after])
        kept = [c and o for c, o in zip(carry, outs[: len(carry)], strict=True)]
        if kept == carry:
            return carry, outs
        carry = kept


def _scan(eqn: Any, zero_in: list[bool]) -> list[bool]:
    """A scan's carry and stacked outputs: ``(consts, carry, xs) -> (carry, ys)``."""
    n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts, carry = zero_in[:n_consts], zero_in[n_consts : n_consts + n_carry]
    xs = zero_in[n_consts + n_carry :]
    carry, outs = _fixed_point(eqn.params["jaxpr"], consts, carry, xs)
    return [*carry, *outs[n_carry:]]


def _while(eqn: Any, zero_in: list[bool]) -> list[bool]:
    """A while loop's carry: the body is ``(body consts, carry) -> carry``."""
    n_cond, n_body = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    consts, carry = zero_in[n_cond : n_cond + n_body], zero_in[n_cond + n_body :]
    carry, _ = _fixed_point(eqn.params["body_jaxpr"], consts, carry, [])
    return carry
