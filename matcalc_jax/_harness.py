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
- ``adjoint``: ``<u, J v>`` against ``<J^T u, v>`` for the structured ``mv`` and ``vm``.

For the rules with a closed-form Hessian (scalar maps, ``rule.has_hessian``):

- ``hessian``: the closed-form Hessian against ``jax.hessian`` (forward over reverse);
- ``hessian_structured``: the structured Hessian's ``to_dense()`` against the closed form;
- ``hvp``: the structured Hessian's ``mv`` against autodiff's forward-over-reverse
  Hessian-vector product ``jax.jvp(jax.grad(f))``, on a random direction;
- ``hessian_finite_difference`` (float64 only): against central differences of the
  closed-form gradient (itself checked against differences of the map).

Errors are normwise relative (``max|a - b| / max|b|``) and compared with the one tolerance
table (``matcalc_jax._tolerance``). Matrix products run at precision "highest", so TF32 on a
GPU is not mistaken for a wrong rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import Array

from matcalc_jax._catalogue import rule as get_rule
from matcalc_jax._catalogue import rules as all_rules
from matcalc_jax._layout import swap_out_in
from matcalc_jax._rule import Rule
from matcalc_jax._tolerance import FINITE_DIFFERENCE_TOLERANCE, tolerance

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
)
DTYPES: tuple[str, ...] = ("float32", "float64")
SIZES: tuple[int, ...] = (1, 4, 16)
REPORT_SCHEMA = "matcalc-jax/verify/1"


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
    """The result of :func:`verify`: every check, and where it ran."""

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
        text = json.dumps(self.to_dict(), indent=2, default=_json_number)
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        return text


def _json_number(value: Any) -> Any:
    return float(value)


def relative_error(actual: Any, expected: Any) -> float:
    """Normwise relative error ``max|actual - expected| / max|expected|``, in float64.

    Entries that are NaN in both arrays, or the same infinity in both, count as equal; any
    other NaN or inf, or different shapes, give ``inf``. A zero reference gives the absolute
    error.

    >>> relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    0.2
    """
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if not np.all(np.isfinite(a) | same) or not np.all(np.isfinite(b) | same):
        return float("inf")
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
        difference = np.where(same, 0.0, np.abs(a - b))
    scale = np.max(np.abs(np.where(np.isfinite(b), b, 0.0)), initial=0.0)
    worst = float(np.max(difference, initial=0.0))
    return worst / float(scale) if scale > 0 else worst


def finite_difference_jacobian(fn: Callable[..., Array], args: Sequence[Any], wrt: int) -> Array:
    """Central-difference Jacobian of ``fn`` with respect to ``args[wrt]``, in float64.

    Numerator layout, ``out.shape + in.shape``. The step for entry k is
    ``eps**(1/3) * (1 + |x_k|)``, which balances truncation (O(h^2)) and rounding
    (O(eps / h)) errors. All perturbed points are evaluated in one vmapped, jitted call.
    Needs ``jax_enable_x64``.
    """
    args64 = [jnp.asarray(a, jnp.float64) for a in args]
    x_shape = jnp.shape(args64[wrt])

    def at(point: Array, call: list[Array]) -> Array:
        call = list(call)
        call[wrt] = point.reshape(x_shape)
        return fn(*call)

    @jax.jit
    def central(call: list[Array]) -> Array:
        flat = call[wrt].reshape(-1)
        steps = np.finfo(np.float64).eps ** (1 / 3) * (1 + jnp.abs(flat))
        directions = jnp.eye(flat.size, dtype=jnp.float64) * steps[:, None]
        plus = jax.vmap(at, in_axes=(0, None))(flat[None, :] + directions, call)
        minus = jax.vmap(at, in_axes=(0, None))(flat[None, :] - directions, call)
        columns = (plus - minus) / (2 * steps.reshape((-1,) + (1,) * (plus.ndim - 1)))
        return jnp.moveaxis(columns, 0, -1)  # out.shape + (in.size,)

    jacobian = central(args64)
    return jacobian.reshape(jacobian.shape[:-1] + x_shape)


@contextlib.contextmanager
def _x64(enabled: bool) -> Iterator[None]:
    """Turn ``jax_enable_x64`` on for the block when ``enabled``, restoring it afterwards."""
    before = bool(jax.config.jax_enable_x64)
    if enabled and not before:
        jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        if enabled and not before:
            jax.config.update("jax_enable_x64", False)


def environment() -> dict[str, Any]:
    """Where the harness runs: device, versions, x64 flag, host."""
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "x64": bool(jax.config.jax_enable_x64),
        "matmul_precision": "highest",
        "python": platform.python_version(),
        "host": platform.node(),
        "machine": platform.machine(),
    }


def check_rule(rule: Rule, dtype: str, size: int, key: Array, *, eager: bool = True) -> list[Check]:
    """Every check of one rule at one dtype and size (x64 must be on for float64).

    ``eager=False`` leaves out the eager-vs-jit check, the slowest one (op-by-op dispatch
    compiles each primitive for each new shape); :func:`verify` runs it once per rule and dtype.
    """
    args = rule.example(key, jnp.dtype(dtype), size)
    closed = jax.jit(partial(rule.jacobian, layout="numerator"))
    closed_denominator = jax.jit(partial(rule.jacobian, layout="denominator"))
    jacobian = closed(*args)
    tol = tolerance(dtype)
    out_ndim = jacobian.ndim - jnp.ndim(args[rule.wrt])

    def record(reference: str, expected: Any, bound: float, actual: Any = jacobian) -> Check:
        detail = ""
        if np.shape(actual) != np.shape(expected):
            detail = f"shape {np.shape(actual)} != {np.shape(expected)}"
        elif jnp.result_type(actual) != jnp.result_type(expected):
            detail = f"dtype {jnp.result_type(actual)} != {jnp.result_type(expected)}"
        error = relative_error(actual, expected)
        passed = not detail and error <= bound
        return Check(rule.id, dtype, size, reference, error, bound, passed, detail)

    checks = [
        record("jacfwd", jax.jit(rule.jacfwd)(*args), tol),
        record("jacrev", jax.jit(rule.jacrev)(*args), tol),
        record(
            "denominator",
            swap_out_in(jacobian, out_ndim),
            tol,
            actual=closed_denominator(*args),
        ),
    ]
    checks += _structured_checks(rule, args, jacobian, key, record, tol)
    if rule.has_hessian:
        checks += _hessian_checks(rule, args, key, record, tol)
    if eager:
        checks.append(record("eager", jacobian, tol, actual=rule.jacobian(*args)))
    if jnp.dtype(dtype) == jnp.float64:
        fd = finite_difference_jacobian(rule.fn, args, rule.wrt)
        checks.append(record("finite_difference", fd, FINITE_DIFFERENCE_TOLERANCE))
    return checks


def _structured_checks(
    rule: Rule, args: tuple, jacobian: Array, key: Array, record: Callable, tol: float
) -> list[Check]:
    """The structured Jacobian against the dense closed form, jax.jvp and jax.vjp."""
    x = jnp.asarray(args[rule.wrt])
    out = jax.eval_shape(rule.fn, *args)
    k_tangent, k_cotangent = jax.random.split(jax.random.fold_in(key, 7))
    tangent = jax.random.normal(k_tangent, x.shape, x.dtype)
    cotangent = jax.random.normal(k_cotangent, out.shape, out.dtype)

    def of_x(call: tuple) -> Callable[[Array], Array]:
        return lambda x: rule.fn(*call[: rule.wrt], x, *call[rule.wrt + 1 :])

    @jax.jit
    def structured(*call: Any) -> tuple[Array, Array, Array]:
        op = rule.structured(*call)
        return op.to_dense(), op.mv(tangent), op.vm(cotangent)

    @jax.jit
    def autodiff(*call: Any) -> tuple[Array, Array]:
        _, jvp = jax.jvp(of_x(call), (call[rule.wrt],), (tangent,))
        _, pullback = jax.vjp(of_x(call), call[rule.wrt])
        return jvp, pullback(cotangent)[0]

    dense, mv, vm = structured(*args)
    jvp, vjp = autodiff(*args)
    forward = jnp.vdot(cotangent, mv)  # <u, J v>
    backward = jnp.vdot(vm, tangent)  # <J^T u, v>
    return [
        record("structured", jacobian, tol, actual=dense),
        record("mv", jvp, tol, actual=mv),
        record("vm", vjp, tol, actual=vm),
        record("adjoint", backward, tol, actual=forward),
    ]


def _hessian_checks(
    rule: Rule, args: tuple, key: Array, record: Callable, tol: float
) -> list[Check]:
    """The closed-form Hessian against jax.hessian, its structured form, forward-over-reverse
    Hessian-vector products and (float64) finite differences of the closed-form gradient."""
    x = jnp.asarray(args[rule.wrt])
    tangent = jax.random.normal(jax.random.fold_in(key, 11), x.shape, x.dtype)

    @jax.jit
    def closed(*call: Any) -> tuple[Array, Array, Array]:
        op = rule.hessian_operator(*call)
        return rule.hessian(*call), op.to_dense(), op.mv(tangent)

    @jax.jit
    def autodiff(*call: Any) -> tuple[Array, Array]:
        return rule.jax_hessian(*call), rule.jax_hvp(*call, tangent=tangent)

    hessian, dense, hvp = closed(*args)
    jax_hessian, jax_hvp = autodiff(*args)
    checks = [
        record("hessian", jax_hessian, tol, actual=hessian),
        record("hessian_structured", hessian, tol, actual=dense),
        record("hvp", jax_hvp, tol, actual=hvp),
    ]
    if x.dtype == jnp.float64:
        fd = finite_difference_jacobian(rule.jacobian, args, rule.wrt)
        checks.append(
            record("hessian_finite_difference", fd, FINITE_DIFFERENCE_TOLERANCE, actual=hessian)
        )
    return checks


def verify(
    rule_ids: Iterable[str] | None = None,
    *,
    dtypes: Iterable[str] = DTYPES,
    sizes: Iterable[int] | None = None,
    seed: int = 0,
    progress: Callable[[str, str, int], None] | None = None,
) -> Report:
    """Check every rule (or ``rule_ids``) at every dtype and size; return a :class:`Report`.

    float64 turns ``jax_enable_x64`` on for the duration of the call. The eager-vs-jit check
    runs at the last size only. ``progress`` is called with (rule id, dtype, size) before each
    case.

    >>> report = verify(["linear"], dtypes=["float32"], sizes=[3])
    >>> report.passed, len(report.checks)
    (True, 8)
    """
    selected = all_rules() if rule_ids is None else tuple(get_rule(r) for r in rule_ids)
    dtypes = tuple(dtypes)
    for dtype in dtypes:
        tolerance(dtype)  # an unknown dtype fails before any work
    sizes = SIZES if sizes is None else tuple(int(s) for s in sizes)
    checks: list[Check] = []
    with _x64("float64" in dtypes), jax.default_matmul_precision("highest"):
        env = environment()
        for index, rule in enumerate(selected):
            for dtype in dtypes:
                for size in sizes:
                    if progress is not None:
                        progress(rule.id, dtype, size)
                    key = jax.random.fold_in(jax.random.key(seed), index * 1000 + size)
                    eager = size == sizes[-1]
                    checks.extend(check_rule(rule, dtype, size, key, eager=eager))
    return Report(tuple(checks), env)
