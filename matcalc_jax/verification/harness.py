"""The equivalence harness: closed form vs jacfwd vs jacrev vs finite differences.

One harness serves the tests, the command line (``matcalc-jax verify``) and the benchmarks.
For each rule, dtype and size it draws the rule's example arguments and checks, each
function jit-compiled:

- ``jacfwd``: the closed form against ``jax.jacfwd`` of the rule's map;
- ``jacrev``: the closed form against ``jax.jacrev``;
- ``eager``: the closed form run eagerly against the same under ``jax.jit``;
- ``denominator``: the closed form with ``layout="denominator"`` against the numerator one
  with its out and in axes swapped. For the rules whose Jacobian does not depend on the
  layout's arithmetic (all but the product and chain rules) the two are bitwise equal; the
  combinators compute the seed's denominator-layout products in the seed's order, so there
  they agree to rounding;
- ``finite_difference`` (float64 only): against central differences of the map, an oracle
  that does not use JAX's autodiff;
- ``structured``: the rule's structured Jacobian (``rule.structured``), ``to_dense()``,
  against the dense closed form;
- ``mv`` / ``vm``: the structured Jacobian's Jacobian-vector and vector-Jacobian products
  against ``jax.jvp`` and ``jax.vjp`` of the map, on random tangents and cotangents;
- ``adjoint``: ``<u, J v>`` against ``<J^T u, v>`` for the structured ``mv`` and ``vm``;
- ``transform`` (catalogue rules): ``matcalc_jax.jacobian(rule.fn)``, the structured
  Jacobian derived from the program, ``to_dense()``, against the closed form;
- ``transform_storage`` (catalogue rules): the entries the derived operator stores over those
  of the hand-written ``rule.structured``, at most 2: the transform rediscovers the structure.

The corpus programs (``source == "program"``) are checked the same way, their closed form
being the transform itself.

For the rules with a closed-form Hessian (scalar maps, ``rule.has_hessian``):

- ``hessian``: the closed-form Hessian against ``jax.hessian`` (forward over reverse);
- ``hessian_structured``: the structured Hessian's ``to_dense()`` against the closed form;
- ``hvp``: the structured Hessian's ``mv`` against autodiff's forward-over-reverse
  Hessian-vector product ``jax.jvp(jax.grad(f))``, on a random direction;
- ``hessian_finite_difference`` (float64 only): against central differences of the
  closed-form gradient (itself checked against differences of the map);
- ``transform_hessian``: ``matcalc_jax.hessian(rule.fn)``, the structured Hessian derived
  from the program, ``to_dense()``, against the closed-form Hessian;
- ``transform_hessian_storage``: the entries it stores over those of the hand-written
  ``rule.hessian_operator``, at most 2.

Errors are normwise relative (``max|a - b| / max|b|``; for the products ``mv``, ``vm``,
``adjoint`` and ``hvp``, relative to the size of their terms, ``max(|J| |v|)``) and compared
with the one tolerance table (``matcalc_jax.verification.tolerance``). In float16 and bfloat16 the
references are computed in float64. Matrix products run at precision "highest", so TF32 on
a GPU is not mistaken for a wrong rule.

A case is one compiled program that computes every array its checks compare (plus one for
the finite differences in float64): ``prepare_case`` compiles it, draws the inputs and
runs the eager closed form; ``run_case`` runs it and compares. ``verify`` prepares
cases ahead on worker threads and runs them one at a time on the calling thread.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import reprlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.extend import core as jex_core

from matcalc_jax import runtime
from matcalc_jax.catalogue import draws, select
from matcalc_jax.catalogue.record import Rule
from matcalc_jax.core.layout import swap_out_in
from matcalc_jax.operators.base import storage
from matcalc_jax.transform import hessian as transform_hessian
from matcalc_jax.transform import jacobian as transform_jacobian
from matcalc_jax.verification import references
from matcalc_jax.verification.processes import WorkerDiedError, ordered_map
from matcalc_jax.verification.programs import ProgramCache, code_digest
from matcalc_jax.verification.tolerance import (
    FINITE_DIFFERENCE_TOLERANCE,
    TOLERANCES,
    tolerance,
)

REFERENCES: tuple[str, ...] = (
    "jacfwd",
    "jacrev",
    "eager",
    "denominator",
    "finite_difference",
    "structured",
    "mv",
    "vm",
    "adjoint",
    "hessian",
    "hessian_structured",
    "hvp",
    "hessian_finite_difference",
    "transform",
    "transform_storage",
    "transform_hessian",
    "transform_hessian_storage",
)
#: The most bytes one case may need, estimated before the run (see ``case_bytes``).
MAX_CASE_BYTES = 4 * 2**30
#: Jacobian-sized arrays a case holds at once, in its reference dtype: the closed form in
#: both layouts, the structured and derived forms densified, jacfwd, jacrev, and copies.
_JACOBIAN_COPIES = 8
#: The most entries the transform may store per entry of the hand-written structured form.
STORAGE_RATIO = 2.0
DTYPES: tuple[str, ...] = ("float32", "float64")
SIZES: tuple[int, ...] = (1, 4, 16)
REPORT_SCHEMA = "matcalc-jax/verify/1"
#: XLA options for the harness's programs. They run once, on arrays of a few hundred
#: entries, so compile time is all their cost: no LLVM optimization; on CPU XLA's
#: elemental emitters rather than its fusion emitters (half the compile time of a case);
#: and the machine code generated in one piece rather than split into parts compiled on
#: several threads (the split costs 10-35% more processor time per program, and ``verify``
#: keeps every core busy already). The operations are the same; the code is slower, which
#: nothing here notices, and a transcendental function may round differently in its last
#: bits, which every check's tolerance holds (both sides of a comparison are in the same
#: program).
FAST_COMPILE: dict[str, Any] = {
    "xla_backend_optimization_level": 0,
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_parallel_codegen_split_count": 1,
}


@functools.cache
def _accepted_options() -> tuple[tuple[str, Any], ...]:
    accepted = []
    for name, value in FAST_COMPILE.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(0.0).compile()
        except jax.errors.JaxRuntimeError:  # an option this jaxlib does not know
            continue
        accepted.append((name, value))
    return tuple(accepted)


def compiler_options() -> dict[str, Any]:
    """The options of ``FAST_COMPILE`` that this jaxlib accepts (a jaxlib without one
    compiles as before rather than failing): the options of every program ``verify``
    compiles."""
    return dict(_accepted_options())


def worker_xla_flags() -> tuple[str, ...]:
    """``XLA_FLAGS`` for ``verify``'s worker processes on a CPU: the CPU options of
    ``compiler_options`` as flags, so that the operations the eager closed forms dispatch
    one by one (a compile each, with no way to pass options) compile as fast as the
    case programs: about a fifth of a cold run. Flags only this jaxlib accepts: XLA stops
    a process whose ``XLA_FLAGS`` names a flag it does not know. Not the optimization
    level: as a process-wide flag it changes the last bits of ``jax.random.normal`` (173 of
    4096 float32 draws on this project's CPU), and a worker would draw other inputs than
    the caller; the emitter and split flags change none (checked: every case's draws)."""
    if jax.default_backend() != "cpu":
        return ()
    return tuple(
        f"--{name}={str(value).lower()}"
        for name, value in compiler_options().items()
        if name.startswith("xla_cpu_")
    )


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison: a rule's closed form against one reference, at one dtype and size."""

    rule: str
    dtype: str
    size: int
    reference: str
    error: float
    tolerance: float
    passed: bool
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Report:
    """The result of ``verify``: every check, and where it ran."""

    checks: tuple[Check, ...]
    environment: dict[str, Any]

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(c.passed for c in self.checks)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """The rules checked, in the order they were checked."""
        return tuple(dict.fromkeys(c.rule for c in self.checks))

    def failures(self) -> tuple[Check, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if not c.passed)

    def rule_passed(self, rule_id: str) -> bool:
        """True when every check of ``rule_id`` passed."""
        return all(c.passed for c in self.checks if c.rule == rule_id)

    def max_error(self, rule_id: str, dtype: str, reference: str) -> float | None:
        """The largest error of ``rule_id`` against ``reference`` at ``dtype`` over all sizes."""
        errors = [
            c.error
            for c in self.checks
            if (c.rule, c.dtype, c.reference) == (rule_id, dtype, reference)
        ]
        if any(math.isnan(error) for error in errors):  # max() would pass over a NaN
            return math.nan
        return max(errors) if errors else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary: schema, environment, verdict, per-rule summary, checks."""
        dtypes = tuple(dict.fromkeys(c.dtype for c in self.checks))
        summary = {
            rule_id: {
                "passed": self.rule_passed(rule_id),
                "max_error": {
                    dtype: {
                        ref: self.max_error(rule_id, dtype, ref)
                        for ref in REFERENCES
                        if self.max_error(rule_id, dtype, ref) is not None
                    }
                    for dtype in dtypes
                },
            }
            for rule_id in self.rule_ids
        }
        return {
            "schema": REPORT_SCHEMA,
            "environment": self.environment,
            "passed": self.passed,
            "rules": summary,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON text; also written to ``path`` when one is given."""
        text = json.dumps(_strict(self.to_dict()), indent=2, allow_nan=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        return text


def _strict(value: Any) -> Any:
    """``value`` with every number a finite JSON number: NumPy scalars as Python floats, an
    infinite or NaN error (a failed check) as the string ``"inf"``, ``"-inf"`` or
    ``"nan"``, which strict JSON parsers accept."""
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    number = float(value)
    if np.isfinite(number):
        return number
    return "nan" if np.isnan(number) else ("inf" if number > 0 else "-inf")


def relative_error(actual: Any, expected: Any, scale: float | None = None) -> float:
    """Normwise relative error ``max|actual - expected| / max|expected|``, in float64 (in
    complex128, with the modulus, for complex arrays).

    ``scale``, when given, replaces ``max|expected|`` (for a product such as J v, whose
    terms can cancel: see ``_product_scales``). Entries that are NaN in both arrays, or the
    same infinity in both, count as equal; any other NaN or inf, or different shapes, give
    ``inf``. A zero scale gives the absolute error.

    >>> relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    0.2
    """
    wide = np.complex128 if np.iscomplexobj(actual) or np.iscomplexobj(expected) else np.float64
    a = np.asarray(actual, dtype=wide)
    b = np.asarray(expected, dtype=wide)
    if a.shape != b.shape:
        return float("inf")
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if not np.all(np.isfinite(a) | same) or not np.all(np.isfinite(b) | same):
        return float("inf")
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
        difference = np.where(same, 0.0, np.abs(a - b))
    if scale is None:
        scale = np.max(np.abs(np.where(np.isfinite(b), b, 0.0)), initial=0.0)
    worst = float(np.max(difference, initial=0.0))
    return worst / float(scale) if scale > 0 else worst


def finite_difference_jacobian(fn: Callable[..., Array], args: Sequence[Any], wrt: int) -> Array:
    """Central-difference Jacobian of ``fn`` with respect to ``args[wrt]``, in float64.

    Numerator layout, ``out.shape + in.shape``. The step for entry k is
    ``eps**(1/3) * (1 + |x_k|)``, which balances truncation (O(h^2)) and rounding
    (O(eps / h)) errors. Needs ``jax_enable_x64``.
    """
    args64 = [jnp.asarray(a, jnp.float64) for a in args]
    return jax.jit(central_differences(fn, wrt), compiler_options=compiler_options())(args64)


def central_differences(fn: Callable[..., Array], wrt: int) -> Callable[[list], Array]:
    """The program behind ``finite_difference_jacobian``, before compilation.

    All 2n perturbed points go through ``fn`` in one vmapped call, x + h e_k and x - h e_k
    stacked, never two: jaxlib 0.10's CPU LAPACK kernels (LU, triangular solves, ...) split
    a large batch over XLA's intra-op thread pool and block a pool thread until it is done,
    and two such calls that XLA runs at once on a 2-thread pool wait for each other forever.
    One batched call cannot.
    """

    def at(point: Array, call: list[Array]) -> Array:
        call = list(call)
        call[wrt] = point.reshape(jnp.shape(call[wrt]))
        return fn(*call)

    def central(call: list[Array]) -> Array:
        with jax.default_matmul_precision("highest"):
            return differences(call)

    def differences(call: list[Array]) -> Array:
        x_shape = jnp.shape(call[wrt])
        flat = call[wrt].reshape(-1)
        steps = np.finfo(np.float64).eps ** (1 / 3) * (1 + jnp.abs(flat))
        directions = jnp.eye(flat.size, dtype=jnp.float64) * steps[:, None]
        points = jnp.concatenate([flat[None, :] + directions, flat[None, :] - directions])
        plus, minus = jnp.split(jax.vmap(at, in_axes=(0, None))(points, call), 2)
        columns = (plus - minus) / (2 * steps.reshape((-1,) + (1,) * (plus.ndim - 1)))
        jacobian = jnp.moveaxis(columns, 0, -1)  # out.shape + (in.size,)
        return jacobian.reshape(jacobian.shape[:-1] + x_shape)

    return central


def reference_dtype(dtype: Any) -> Any:
    """The dtype the references are computed in: float64 for float16 and bfloat16 (their
    own autodiff would carry their own rounding), else ``dtype`` itself."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float64) if dtype.itemsize < 4 else dtype


def draw_case(rule: Rule, dtype: Any, size: int, key: Array) -> dict[str, Any]:
    """The random inputs of one case: the rule's example arguments, a tangent v and a
    cotangent u for the products, and a direction for the Hessian-vector product.

    Drawn eagerly, outside the case's compiled program: ``jax.random`` compiles one small
    program per length and dtype, which ``draws`` shares across shapes and rules, where
    drawing inside every case's program would compile the generator again each time (most
    of a case's compile time).
    A warm ``verify`` reads the same numbers from its cache of programs.
    """
    args = rule.example(key, dtype, size)
    chex.assert_type(args, jnp.dtype(dtype))  # an example in another dtype tests nothing
    x = jnp.asarray(args[rule.wrt])
    out = jax.eval_shape(rule.fn, *args)
    k_tangent, k_cotangent = jax.random.split(jax.random.fold_in(key, 7))
    inputs = {
        "args": args,
        "tangent": draws.normal(k_tangent, x.shape, x.dtype),
        "cotangent": draws.normal(k_cotangent, out.shape, out.dtype),
    }
    if rule.has_hessian:
        inputs["hessian_tangent"] = draws.normal(jax.random.fold_in(key, 11), x.shape, x.dtype)
    return inputs


@functools.lru_cache(maxsize=32)
def _case_program(rule: Rule, dtype: Any, size: int, transform: bool, digest: str) -> Callable:
    """``case_function``, jit-compiled (without LLVM optimization: see
    ``compiler_options``) and cached per case, for runs without a cache of programs; per
    ``record_digest`` too, as JAX keeps what it traced per function: a helper of the rule
    replaced in the process must be traced again, not served the program it gave before."""
    return jax.jit(case_function(rule, dtype, size, transform), compiler_options=compiler_options())


def case_function(rule: Rule, dtype: Any, size: int, transform: bool = True) -> Callable:
    """The program of one case, before compilation: from the inputs of ``draw_case`` it computes
    every array the checks compare, the closed forms in ``dtype`` and the references in
    ``reference_dtype``.

    One program per case rather than one per check: a program's compile time has a fixed
    part, and the pieces share their arguments. The arrays are the same as when each piece
    is compiled apart. ``transform`` adds ``matcalc_jax.jacobian(rule.fn)`` for a catalogue
    rule.
    """
    reference = reference_dtype(dtype)
    transform = transform and rule.source != "program"

    def of_x(call: Sequence[Any]) -> Callable[[Array], Array]:
        return lambda x: rule.fn(*call[: rule.wrt], x, *call[rule.wrt + 1 :])

    def program(inputs: dict[str, Any]) -> dict[str, Any]:
        with jax.default_matmul_precision("highest"):
            return arrays(inputs)

    def arrays(inputs: dict[str, Any]) -> dict[str, Any]:
        args, tangent, cotangent = inputs["args"], inputs["tangent"], inputs["cotangent"]
        wide = tuple(jnp.asarray(a).astype(reference) for a in args)
        wide_tangent = tangent.astype(reference)
        wide_cotangent = cotangent.astype(reference)
        op = rule.structured(*args)
        computed = {
            "closed": rule.jacobian(*args, layout="numerator"),
            "closed_denominator": rule.jacobian(*args, layout="denominator"),
            "structured": op.to_dense(),
            "mv": op.mv(tangent),
            "vm": op.vm(cotangent),
            "jacfwd": rule.jacfwd(*wide),
            "jacrev": rule.jacrev(*wide),
            "jvp": jax.jvp(of_x(wide), (wide[rule.wrt],), (wide_tangent,))[1],
            "vjp": jax.vjp(of_x(wide), wide[rule.wrt])[1](wide_cotangent)[0],
        }
        if transform:
            computed["transform"] = transform_jacobian(rule.fn, rule.wrt)(*args).to_dense()
            if rule.has_hessian:
                hessian = transform_hessian(rule.fn, rule.wrt)(*args)
                computed["transform_hessian"] = hessian.to_dense()
        if rule.has_hessian:
            hessian_tangent = inputs["hessian_tangent"]
            hessian_op = rule.hessian_operator(*args)
            computed |= {
                "hessian": rule.hessian(*args),
                "hessian_structured": hessian_op.to_dense(),
                "hvp": hessian_op.mv(hessian_tangent),
                "jax_hessian": references.jax_hessian(rule, *wide),
                "jax_hvp": references.jax_hvp(
                    rule, *wide, tangent=hessian_tangent.astype(reference)
                ),
            }
        return computed

    return program


def _flat_magnitude(array: Any, in_ndim: int) -> np.ndarray:
    """|array| in float64 as a matrix (out, in): the last ``in_ndim`` axes are the input's."""
    a = np.abs(np.asarray(array, dtype=np.float64))
    in_size = int(np.prod(a.shape[a.ndim - in_ndim :], dtype=np.int64))
    return a.reshape(-1, in_size)


def _product_scales(jacobian: Any, tangent: Any, cotangent: Any, in_ndim: int) -> dict:
    """Scales for the products of a Jacobian J: max(|J| |v|), max(|J|^T |u|) and
    |u|^T |J| |v|, the sizes of the sums that J v, J^T u and <u, J v> add up.

    A product can cancel to far below these (J v of a single entry with terms of both
    signs); its rounding error cannot, so the error of a product is measured against them.
    A wrong rule is still wrong by a fraction of order one of the same scale.
    """
    J = _flat_magnitude(jacobian, in_ndim)
    v = np.abs(np.asarray(tangent, dtype=np.float64)).reshape(-1)
    u = np.abs(np.asarray(cotangent, dtype=np.float64)).reshape(-1)
    Jv = J @ v
    return {
        "mv": float(np.max(Jv, initial=0.0)),
        "vm": float(np.max(u @ J, initial=0.0)),
        "adjoint": float(u @ Jv),
    }


@dataclasses.dataclass(frozen=True)
class PreparedCase:
    """One case (rule, dtype, size) ready to run: its programs compiled, its inputs drawn
    and, if asked, its closed form run eagerly."""

    rule: Rule
    dtype: str
    size: int
    inputs: dict[str, Any]
    program: Any
    finite_differences: tuple[tuple[str, Any], ...]
    eager_jacobian: Any = None
    #: reference -> (entries the transform's operator stores, entries the rule's own stores)
    storage: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


def prepare_case(
    rule: Rule,
    dtype: str,
    size: int,
    key: Array,
    *,
    eager: bool = True,
    transform: bool = True,
    programs: ProgramCache | None = None,
) -> PreparedCase:
    """Compile every program of one case, draw its inputs and (``eager``) run its closed
    form op by op; run no compiled program. With ``programs``, the compiled programs, the
    inputs, the storage counts and the eager closed form's result are read from that cache
    when it holds them (and kept there): under its key, which fixes the package's source,
    JAX, the machine and the inputs' seed, they are what this call would compute.

    Thread-safe: ``verify`` prepares cases ahead in worker threads (XLA compiles with
    the GIL released) while the main thread runs the compiled programs, one at a time. The
    eager closed forms may run beside them: they factorize one matrix at a time, never a
    batch (see ``central_differences``).
    """
    dtype, size = jnp.dtype(dtype), int(size)
    rule.check_example(dtype, size)  # a bad dtype or size, or no x64, raises here
    if reference_dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"rule {rule.id!r}: dtype={dtype.name} is checked against float64 references; "
            "call jax.config.update('jax_enable_x64', True) first"
        )
    name = (rule.id, record_digest(rule), dtype.name, size, transform)

    def compiled(kind: str, function: Callable, arguments: Any) -> Any:
        if programs is None:
            return jax.jit(function, compiler_options=compiler_options()).lower(arguments).compile()
        return programs.compiled((kind, *name), function, arguments, compiler_options())

    if programs is None:
        inputs = draw_case(rule, dtype, size, key)
        program = _case_program(rule, dtype, size, transform, name[1]).lower(inputs).compile()
    else:
        seed = tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())
        inputs = programs.arrays(
            ("inputs", *name[:4], seed), lambda: draw_case(rule, dtype, size, key)
        )
        program = compiled("case", case_function(rule, dtype, size, transform), inputs)
    differences: list[tuple[str, Any]] = []
    if dtype == jnp.float64:
        maps = [("finite_difference", rule.fn)]
        if rule.has_hessian:
            maps.append(("hessian_finite_difference", rule.jacobian))
        call = list(inputs["args"])
        for kind, fn in maps:
            differences.append((kind, compiled(kind, central_differences(fn, rule.wrt), call)))
    stored: dict[str, tuple[int, int]] = {}
    if transform and rule.source != "program":
        args = inputs["args"]

        def count() -> dict[str, tuple[int, int]]:
            """Entries of (the transform's operator, the rule's own)."""
            derived = jax.eval_shape(transform_jacobian(rule.fn, rule.wrt), *args)
            own = jax.eval_shape(rule.structured, *args)
            counts = {"transform_storage": (storage(derived), storage(own))}
            if rule.has_hessian:
                derived = jax.eval_shape(transform_hessian(rule.fn, rule.wrt), *args)
                own = jax.eval_shape(rule.hessian_operator, *args)
                counts["transform_hessian_storage"] = (storage(derived), storage(own))
            return counts

        stored = count() if programs is None else programs.value(("storage", *name), count)

    def run_eagerly() -> Array:
        with jax.default_matmul_precision("highest"):
            return jax.block_until_ready(rule.jacobian(*inputs["args"]))

    eager_jacobian = None
    if eager and programs is None:
        eager_jacobian = run_eagerly()
    elif eager:  # what the same code gave these inputs op by op, kept like a program
        eager_jacobian = programs.arrays(("eager", *name[:4], seed), run_eagerly)
    return PreparedCase(
        rule, dtype.name, size, inputs, program, tuple(differences), eager_jacobian, stored
    )


def record_digest(rule: Rule) -> str:
    """``code_digest`` of a rule record's functions: what it computes, as this process
    holds it (a record or a helper replaced in the process gives another digest)."""
    return code_digest(
        rule.fn, rule.make_example, rule.closed_form, rule.structured_form,
        rule.hessian_form, rule.structured_hessian_form,
    )  # fmt: skip


def check_rule(
    rule: Rule,
    dtype: str,
    size: int,
    key: Array,
    *,
    eager: bool = True,
    stage: Callable[[str], None] | None = None,
) -> list[Check]:
    """Every check of one rule at one dtype and size (x64 must be on for float64, float16
    and bfloat16, whose references are computed in float64).

    ``eager=False`` leaves out the eager-vs-jit check, the slowest one (op-by-op dispatch
    compiles each primitive for each new shape); ``verify`` runs it once per rule and dtype.
    ``stage`` is called with the name of each step before it runs (for progress and the
    watchdog).
    """
    stage = stage or (lambda name: None)
    stage("compiling")
    return run_case(prepare_case(rule, dtype, size, key, eager=eager), stage=stage)


def run_case(case: PreparedCase, *, stage: Callable[[str], None] | None = None) -> list[Check]:
    """Run the compiled programs of one case and compare what they give (see the module's
    docstring for the checks)."""
    stage = stage or (lambda name: None)
    rule, dtype, size = case.rule, case.dtype, case.size
    inputs = case.inputs
    stage("closed forms and autodiff")
    arrays = jax.device_get(inputs | case.program(inputs))
    args = arrays["args"]
    jacobian = arrays["closed"]
    tol = tolerance(dtype)
    in_ndim = np.ndim(args[rule.wrt])
    out_ndim = np.ndim(jacobian) - in_ndim

    def record(
        reference: str, expected: Any, bound: float, actual: Any = jacobian, scale: Any = None
    ) -> Check:
        detail = ""
        if np.shape(actual) != np.shape(expected):
            detail = f"shape {np.shape(actual)} != {np.shape(expected)}"
        elif np.asarray(actual).dtype != jnp.dtype(dtype):
            detail = f"dtype {np.asarray(actual).dtype} != {dtype}"
        error = relative_error(actual, expected, scale)
        passed = not detail and error <= bound
        return Check(rule.id, dtype, size, reference, error, bound, passed, detail)

    scales = _product_scales(arrays["jacfwd"], arrays["tangent"], arrays["cotangent"], in_ndim)
    forward = np.vdot(np.asarray(arrays["cotangent"], np.float64), arrays["mv"])  # <u, J v>
    backward = np.vdot(np.asarray(arrays["vm"], np.float64), arrays["tangent"])  # <J^T u, v>
    checks = [
        record("jacfwd", arrays["jacfwd"], tol),
        record("jacrev", arrays["jacrev"], tol),
        record(
            "denominator",
            swap_out_in(jacobian, out_ndim),
            tol,
            actual=arrays["closed_denominator"],
        ),
        record("structured", jacobian, tol, actual=arrays["structured"]),
        record("mv", arrays["jvp"], tol, actual=arrays["mv"], scale=scales["mv"]),
        record("vm", arrays["vjp"], tol, actual=arrays["vm"], scale=scales["vm"]),
        record(
            "adjoint",
            np.asarray(backward, dtype=arrays["mv"].dtype),
            tol,
            actual=np.asarray(forward, dtype=arrays["mv"].dtype),
            scale=scales["adjoint"],
        ),
    ]
    if rule.has_hessian:
        hessian = arrays["hessian"]
        hvp_scale = _product_scales(
            arrays["jax_hessian"], arrays["hessian_tangent"], arrays["hessian_tangent"], in_ndim
        )["mv"]
        checks += [
            record("hessian", arrays["jax_hessian"], tol, actual=hessian),
            record("hessian_structured", hessian, tol, actual=arrays["hessian_structured"]),
            record("hvp", arrays["jax_hvp"], tol, actual=arrays["hvp"], scale=hvp_scale),
        ]
    if "transform" in arrays:
        checks.append(record("transform", jacobian, tol, actual=arrays["transform"]))
    if "transform_hessian" in arrays:
        checks.append(
            record("transform_hessian", arrays["hessian"], tol, actual=arrays["transform_hessian"])
        )
    for reference, (derived, own) in case.storage.items():
        ratio = derived / own if own else (0.0 if derived == 0 else float("inf"))
        whose = "rule.structured" if reference == "transform_storage" else "rule.hessian_operator"
        detail = f"stores {derived} entries; {whose} stores {own}"
        passed = ratio <= STORAGE_RATIO
        checks.append(Check(rule.id, dtype, size, reference, ratio, STORAGE_RATIO, passed, detail))
    if case.eager_jacobian is not None:
        checks.append(record("eager", jacobian, tol, actual=case.eager_jacobian))
    for name, program in case.finite_differences:
        stage(name.replace("_", " "))
        fd = program(list(inputs["args"]))
        actual = arrays["hessian"] if name == "hessian_finite_difference" else jacobian
        checks.append(record(name, fd, FINITE_DIFFERENCE_TOLERANCE, actual=actual))
    return checks


@dataclasses.dataclass(frozen=True)
class Progress:
    """What ``verify`` is doing, sent to its ``progress`` callback.

    ``kind`` is ``"stage"`` before each compiled program of a case runs (``stage`` names it),
    and ``"rule"`` once a rule is done at every dtype and size (``checks`` are its checks,
    ``elapsed_s`` the seconds it took; in worker processes, the sum of its tasks' seconds).
    """

    kind: str
    rule: str
    dtype: str
    size: int
    stage: str
    cases_done: int
    cases_total: int
    rule_index: int
    rule_count: int
    checks: tuple[Check, ...] = ()
    elapsed_s: float = 0.0


def case_bytes(rule: Rule, dtype: str, size: int, digests: dict[int, str] | None = None) -> int:
    """An estimate of the bytes one case needs, in the reference dtype: ``_JACOBIAN_COPIES``
    arrays of the Jacobian's size (out x in entries; a rule with a Hessian counts its
    n x n arrays too), or, if larger, the map's largest intermediate array times
    max(in, out) (jacfwd carries a tangent per input through each intermediate, jacrev a
    cotangent per output: a program whose inner arrays outgrow its Jacobian). Read from the
    shapes alone (traced once per rule and size, whatever the dtype): nothing is computed.
    Kept in ``KNOWN_ENTRIES``; ``digests`` holds the records' digests by ``id(rule)`` for
    the cases of one request, each record digested once."""
    key = entries_key(rule, size, digests)
    entries = KNOWN_ENTRIES.get(key)
    if entries is None:
        try:
            entries = _case_entries(rule, size)
        except TypeError:  # a rule whose fields do not hash: read its shapes again
            entries = _case_entries.__wrapped__(rule, size)
        KNOWN_ENTRIES[key] = entries
    return entries * jnp.dtype(reference_dtype(dtype)).itemsize * _JACOBIAN_COPIES


#: ``case_bytes``'s entries by ``entries_key``: those this process read from the shapes,
#: and those a caller kept from an earlier run (``matcalc-jax verify`` keeps them in its
#: cache directory: reading 159 rules' shapes took a warm run's first 1.3 s).
KNOWN_ENTRIES: dict[str, int] = {}


def entries_key(rule: Rule, size: int, digests: dict[int, str] | None = None) -> str:
    """What ``case_bytes``'s entries depend on: the rule, its record's code
    (``record_digest``, taken from ``digests`` by the rule's id() when there), the size, and
    JAX (its jaxprs' intermediate arrays)."""
    digest = digests.get(id(rule)) if digests is not None else None
    if digest is None:
        digest = record_digest(rule)
        if digests is not None:
            digests[id(rule)] = digest
    return f"{rule.id}|{digest}|{size}|jax {jax.__version__}"


@functools.lru_cache(maxsize=4096)
def _case_entries(rule: Rule, size: int) -> int:
    """The entries ``case_bytes`` counts, from the shapes of ``rule`` at ``size``."""
    # The shapes do not depend on the dtype: read them in float32 (no 64-bit mode needed).
    args = jax.eval_shape(lambda: rule.example(jax.random.key(0), jnp.float32, size))
    program = jax.make_jaxpr(rule.fn, return_shape=True)
    jaxpr, out = program(*args)
    x_size, out_size = math.prod(args[rule.wrt].shape), math.prod(out.shape)
    entries = out_size * x_size  # Python integers: no overflow
    if rule.has_hessian:
        entries += x_size**2
    return max(entries, _largest_array(jaxpr.jaxpr) * max(x_size, out_size))


def _largest_array(jaxpr: Any) -> int:
    """The entries of the largest array a jaxpr (or a jaxpr inside one) defines."""
    largest = 0
    for equation in jaxpr.eqns:
        for var in equation.outvars:
            largest = max(largest, math.prod(getattr(var.aval, "shape", ())))
        for inner in jex_core.jaxprs_in_params(equation.params):
            largest = max(largest, _largest_array(inner))
    return largest


def prepare_in_worker(
    rule: Rule,
    dtype: str,
    size: int,
    key: Array,
    last: bool,
    programs: ProgramCache | None = None,
) -> PreparedCase:
    """``prepare_case`` in a worker thread, in the 64-bit mode the case needs (the mode is
    thread-local: the caller's does not reach the pool's threads)."""
    with runtime.x64(reference_dtype(dtype) == jnp.float64):
        return prepare_case(rule, dtype, size, key, eager=last, transform=last, programs=programs)


#: The largest size ``verify`` takes: XLA and LAPACK count an array's rows in 32 bits, and
#: no rule's Jacobian at this size fits in memory anyway (``case_bytes`` refuses it first).
MAX_SIZE = 2**31 - 1


def checked_dtypes(dtypes: Iterable[Any] | str, what: str = "verify") -> tuple[str, ...]:
    """The names of the dtypes ``verify`` is asked for, each once, in order: real floating
    dtypes of the tolerance table (a name, a NumPy or JAX dtype; one may be passed alone).
    Anything else, a complex dtype among them (the rules are real maps), is a ``ValueError``
    naming it (and ``what`` asked for it).

    >>> checked_dtypes(["float32", "float32", jnp.bfloat16])
    ('float32', 'bfloat16')
    """
    known = ", ".join(sorted(TOLERANCES))
    listed = [dtypes] if isinstance(dtypes, str) or not isinstance(dtypes, Iterable) else dtypes
    names = []
    for dtype in listed:
        try:
            name = None if dtype is None else np.dtype(jnp.dtype(dtype)).name
        except TypeError:
            name = None
        if name not in TOLERANCES:  # a complex dtype's name is not there
            raise ValueError(f"{what}: dtype {dtype!r} is not one it checks; expected {known}")
        names.append(name)
    if not names:
        raise ValueError(f"{what}: dtypes is empty; expected one or more of {known}")
    return tuple(dict.fromkeys(names))


def checked_sizes(sizes: Iterable[Any] | int, what: str = "verify") -> tuple[int, ...]:
    """``sizes`` as positive integers up to ``MAX_SIZE``, each once (one may be passed
    alone; 4.0 is 4, 2.5 and "4" are refused)."""
    listed = [sizes] if not isinstance(sizes, Iterable) or isinstance(sizes, str) else sizes
    listed = list(listed)

    def whole(size: Any) -> bool:
        if isinstance(size, bool):
            return False
        if isinstance(size, (float, np.floating)):
            return math.isfinite(size) and float(size).is_integer() and 1 <= size <= MAX_SIZE
        return isinstance(size, (int, np.integer)) and 1 <= size <= MAX_SIZE

    if not listed or not all(whole(size) for size in listed):
        shown = reprlib.repr(listed)
        raise ValueError(f"{what}: sizes={shown}; expected positive integers up to {MAX_SIZE}")
    return tuple(dict.fromkeys(int(size) for size in listed))


def refuse_oversized(
    what: str,
    cases: Iterable[tuple[Rule, str, int]],
    estimate: Callable[[Rule, str, int], int],
    max_bytes: float,
) -> None:
    """``ValueError`` for the first case (rule, dtype, size) that ``estimate`` says needs
    more than ``max_bytes``: asked before any case runs."""
    for rule, dtype, size in cases:
        needed = estimate(rule, dtype, size)
        if needed > max_bytes:
            raise ValueError(
                f"{what}: rule {rule.id!r} at size {size} ({dtype}) needs about "
                f"{needed / 2**30:.1f} GiB, over the limit of {max_bytes / 2**30:.1f} GiB; "
                "choose a smaller size or raise the limit (--max-gib)"
            )


def _check_arguments(progress: Any, workers: Any, programs: Any) -> None:
    """``ValueError`` or ``TypeError`` naming ``verify``'s argument that is not what it takes."""
    if progress is not None and not callable(progress):
        raise TypeError(f"verify: progress={progress!r}; expected a function or None")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1
    ):
        raise ValueError(f"verify: workers={workers!r}; expected a positive integer or None")
    if programs is not None and not isinstance(programs, (ProgramCache, str, os.PathLike)):
        raise TypeError(
            f"verify: programs={programs!r}; expected a ProgramCache, a directory or None"
        )
    if isinstance(programs, (str, os.PathLike)) and not os.fspath(programs):
        raise ValueError("verify: programs is an empty path; expected a directory")


def checked_request(
    rule_ids: Iterable[str] | str | None,
    dtypes: Iterable[Any] | str = DTYPES,
    sizes: Iterable[int] | int | None = None,
    seed: int = 0,
    max_bytes: float = MAX_CASE_BYTES,
) -> tuple[list[Rule], tuple[str, ...], tuple[int, ...]]:
    """The rules, dtypes and sizes ``verify`` would check, each argument checked as
    ``verify`` checks it: a ``ValueError`` or ``TypeError`` naming the argument (an unknown
    rule id, a bad dtype, size or seed, a case over ``max_bytes``) before any work, so that
    a caller (the command line) can refuse a bad request before it touches a cache."""
    if isinstance(rule_ids, (bytes, bytearray)) or not (
        rule_ids is None or isinstance(rule_ids, (str, Iterable))
    ):
        raise TypeError(f"verify: rule_ids={rule_ids!r}; expected a rule id or a list of them")
    selected = select(rule_ids)
    dtypes = checked_dtypes(dtypes)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (0 <= seed < 2**32):
        raise ValueError(f"verify: seed={seed!r}; expected an integer in [0, 2**32)")
    sizes = SIZES if sizes is None else checked_sizes(sizes)
    if (
        isinstance(max_bytes, bool)
        or not isinstance(max_bytes, (int, float, np.integer, np.floating))
        or not max_bytes > 0
    ):
        raise ValueError(f"verify: max_bytes={max_bytes!r}; expected a positive number")
    cases = [(rule, dtype, size) for rule in selected for dtype in dtypes for size in sizes]
    digests: dict[int, str] = {}  # each rule's record digested once for its cases
    estimate = functools.partial(case_bytes, digests=digests)
    refuse_oversized("verify", cases, estimate, max_bytes)
    return selected, dtypes, sizes


def verify(
    rule_ids: Iterable[str] | None = None,
    *,
    dtypes: Iterable[str] = DTYPES,
    sizes: Iterable[int] | None = None,
    seed: int = 0,
    progress: Callable[[Progress], None] | None = None,
    workers: int | None = None,
    max_bytes: int = MAX_CASE_BYTES,
    programs: ProgramCache | str | os.PathLike | None = None,
    processes: int = 1,
) -> Report:
    """Check every rule (or ``rule_ids``) at every dtype and size; return a ``Report``.

    float64, float16 and bfloat16 turn ``jax_enable_x64`` on for the duration of the call
    (the low-precision dtypes are checked against float64 references). The eager-vs-jit check
    and the transform's checks run at the last size only. ``progress`` receives a
    ``Progress`` before each compiled program and after each rule. ``workers`` threads
    (default: the CPU count, at most 4) compile the cases ahead of the one running.
    A case estimated to need more than ``max_bytes`` (``case_bytes``; 4 GiB by default) is
    refused before anything runs, with a ``ValueError`` naming it. ``programs``, a
    ``ProgramCache`` or its directory, keeps the compiled programs for the next call
    (``matcalc_jax.verification.programs``); by default each call compiles its own.
    ``processes`` above 1 checks the rules in that many worker processes, one rule at a
    time each (``matcalc_jax.verification.processes``); the report is the same, and
    ``progress`` hears of each rule once, in order. ``workers`` is for a run in this
    process: a worker process compiles its rule's cases one at a time (the processes
    already keep every core busy). Worker processes import the caller's ``__main__``
    module (``multiprocessing``'s "spawn"): a script calls ``verify(processes=N)`` under
    ``if __name__ == "__main__":``. One dtype (a name or a dtype) or one size may be
    passed alone; a complex dtype is refused (the rules are real maps).

    >>> report = verify(["linear"], dtypes=["float32"], sizes=[3])
    >>> report.passed, len(report.checks)
    (True, 10)
    """
    selected, dtypes, sizes = checked_request(rule_ids, dtypes, sizes, seed, max_bytes)
    _check_arguments(progress, workers, programs)
    if programs is not None and not isinstance(programs, ProgramCache):
        try:
            programs = ProgramCache(programs)
        except OSError as error:
            raise ValueError(
                f"verify: programs={os.fspath(programs)!r} cannot be a directory of compiled "
                f"programs ({error.strerror or error})"
            ) from None
    send = progress or (lambda event: None)
    workers = max(1, min(os.cpu_count() or 1, 4)) if workers is None else workers
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"verify: processes={processes!r}; expected a positive integer")
    with runtime.precise(needs_x64(dtypes)) as env:
        if processes > 1 and len(selected) > 1:
            checks = _check_in_processes(selected, dtypes, sizes, seed, send, programs, processes)
        else:
            entries = list(enumerate(selected))
            checks = check_rules(entries, dtypes, sizes, seed, send, workers, programs)
    return Report(tuple(checks), env)


def _check_in_processes(
    selected: Sequence[Rule],
    dtypes: Sequence[str],
    sizes: Sequence[int],
    seed: int,
    send: Callable[[Progress], None],
    programs: ProgramCache | None,
    processes: int,
) -> list[Check]:
    """``check_rules`` of every rule, one rule and dtype a task, in ``processes`` worker
    processes (``processes.ordered_map``); checks and progress in the run's order. A task
    per dtype rather than per rule halves the last task, which one worker runs alone while
    the others have nothing left. A worker imports the catalogue from the package's files:
    a rule whose record differs in this process (``record_digest``: a record or a helper
    replaced here) is checked here instead, as this process holds it."""
    directory = None if programs is None else str(programs.directory.resolve())
    digests = {rule.id: record_digest(rule) for rule in selected}
    tasks = [
        (index, rule.id, (dtype,), sizes, seed, directory, digests[rule.id])
        for index, rule in enumerate(selected)
        for dtype in dtypes
    ]
    results = ordered_map(_check_rule_in_worker, tasks, processes, worker_xla_flags())
    cases, count = len(dtypes) * len(sizes), len(selected)
    checks: list[Check] = []
    for index, rule in enumerate(selected):
        where = f"checking in {processes} processes"
        send(
            Progress(
                "stage", rule.id, dtypes[0], sizes[0], where, index * cases, count * cases,
                index, count,
            )
        )  # fmt: skip
        rule_checks, elapsed = [], 0.0
        for dtype in dtypes:  # the rule's tasks, in the plan's order of dtypes
            try:
                dtype_checks, seconds, dropped = next(results)
            except WorkerDiedError:
                raise WorkerDiedError(
                    f"verify: a worker process ended without a result while checking "
                    f"{rule.id} (killed by a signal or out of memory); --processes 1 checks "
                    "in this process"
                ) from None
            if dtype_checks is None:  # the worker's record is not this process's
                started = time.perf_counter()
                dtype_checks = check_rules(
                    [(index, rule)], (dtype,), sizes, seed, lambda event: None, 1, programs
                )
                seconds = time.perf_counter() - started
            if programs is not None:
                programs.dropped += dropped
            rule_checks += dtype_checks
            elapsed += seconds
        checks += rule_checks
        send(
            Progress(
                "rule", rule.id, dtypes[-1], sizes[-1], "done", (index + 1) * cases,
                count * cases, index, count, tuple(rule_checks), elapsed,
            )
        )  # fmt: skip
    return checks


def _check_rule_in_worker(
    index: int,
    rule_id: str,
    dtypes: Sequence[str],
    sizes: Sequence[int],
    seed: int,
    directory: str | None,
    digest: str,
) -> tuple[list[Check] | None, float, int]:
    """In a worker process: every check of one rule, the seconds they took, and the
    damaged programs dropped; no checks (``None``) when this process's record of the rule
    is not the caller's (``digest``) or it has none."""
    from matcalc_jax.catalogue import rule

    try:
        record = rule(rule_id)
    except (KeyError, ValueError):
        return None, 0.0, 0
    if record_digest(record) != digest:
        return None, 0.0, 0
    started = time.perf_counter()
    programs = ProgramCache(directory) if directory is not None else None
    with runtime.precise(needs_x64(dtypes)):
        checks = check_rules(
            [(index, record)], dtypes, sizes, seed, lambda event: None, 1, programs
        )
    dropped = programs.dropped if programs is not None else 0
    return checks, time.perf_counter() - started, dropped


def needs_x64(dtypes: Sequence[str]) -> bool:
    """True when one of ``dtypes`` is checked against float64 references."""
    return any(reference_dtype(d) == jnp.float64 for d in dtypes)


def case_key(seed: int, index: int, size: int) -> Array:
    """The key of the case of the ``index``-th rule checked, at ``size``: the same inputs
    whichever process or order checks it."""
    return jax.random.fold_in(jax.random.key(seed), index * 1000 + size)


def check_rules(
    entries: Sequence[tuple[int, Rule]],
    dtypes: Sequence[str],
    sizes: Sequence[int],
    seed: int,
    send: Callable[[Progress], None],
    workers: int,
    programs: ProgramCache | None,
) -> list[Check]:
    """Every check of the rules in ``entries`` (``(index, rule)``: ``index`` is the rule's
    place in the whole run, which draws its inputs), in order, in this process: ``workers``
    threads prepare the cases ahead, this thread runs them. Call it under
    ``runtime.precise``."""
    plan = [
        (index, rule, dtype, size) for index, rule in entries for dtype in dtypes for size in sizes
    ]
    checks: list[Check] = []
    with concurrent.futures.ThreadPoolExecutor(workers, "matcalc-jax-compile") as pool:

        def submit(index: int, rule: Rule, dtype: str, size: int) -> concurrent.futures.Future:
            key = case_key(seed, index, size)
            last = size == sizes[-1]
            return pool.submit(prepare_in_worker, rule, dtype, size, key, last, programs)

        # Prepare a few cases ahead on the workers; run their programs in order on this
        # thread, one at a time (two programs running at once can deadlock jaxlib 0.10's
        # LAPACK kernels: see ``central_differences``).
        window = 2 * workers
        ahead = {i: submit(*plan[i]) for i in range(min(window, len(plan)))}
        started, rule_checks = time.perf_counter(), []
        for done, (index, rule, dtype, size) in enumerate(plan):

            def stage(name: str, rule=rule, dtype=dtype, size=size, done=done, index=index) -> None:
                send(
                    Progress(
                        "stage", rule.id, dtype, size, name, done, len(plan), index, len(entries)
                    )
                )

            stage("compiling, drawing, eager")
            prepared = ahead.pop(done).result()
            if done + window < len(plan):
                ahead[done + window] = submit(*plan[done + window])
            rule_checks += run_case(prepared, stage=stage)
            if done + 1 == len(plan) or plan[done + 1][0] != index:
                checks += rule_checks
                elapsed = time.perf_counter() - started
                send(
                    Progress(
                        "rule",
                        rule.id,
                        dtype,
                        size,
                        "done",
                        done + 1,
                        len(plan),
                        index,
                        len(entries),
                        tuple(rule_checks),
                        elapsed,
                    )
                )
                started, rule_checks = time.perf_counter(), []
    return checks
