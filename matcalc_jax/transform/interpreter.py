"""The interpreter: a loop over a jaxpr's equations that carries, beside every value, its
Jacobian with respect to the argument as an operator.

The argument starts as the identity. Each equation's rule (``.rules``) builds the
Jacobians of its outputs from those of its inputs, the seed's chain rule
``dz/dx = (dz/dy)(dy/dx)`` applied by ``matcalc_jax.operators.compose``, whose registered
rules keep the structure. A value that does not depend on the argument carries ``None`` and
costs nothing. Before the loop, a backward pass marks the values whose Jacobians the outputs
need; a factorization that only feeds a solver's preconditioner, or anything under
``stop_gradient``, is evaluated and never differentiated.

Two checks run on every equation. A primitive whose rule is not written for complex values
(``COMPLEX``) meets one as a primitive without a rule: a complex intermediate is never
taken for a constant. And every Jacobian a rule returns has the shape and dtype of the
equation's output, and the argument's shape on its input side (``check_rule_output``): a
mismatch names the primitive and the rule instead of surfacing later as a wrong product.
"""

from __future__ import annotations

import dataclasses
import os
import site
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.extend import core as jex_core

from matcalc_jax.operators.base import Composition, JacobianOperator
from matcalc_jax.operators.complex_maps import reads_half_spectrum
from matcalc_jax.operators.index_maps import ChangeType

Operator = JacobianOperator | None
#: rule(context, equation, input values, input Jacobians) -> (output values, output Jacobians)
Rule = Callable[["Context", Any, list[Array], list[Operator]], tuple[list[Array], list[Operator]]]

FALLBACKS = (None, "autodiff")


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive of the program has no rule, and no fallback was asked for."""


class NotLinear(Exception):  # noqa: N818  (a signal, as NoRule)
    """Raised in a context that must be linear (a custom_vjp backward rule in its
    cotangent) at an equation that is not a linear map of its varying operands."""


class RuleOutputError(AssertionError):
    """A rule returned a Jacobian whose shapes or dtype are not those of its equation: a
    defect of the rule, named with its primitive."""


#: Primitives linear in each operand that add a constant operand in (g + c, a pad value, an
#: update's background): affine, not linear, unless the constant is 0.
ADDITIVE = frozenset(
    ("add", "add_any", "sub", "concatenate", "select_n", "pad", "dynamic_update_slice",
     "scatter", "scatter-add", "complex", "stack")
)  # fmt: skip


def adds_a_constant(eqn: Any) -> bool:
    """Whether a parameter adds a constant in: a gather's fill value (NaN by default) at
    an index out of bounds."""
    if eqn.primitive.name != "gather":
        return False
    mode = str(eqn.params.get("mode", ""))
    fill = eqn.params.get("fill_value")
    return "FILL" in mode.upper() and not (fill is not None and fill == 0)


#: Linear primitives whose outputs are made by a program of their own (a call, a loop, a
#: branch): 0 operands do not make them 0 (a branch may return a constant).
OPAQUE_WHEN_LINEAR = frozenset(
    ("cond", "while", "scan", "pjit", "jit", "closed_call", "core_call", "eval_jaxpr", "remat",
     "remat2", "checkpoint", "custom_linear_solve")
)  # fmt: skip


def nonzero(value: Array) -> bool:
    """Whether a value is concrete and not all 0 (a traced one is not known to be)."""
    return not isinstance(value, jax.core.Tracer) and bool(np.any(np.asarray(value) != 0))


def _floats(ins: list[Array], in_ops: list[Any]) -> list[Array]:
    return [
        value
        for value, op in zip(ins, in_ops, strict=True)
        if op is None and jnp.issubdtype(jnp.result_type(value), jnp.inexact)
    ]


class _Everything:
    def __contains__(self, item: Any) -> bool:
        return True


class NoRule(Exception):  # noqa: N818  (a signal between a rule and the interpreter)
    """Raised by a rule for a case of its primitive it does not cover (``reason`` says
    which); the interpreter then treats the equation as a primitive without a rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_float(var: Any) -> bool:
    """True for a value whose Jacobian the transform tracks: a real or complex
    floating-point array (integers, booleans and keys carry none)."""
    dtype = getattr(var.aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def is_complex(var: Any) -> bool:
    """True for a complex value (``var`` a jaxpr variable)."""
    dtype = getattr(var.aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating)


def from_real_argument(op: JacobianOperator) -> JacobianOperator:
    """The Jacobian of a complex value as a map from the (real) argument: ``op`` after the
    argument's cast to complex, unless ``op`` already starts with such a map on every path
    (``_starts_real_to_complex``). Every Jacobian the transform carries maps from the
    argument, which is real, so a complex one is read this way: ``vm`` must take the real
    part at the argument, as ``jax.vjp`` does, on every path, where a rule may have built
    the map from matrices that no longer say so (a loop's carry multiplied out) or summed
    maps of which only some do (the product rule of ``dot(x, exp(i x))``)."""
    if not jnp.issubdtype(op.dtype, jnp.complexfloating) or _starts_real_to_complex(op):
        return op
    shape = op.in_shape
    real = jnp.finfo(op.dtype).dtype.name
    return Composition(op, ChangeType(shape, shape, jnp.dtype(op.dtype).name, real, op.layout))


def _starts_real_to_complex(op: JacobianOperator) -> bool:
    """True when the complex ``op``'s ``vm`` takes the real part on every path from its
    output to the argument: a real-to-complex map (``real_to_complex``) where the path
    turns complex, in a composition or in each part of a sum, blocks, a scaling."""
    if isinstance(op, Composition):
        inner_is_complex = jnp.issubdtype(op.inner.dtype, jnp.complexfloating)
        return _starts_real_to_complex(op.inner if inner_is_complex else op.outer)
    children = op.children()
    if not children:
        return op.real_to_complex
    return all(
        jnp.issubdtype(child.dtype, jnp.complexfloating) and _starts_real_to_complex(child)
        for child in children
    )


def check_rule_output(
    eqn: Any, in_shape: tuple[int, ...], out_ops: Sequence[Any], rule: str
) -> None:
    """Every Jacobian ``rule`` returned for ``eqn`` maps tangents of the argument
    (``in_shape``) to tangents of shape and dtype of the equation's output."""
    if len(out_ops) != len(eqn.outvars):
        raise RuleOutputError(
            f"matcalc_jax.jacobian: the rule {rule} for the primitive "
            f"{eqn.primitive.name!r} returned {len(out_ops)} Jacobian(s) for "
            f"{len(eqn.outvars)} output(s)"
        )
    for k, (var, op) in enumerate(zip(eqn.outvars, out_ops, strict=True)):
        if op is None or not is_float(var):
            continue
        aval = var.aval
        got = (tuple(op.out_shape), jnp.dtype(op.dtype), tuple(op.in_shape))
        expected = (tuple(aval.shape), jnp.dtype(aval.dtype), tuple(in_shape))
        if got != expected:
            raise RuleOutputError(
                f"matcalc_jax.jacobian: the rule {rule} for the primitive "
                f"{eqn.primitive.name!r} returned for output {k} a {type(op).__name__} "
                f"{got[0]} <- {got[2]} of {got[1]}; the equation needs {expected[0]} <- "
                f"{expected[2]} of {expected[1]}"
            )


def bind(eqn: Any, values: Sequence[Array]) -> list[Array]:
    """Evaluate one equation on ``values``, as ``jax.core.eval_jaxpr`` does."""
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: Sequence[Any] = ()
    if isinstance(params, tuple):  # older JAX: (subfuns, params)
        subfuns, params = params
    out = eqn.primitive.bind(*subfuns, *values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _library_roots() -> tuple[str, ...]:
    """Where installed libraries live: site-packages (flax, equinox, optax, jax) and the
    standard library."""
    roots = {*site.getsitepackages(), site.getusersitepackages()}
    roots |= {sysconfig.get_paths()[name] for name in ("stdlib", "purelib", "platlib")}
    return tuple(sorted(os.path.realpath(root) + os.sep for root in roots if root))


_LIBRARY_ROOTS = _library_roots()
_LIBRARY_PARTS = tuple(os.sep + name + os.sep for name in ("jax", "jaxlib", "matcalc_jax"))


def _is_library(file_name: str) -> bool:
    real = os.path.realpath(file_name)
    return real.startswith(_LIBRARY_ROOTS) or any(p in file_name for p in _LIBRARY_PARTS)


def _short(file_name: str) -> str:
    """A library file named from its package down (``jax/_src/lax/control_flow/loops.py``)."""
    real = os.path.realpath(file_name)
    for root in _LIBRARY_ROOTS:
        if real.startswith(root):
            return real[len(root) :]
    for part in _LIBRARY_PARTS:
        if part in file_name:
            return file_name[file_name.rindex(part) + 1 :]
    return file_name


#: JAX's own plumbing between a user's call and the primitive: never the function to name.
_PLUMBING = ("traceback_util.py", "source_info_util.py", "partial_eval.py", "core.py",
             "linear_util.py", "api_util.py", "pjit.py")  # fmt: skip


def _calls(frames: Sequence[Any]) -> list[Any]:
    """The library functions a user's call went through, outermost first, at most three."""
    named = [
        frame
        for frame in frames
        if not frame.file_name.endswith(_PLUMBING)
        and "<locals>" not in frame.function_name
        and not frame.function_name.split(".")[-1].startswith("_")
    ]
    return list(reversed(named))[:3]


def _user_frames(eqn: Any) -> tuple[Any, list[Any]] | None:
    """The innermost frame of the user's code that made ``eqn`` and the library functions
    it called on the way (``None`` for an equation traced inside a library only)."""
    traceback = getattr(eqn.source_info, "traceback", None)
    frames = getattr(traceback, "frames", None) or []
    for k, frame in enumerate(frames):  # innermost first
        if not _is_library(frame.file_name):
            return frame, _calls(frames[:k])
    return None


def user_frame(eqn: Any) -> str | None:
    """The innermost frame of the user's code that made ``eqn``, as ``file:line (function)``,
    with the library functions it called on the way (``made by
    jax/_src/lax/control_flow/loops.py (fori_loop) > (scan)``, ``made by
    flax/linen/module.py (Module.apply) > flax/linen/linear.py (Dense.__call__)``); ``None``
    for an equation traced inside a library only, such as a cached ``jnp`` function. Frames
    in installed packages (flax, equinox, optax, jax) and in the standard library are not
    the user's."""
    found = _user_frames(eqn)
    if found is None:
        return None
    frame, calls = found
    place = f"{frame.file_name}:{frame.line_num} ({frame.function_name})"
    parts, previous = [], None
    for call in calls:
        where = _short(call.file_name)
        parts.append(
            f"({call.function_name})" if where == previous else f"{where} ({call.function_name})"
        )
        previous = where
    return f"{place}, made by {' > '.join(parts)}" if parts else place


def called_by(eqn: Any) -> str | None:
    """The library function the user called to make ``eqn`` (``fori_loop`` for a
    ``scan``), or ``None``."""
    found = _user_frames(eqn)
    return found[1][0].function_name if found and found[1] else None


def _inverse_real_dft(eqn: Any) -> bool:
    """Whether ``eqn`` is an inverse real DFT (``lax.fft`` of type ``IRFFT``)."""
    return eqn.primitive.name == "fft" and reads_half_spectrum(eqn.params["fft_type"])


@dataclass
class Context:
    """The state of one transform: the rule table, the rule for a primitive without one
    (``None``: an error), and where we are (the calls we are inside, for error messages)."""

    rules: dict[str, Rule]
    relevant: dict[str, Callable[[Any], list[int]]]
    fallback: Rule | None = None
    path: tuple[str, ...] = ()
    frame: str | None = None
    #: the primitives whose rule holds for complex values
    complex_rules: frozenset[str] = frozenset()
    #: where the fallback ran (``Linearized.describe``), shared by the inner contexts
    fallbacks: list[str] = field(default_factory=list)
    #: when set, the program must be linear in its argument: primitive -> the test of
    #: which operands may vary (``registry.LINEAR``); anything else raises ``NotLinear``
    linear: dict[str, Callable[[list[bool]], bool]] | None = None
    #: constants that are one scalar broadcast (``broadcast_in_dim`` of a 0-d value, as a
    #: gradient's seed is): variable -> the scalar, so that a product with one scales
    #: (``c J``) instead of storing a diagonal of equal entries
    uniform: dict[Any, Array] = field(default_factory=dict)
    #: in a linear context, whether the cotangent is complex (``real``, ``imag``, ``conj``
    #: of it are linear over the reals only)
    complex_cotangent: bool = False

    def _check_linear(
        self, eqn: Any, ins: list[Array], in_ops: list[Operator], varying: list[bool]
    ) -> None:
        """``NotLinear`` unless ``eqn`` is a linear map of its operands that vary (those
        with a Jacobian), with the constants it adds in 0. Not linear: a primitive outside
        ``linear`` (``sign``, ``round``, ``stop_gradient``: their derivative is 0, their
        value is not), an operand that varies where the rule ignores it (a ``while``'s
        condition), a value that is not floating point made from one that varies (``g > 0``,
        an ``argmax``: the branch or index then depends on the cotangent), a ``sort`` by
        a key that varies."""
        name = eqn.primitive.name
        where = self.where(eqn)
        test = self.linear.get(name)
        if test is None or not test([op is not None for op in in_ops]):
            raise NotLinear(f"the primitive {name!r} {where}")
        if any(v and op is None for v, op in zip(varying, in_ops, strict=True)):
            raise NotLinear(f"the primitive {name!r} of a varying operand it ignores {where}")
        if name not in OPAQUE_WHEN_LINEAR and not all(is_float(v) for v in eqn.outvars):
            # (a loop's counter is an integer output: its body's equations are checked)
            raise NotLinear(f"the primitive {name!r} of a varying operand to integers {where}")
        if name == "sort" and any(varying[: eqn.params["num_keys"]]):
            raise NotLinear(f"a sort by a varying key {where}")
        if adds_a_constant(eqn):
            raise NotLinear(f"the primitive {name!r} with a fill value {where}")
        # linear over the reals only, so that no matrix of the rule stands for it: real and
        # conj of a complex cotangent (a complex seed would take imag(I) for 0); imag of any
        # complex value, one made from a real cotangent too (imag(c g): the matrix the
        # operators compose to is not the map's); an inverse real DFT, which reads a half
        # spectrum as a Hermitian whole (drops the imaginary parts of its ends)
        over_the_reals = name == "imag" or (self.complex_cotangent and name in ("real", "conj"))
        if (over_the_reals and is_complex(eqn.invars[0])) or _inverse_real_dft(eqn):
            raise NotLinear(f"the primitive {name!r} of a varying complex value {where}")
        if name in ADDITIVE and any(map(nonzero, _floats(ins, in_ops))):
            # a constant added in (g + 0.1 x) makes the rule affine, not linear (a traced
            # one is judged where the rule ends: bwd(0) must be 0)
            raise NotLinear(f"the primitive {name!r} of a constant {where}")

    def scalar_or_value(self, var: Any, value: Array) -> Array:
        """The scalar ``var`` broadcasts when it is such a constant, else its ``value``."""
        if isinstance(var, jex_core.Literal):
            return value
        return self.uniform.get(var, value)

    def where(self, eqn: Any) -> str:
        """Where ``eqn`` sits in the user's program: their line (or that of the enclosing
        call, for a library function's inside) and the calls it is nested in."""
        inside = " inside " + " > ".join(self.path) if self.path else ""
        return f"at {user_frame(eqn) or self.frame or 'an unknown line'}{inside}"

    def inside(self, name: str, eqn: Any = None) -> Context:
        """The context of a call's inner program (``name``, made by the call ``eqn``; the
        name says which library function made it when that is not the primitive itself,
        ``scan[length 3] from fori_loop``)."""
        frame = (user_frame(eqn) if eqn is not None else None) or self.frame
        maker = called_by(eqn) if eqn is not None else None
        if maker is not None and maker.split(".")[-1] != eqn.primitive.name:
            name = f"{name} from {maker}"
        return dataclasses.replace(self, path=(*self.path, name), frame=frame)

    def run(
        self,
        jaxpr: Any,
        consts: Sequence[Any],
        values: Sequence[Array],
        operators: Sequence[Operator],
    ) -> tuple[list[Array], list[Operator]]:
        """Interpret an open ``jaxpr`` on ``consts`` and ``values`` whose Jacobians are
        ``operators`` (``None`` for a constant)."""
        # In a linear context every value that varies is followed, also one that only
        # reaches a comparison (g > 0 picks a branch: not linear).
        needed = self._needed(jaxpr) if self.linear is None else _Everything()
        env: dict[Any, Array] = {}
        jacobians: dict[Any, JacobianOperator] = {}

        def read(var: Any) -> Array:
            return var.val if isinstance(var, jex_core.Literal) else env[var]

        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = value
        for var, value, op in zip(jaxpr.invars, values, operators, strict=True):
            env[var] = value
            if op is not None and var in needed:
                jacobians[var] = from_real_argument(op)
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            positions = self._positions(eqn)
            in_ops = [
                jacobians.get(v) if k in positions and not isinstance(v, jex_core.Literal) else None
                for k, v in enumerate(eqn.invars)
            ]
            if self.linear is not None:
                varying = [
                    not isinstance(v, jex_core.Literal) and v in jacobians for v in eqn.invars
                ]
                if any(varying):
                    self._check_linear(eqn, ins, in_ops, varying)
            if not any(v in needed for v in eqn.outvars) or all(op is None for op in in_ops):
                outs, out_ops = bind(eqn, ins), [None] * len(eqn.outvars)
            else:
                outs, out_ops = self._apply(eqn, ins, in_ops)
            scalar = eqn.primitive.name == "broadcast_in_dim" and jnp.ndim(ins[0]) == 0
            if scalar and out_ops[0] is None:
                self.uniform[eqn.outvars[0]] = jnp.asarray(ins[0])
            for var, value, op in zip(eqn.outvars, outs, out_ops, strict=True):
                if isinstance(var, jex_core.DropVar):
                    continue
                env[var] = value
                if op is not None and is_float(var):
                    jacobians[var] = from_real_argument(op)
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
        """The variables whose Jacobians the float outputs need (an integer or boolean
        output, ``x > 0`` or an argmax, has none: JAX's float0 tangent)."""
        needed = {v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal) and is_float(v)}
        for eqn in reversed(jaxpr.eqns):
            if any(v in needed for v in eqn.outvars):
                for k in self._positions(eqn):
                    if not isinstance(eqn.invars[k], jex_core.Literal):
                        needed.add(eqn.invars[k])
        return needed

    def _complex_case(self, eqn: Any, in_ops: list[Operator]) -> bool:
        """A complex operand with a Jacobian, or a complex output: a case only the rules
        written for complex values cover."""
        operands = (v for v, op in zip(eqn.invars, in_ops, strict=True) if op is not None)
        return any(is_complex(v) for v in (*operands, *eqn.outvars))

    def _apply(
        self, eqn: Any, ins: list[Array], in_ops: list[Operator]
    ) -> tuple[list[Array], list[Operator]]:
        name = eqn.primitive.name
        rule = self.rules.get(name)
        what = f"the primitive {name!r}"
        if rule is not None and name not in self.complex_rules and self._complex_case(eqn, in_ops):
            what += " on complex values"
            rule = None
        if rule is not None:
            try:
                return self._checked(rule, eqn, ins, in_ops)
            except NoRule as uncovered:
                what += f" {uncovered.reason}"
        if self.fallback is not None:
            return self._checked(self.fallback, eqn, ins, in_ops)
        raise UnsupportedPrimitiveError(
            f"matcalc_jax.jacobian: no rule for {what} {self.where(eqn)}. "
            "matcalc_jax.supported_primitives() lists the primitives with a rule. Pass "
            "fallback='autodiff' to derive this primitive's local Jacobian from JAX's jvp/vjp "
            "(listed in J.fallbacks), or rewrite that part of the program."
        )

    def _checked(
        self, rule: Rule, eqn: Any, ins: list[Array], in_ops: list[Operator]
    ) -> tuple[list[Array], list[Operator]]:
        """``rule`` applied to ``eqn``, its Jacobians checked against the equation's."""
        outs, out_ops = rule(self, eqn, ins, in_ops)
        argument = next(op for op in in_ops if op is not None).in_shape
        check_rule_output(eqn, argument, out_ops, getattr(rule, "__name__", repr(rule)))
        return outs, out_ops
