"""The interpreter: a loop over a jaxpr's equations that carries, beside every value, its
Jacobian with respect to the argument as an operator.

The argument starts as the identity. Each equation's rule (``.rules``) builds the
Jacobians of its outputs from those of its inputs, the seed's chain rule
``dz/dx = (dz/dy)(dy/dx)`` applied by ``matcalc_jax.operators.compose``, whose registered
rules keep the structure. A value that does not depend on the argument carries ``None`` and
costs nothing. Before the loop, a backward pass marks the values whose Jacobians the outputs
need; a factorization that only feeds a solver's preconditioner, or anything under
``stop_gradient``, is evaluated and never differentiated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.extend import core as jex_core

from matcalc_jax.operators.base import JacobianOperator

Operator = JacobianOperator | None
#: rule(context, equation, input values, input Jacobians) -> (output values, output Jacobians)
Rule = Callable[["Context", Any, list[Array], list[Operator]], tuple[list[Array], list[Operator]]]

FALLBACKS = (None, "autodiff")


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive of the program has no rule, and no fallback was asked for."""


class NoRule(Exception):  # noqa: N818  (a signal between a rule and the interpreter)
    """Raised by a rule for a case of its primitive it does not cover (``reason`` says
    which); the interpreter then treats the equation as a primitive without a rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_float(var: Any) -> bool:
    """True for a value whose Jacobian the transform tracks (a real floating-point array)."""
    dtype = getattr(var.aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def bind(eqn: Any, values: Sequence[Array]) -> list[Array]:
    """Evaluate one equation on ``values``, as ``jax.core.eval_jaxpr`` does."""
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: Sequence[Any] = ()
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        subfuns, params = params
    out = eqn.primitive.bind(*subfuns, *values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def user_frame(eqn: Any) -> str | None:
    """The innermost frame of the user's code that made ``eqn``, as ``file:line (function)``
    (``None`` for an equation traced inside a library, such as a cached ``jnp`` function)."""
    traceback = getattr(eqn.source_info, "traceback", None)
    frames = getattr(traceback, "frames", None) or []
    inside = (os.sep + "jax" + os.sep, os.sep + "jaxlib" + os.sep, os.sep + "matcalc_jax" + os.sep)
    for frame in frames:
        if not any(part in frame.file_name for part in inside):
            return f"{frame.file_name}:{frame.line_num} ({frame.function_name})"
    return None


@dataclass
class Context:
    """The state of one transform: the rule table, the rule for a primitive without one
    (``None``: an error), and where we are (the calls we are inside, for error messages)."""

    rules: dict[str, Rule]
    relevant: dict[str, Callable[[Any], list[int]]]
    fallback: Rule | None = None
    path: tuple[str, ...] = ()
    frame: str | None = None

    def where(self, eqn: Any) -> str:
        """Where ``eqn`` sits in the user's program: their line (or that of the enclosing
        call, for a library function's inside) and the calls it is nested in."""
        inside = " inside " + " > ".join(self.path) if self.path else ""
        return f"at {user_frame(eqn) or self.frame or 'an unknown line'}{inside}"

    def inside(self, name: str, eqn: Any = None) -> Context:
        """The context of a call's inner program (``name``, made by the call ``eqn``)."""
        frame = (user_frame(eqn) if eqn is not None else None) or self.frame
        return Context(self.rules, self.relevant, self.fallback, (*self.path, name), frame)

    def run(
        self,
        jaxpr: Any,
        consts: Sequence[Any],
        values: Sequence[Array],
        operators: Sequence[Operator],
    ) -> tuple[list[Array], list[Operator]]:
        """Interpret an open ``jaxpr`` on ``consts`` and ``values`` whose Jacobians are
        ``operators`` (``None`` for a constant)."""
        needed = self._needed(jaxpr)
        env: dict[Any, Array] = {}
        jacobians: dict[Any, JacobianOperator] = {}

        def read(var: Any) -> Array:
            return var.val if isinstance(var, jex_core.Literal) else env[var]

        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = value
        for var, value, op in zip(jaxpr.invars, values, operators, strict=True):
            env[var] = value
            if op is not None and var in needed:
                jacobians[var] = op
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            positions = self._positions(eqn)
            in_ops = [
                jacobians.get(v) if k in positions and not isinstance(v, jex_core.Literal) else None
                for k, v in enumerate(eqn.invars)
            ]
            if not any(v in needed for v in eqn.outvars) or all(op is None for op in in_ops):
                outs, out_ops = bind(eqn, ins), [None] * len(eqn.outvars)
            else:
                outs, out_ops = self._apply(eqn, ins, in_ops)
            for var, value, op in zip(eqn.outvars, outs, out_ops, strict=True):
                if isinstance(var, jex_core.DropVar):
                    continue
                env[var] = value
                if op is not None and is_float(var):
                    jacobians[var] = op
        outs = [read(v) for v in jaxpr.outvars]
        out_ops = [
            None if isinstance(v, jex_core.Literal) else jacobians.get(v) for v in jaxpr.outvars
        ]
        return outs, out_ops

    def _positions(self, eqn: Any) -> set[int]:
        relevant = self.relevant.get(eqn.primitive.name)
        positions = range(len(eqn.invars)) if relevant is None else relevant(eqn)
        return {k for k in positions if is_float(eqn.invars[k])}

    def _needed(self, jaxpr: Any) -> set[Any]:
        needed = {v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal)}
        for eqn in reversed(jaxpr.eqns):
            if any(v in needed for v in eqn.outvars):
                for k in self._positions(eqn):
                    if not isinstance(eqn.invars[k], jex_core.Literal):
                        needed.add(eqn.invars[k])
        return needed

    def _apply(
        self, eqn: Any, ins: list[Array], in_ops: list[Operator]
    ) -> tuple[list[Array], list[Operator]]:
        name = eqn.primitive.name
        rule = self.rules.get(name)
        what = f"the primitive {name!r}"
        if rule is not None:
            try:
                return rule(self, eqn, ins, in_ops)
            except NoRule as uncovered:
                what += f" {uncovered.reason}"
        if self.fallback is not None:
            return self.fallback(self, eqn, ins, in_ops)
        raise UnsupportedPrimitiveError(
            f"matcalc_jax.jacobian: no rule for {what} {self.where(eqn)}; "
            f"the supported primitives are {', '.join(sorted(self.rules))}. Pass "
            "fallback='autodiff' to derive this primitive's local Jacobian from JAX's jvp/vjp "
            "(listed in J.fallbacks), or rewrite that part of the program."
        )
