"""Benchmarks: each rule's closed form against jax.jacfwd, jax.jacrev (and jax.grad where the
output is a scalar), and against a write floor, measured side by side in one run.

Method (JAX's benchmarking guidance): every function is compiled apart
(``jit(f).lower(*args).compile()``) and its compile time reported apart; it is warmed up; each
sample runs it enough times in a row to last about ``min_sample_s`` and ends with
``jax.block_until_ready``; the methods of one case are sampled in turn, round after round,
so that a slow spell of a shared machine hits them alike; the report gives the median and
the quartiles over rounds. Inputs are the rule's random example (never zeros), the same for
every method of a case. Matrix products run at precision "highest".

For the rules with a closed-form Hessian the same case also times the second derivatives:
``hessian`` (the dense closed form) against ``jax_hessian`` (``jax.hessian``, forward over
reverse), and the Hessian-vector product three ways: ``hvp`` (the structured Hessian's
``mv``), ``hvp_dense`` (the dense closed-form Hessian, formed and applied to the vector) and
``fwd_over_rev`` (``jax.jvp`` of ``jax.grad``).

The floor is the time the device needs to write an array of the Jacobian's shape and dtype,
measured as a jitted ``c * iota`` (one fused elementwise loop over the output, the kind of
loop the closed forms compile to): no method can return that Jacobian much faster.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from matcalc_jax import runtime
from matcalc_jax.catalogue import select
from matcalc_jax.catalogue.record import Rule
from matcalc_jax.verification import references
from matcalc_jax.verification.harness import checked_sizes, refuse_oversized

BENCH_SCHEMA = "matcalc-jax/bench/1"
AUTODIFF = ("jacfwd", "jacrev", "grad")


def default_sizes(rule: Rule, quick: bool = False) -> tuple[int, ...]:
    """The size sweep of ``rule`` (its ``bench_sizes``); ``quick`` gives its one ``quick_size``."""
    return (rule.quick_size,) if quick else rule.bench_sizes


@dataclasses.dataclass(frozen=True)
class Timing:
    """One method of one case: times in seconds, memory in bytes (None where not exposed)."""

    rule: str
    dtype: str
    size: int
    method: str
    compile_s: float
    median_s: float
    p25_s: float
    p75_s: float
    calls_per_sample: int
    samples: int
    temp_bytes: int | None
    output_bytes: int | None
    noise: bool = False
    """True when the time is dominated by dispatch (under twice the run's empty-call time)
    or, summed over a sample, within 100 ticks of the timer: such a time says nothing about
    the method, and a ratio with it is never "clear"."""


@dataclasses.dataclass(frozen=True)
class Case:
    """All methods of one (rule, dtype, size), and the derived ratios."""

    rule: str
    dtype: str
    size: int
    jacobian_shape: tuple[int, ...]
    timings: dict[str, Timing]

    @property
    def dense(self) -> bool:
        """True when the dense methods were timed (the Jacobian was small enough)."""
        return "closed" in self.timings

    def best_autodiff(self, methods: Sequence[str] = ("jacfwd", "jacrev")) -> Timing | None:
        """The fastest of ``methods`` that were measured, or None."""
        measured = [self.timings[m] for m in methods if m in self.timings]
        return min(measured, key=_median) if measured else None

    def _pair(self, method: str, over: str) -> tuple[Timing, Timing] | None:
        """(method, reference) timings; ``over="best"`` is the best of jacfwd and jacrev."""
        reference = self.best_autodiff() if over == "best" else self.timings.get(over)
        if reference is None or method not in self.timings:
            return None
        return self.timings[method], reference

    def speedup(self, method: str = "closed", over: str = "best") -> float | None:
        """Median time of ``over`` (``"best"``: the best of jacfwd and jacrev) over the
        median time of ``method``; None where either was not measured."""
        pair = self._pair(method, over)
        return None if pair is None else pair[1].median_s / pair[0].median_s

    def speedup_clear(self, method: str = "closed", over: str = "best") -> bool | None:
        """True when ``method``'s upper quartile is below ``over``'s lower quartile: faster
        outside the run's spread; None where either was not measured."""
        pair = self._pair(method, over)
        if pair is None:
            return None
        return not self.noisy(method, over) and pair[0].p75_s < pair[1].p25_s

    def noisy(self, method: str = "closed", over: str = "best") -> bool | None:
        """True when either time of the ratio is dispatch or timer noise (``Timing.noise``)."""
        pair = self._pair(method, over)
        return None if pair is None else pair[0].noise or pair[1].noise

    @property
    def hessian(self) -> bool:
        """True when Hessian methods were timed."""
        return "fwd_over_rev" in self.timings

    def floor_multiple(self, method: str = "closed") -> float | None:
        """The method's median time as a multiple of the write floor's; None if not timed."""
        if method not in self.timings:
            return None
        return self.timings[method].median_s / self.timings["floor"].median_s


def _median(t: Timing) -> float:
    return t.median_s


def _memory(compiled: Any) -> tuple[int | None, int | None]:
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend exposes it
        return None, None
    if stats is None:
        return None, None
    return int(stats.temp_size_in_bytes), int(stats.output_size_in_bytes)


def _run(compiled: Any, args: Sequence[Any], calls: int) -> float:
    """Seconds per call over ``calls`` back-to-back calls, ending on block_until_ready."""
    start = time.perf_counter()
    for _ in range(calls):
        out = compiled(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def write_floor(fill: jax.Array, *, shape: tuple[int, ...]) -> jax.Array:
    """An array of ``shape`` written by one fused elementwise loop: ``fill * iota``."""
    if not shape:  # a scalar Jacobian
        return -fill
    return fill * jax.lax.broadcasted_iota(fill.dtype, shape, len(shape) - 1)


def methods_for(
    rule: Rule, args: Sequence[Any], dense: bool = True, dense_hessian: bool = True
) -> dict[str, Callable]:
    """The functions timed for one case, each taking the rule's arguments.

    ``closed``: the dense closed form; ``jacfwd``, ``jacrev`` (and ``grad`` for a scalar
    output): autodiff's dense Jacobian; ``structured``: the structured closed form
    (``rule.structured``); ``mv``: its Jacobian-vector product with a fixed random tangent;
    ``jvp``: ``jax.jvp`` of the map with the same tangent. ``dense=False`` leaves out the
    dense methods (for sizes where a dense Jacobian would not fit).

    For a rule with a Hessian: ``hessian`` and ``jax_hessian`` (dense), ``hvp_dense`` (the
    dense closed-form Hessian times the tangent), ``hvp`` (the structured Hessian's ``mv``)
    and ``fwd_over_rev`` (``jax.jvp`` of ``jax.grad``); ``dense_hessian=False`` leaves out the
    three dense ones.
    """
    x = jnp.asarray(args[rule.wrt])
    tangent = jax.random.normal(jax.random.key(1), x.shape, x.dtype)

    def of_x(call: Sequence[Any]) -> Callable:
        return lambda x: rule.fn(*call[: rule.wrt], x, *call[rule.wrt + 1 :])

    methods: dict[str, Callable] = {}
    if dense:
        methods["closed"] = partial(rule.jacobian, layout="numerator")
        methods["jacfwd"] = rule.jacfwd
        methods["jacrev"] = rule.jacrev
        if jax.eval_shape(rule.fn, *args).shape == ():
            methods["grad"] = jax.grad(rule.fn, argnums=rule.wrt)
    methods["structured"] = rule.structured
    methods["mv"] = lambda *call: rule.structured(*call).mv(tangent)
    methods["jvp"] = lambda *call: jax.jvp(of_x(call), (call[rule.wrt],), (tangent,))[1]
    if rule.has_hessian:
        methods.update(_hessian_methods(rule, tangent, dense_hessian))
    return methods


def _hessian_methods(rule: Rule, tangent: jax.Array, dense: bool) -> dict[str, Callable]:
    methods: dict[str, Callable] = {}
    if dense:
        methods["hessian"] = rule.hessian
        methods["jax_hessian"] = partial(references.jax_hessian, rule)
        methods["hvp_dense"] = lambda *call: jnp.tensordot(
            rule.hessian(*call), tangent, axes=tangent.ndim
        )
    methods["hvp"] = lambda *call: rule.hessian_operator(*call).mv(tangent)
    methods["fwd_over_rev"] = partial(references.jax_hvp, rule, tangent=tangent)
    return methods


def time_methods(
    label: str,
    dtype: str,
    size: int,
    methods: dict[str, Callable],
    call_args: dict[str, Sequence[Any]],
    *,
    rounds: int = 7,
    min_sample_s: float = 2e-3,
    dispatch_s: float = 0.0,
    parallel_compile: bool = False,
) -> dict[str, Timing]:
    """Compile each method apart, warm it up, and time all of them in interleaved rounds.

    ``parallel_compile`` compiles the methods in threads at once (faster; each compile time
    then includes waiting for the others).

    A median under twice ``dispatch_s`` (the time of an empty jitted call, see
    ``dispatch_time``), or a sample within 100 ticks of the timer, is marked ``noise``.
    """
    resolution = time.get_clock_info("perf_counter").resolution
    compiled, compile_s, calls = {}, {}, {}

    # The 64-bit mode and matmul precision are thread-local: a compile thread takes the
    # caller's.
    x64_mode, precision = bool(jax.config.jax_enable_x64), jax.config.jax_default_matmul_precision

    def build(name: str) -> tuple[Any, float]:
        with runtime.x64(x64_mode), jax.default_matmul_precision(precision):
            lowered = jax.jit(methods[name]).lower(*call_args[name])
        start = time.perf_counter()
        return lowered.compile(), time.perf_counter() - start

    if parallel_compile:
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            built = dict(zip(methods, pool.map(build, methods), strict=True))
    else:
        built = {name: build(name) for name in methods}
    for name in methods:
        compiled[name], compile_s[name] = built[name]
        per_call = _run(compiled[name], call_args[name], 1)  # warm-up
        per_call = _run(compiled[name], call_args[name], 1)
        calls[name] = max(1, min(10_000, math.ceil(min_sample_s / max(per_call, 1e-9))))

    samples: dict[str, list[float]] = {name: [] for name in methods}
    order = list(methods)
    for round_index in range(rounds):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            samples[name].append(_run(compiled[name], call_args[name], calls[name]))

    timings = {}
    for name in methods:
        p25, median, p75 = np.percentile(samples[name], [25, 50, 75])
        temp, output = _memory(compiled[name])
        timings[name] = Timing(
            label,
            dtype,
            size,
            name,
            compile_s[name],
            float(median),
            float(p25),
            float(p75),
            calls[name],
            rounds,
            temp,
            output,
            bool(median < 2 * dispatch_s or median * calls[name] < 100 * resolution),
        )
    return timings


def dispatch_time(rounds: int = 7, calls: int = 200) -> float:
    """The median time of an empty jitted call (a scalar plus one): what every call costs
    before any work, the floor under which a timing measures dispatch, not the method."""
    compiled = jax.jit(lambda x: x + 1).lower(jnp.float32(0)).compile()
    argument = jnp.float32(0)
    _run(compiled, (argument,), calls)  # warm-up
    return float(np.median([_run(compiled, (argument,), calls) for _ in range(rounds)]))


#: The most bytes one benchmark case may need, estimated before the run (``case_bytes``).
MAX_CASE_BYTES = 4 * 2**30
#: Dense Jacobians above this are not formed by the timed methods (``bench_case``).
MAX_DENSE_BYTES = 2**28
#: Jacobian-sized arrays the dense methods hold at once (closed form, jacfwd, jacrev).
_DENSE_COPIES = 3


def case_bytes(rule: Rule, dtype: str, size: int) -> int:
    """An estimate of the bytes one case needs, from the shapes alone: the floor writes the
    dense Jacobian whatever its size, and where it is at most ``MAX_DENSE_BYTES`` the dense
    methods hold ``_DENSE_COPIES`` more (the dense Hessian counted the same way)."""
    args = jax.eval_shape(lambda: rule.example(jax.random.key(0), jnp.float32, size))
    shape = jax.eval_shape(partial(rule.jacobian, layout="numerator"), *args)
    itemsize = jnp.dtype(dtype).itemsize
    dense = math.prod(shape.shape) * itemsize  # Python integers: no overflow
    hessian = math.prod(args[rule.wrt].shape) ** 2 * itemsize if rule.has_hessian else 0
    held = sum(b * _DENSE_COPIES for b in (dense, hessian) if b <= MAX_DENSE_BYTES)
    return dense + held


def bench_case(
    rule: Rule,
    dtype: str,
    size: int,
    *,
    rounds: int = 7,
    min_sample_s: float = 2e-3,
    seed: int = 0,
    max_dense_bytes: int = MAX_DENSE_BYTES,
    dispatch_s: float = 0.0,
    parallel_compile: bool = False,
) -> Case:
    """Time every method of one case, interleaved round by round.

    Where the dense Jacobian would take more than ``max_dense_bytes`` (256 MiB), only the
    structured form, its ``mv``, ``jax.jvp`` and the floor are timed; the same bound on the
    dense Hessian leaves out the dense Hessian methods.
    """
    args = rule.example(jax.random.fold_in(jax.random.key(seed), size), jnp.dtype(dtype), size)
    shape = jax.eval_shape(partial(rule.jacobian, layout="numerator"), *args)
    itemsize = jnp.dtype(shape.dtype).itemsize
    dense_bytes = math.prod(shape.shape) * itemsize
    hessian_bytes = jnp.size(args[rule.wrt]) ** 2 * itemsize
    methods = methods_for(
        rule,
        args,
        dense=dense_bytes <= max_dense_bytes,
        dense_hessian=hessian_bytes <= max_dense_bytes,
    )
    fill = jnp.asarray(0.5, shape.dtype)
    methods["floor"] = partial(write_floor, shape=shape.shape)
    call_args = {name: args for name in methods}
    call_args["floor"] = (fill,)
    timings = time_methods(
        rule.id,
        dtype,
        size,
        methods,
        call_args,
        rounds=rounds,
        min_sample_s=min_sample_s,
        dispatch_s=dispatch_s,
        parallel_compile=parallel_compile,
    )
    return Case(rule.id, dtype, size, tuple(shape.shape), timings)


#: The Hessian ratios of a case: (JSON key, method, reference).
HESSIAN_RATIOS = (
    ("hessian_speedup_vs_jax_hessian", "hessian", "jax_hessian"),
    ("hvp_speedup_vs_dense_hessian", "hvp", "hvp_dense"),
    ("hvp_speedup_vs_fwd_over_rev", "hvp", "fwd_over_rev"),
)


def _hessian_ratios(case: Case) -> dict[str, Any]:
    if not case.hessian:
        return {}
    ratios: dict[str, Any] = {}
    for key, method, reference in HESSIAN_RATIOS:
        ratios[key] = case.speedup(method, over=reference)
        ratios[key.replace("speedup", "clear")] = case.speedup_clear(method, over=reference)
    return ratios


@dataclasses.dataclass(frozen=True)
class BenchReport:
    """Every case of a run, and where it ran."""

    cases: tuple[Case, ...]
    environment: dict[str, Any]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary with schema ``BENCH_SCHEMA``."""
        return {
            "schema": BENCH_SCHEMA,
            "environment": self.environment,
            "settings": self.settings,
            "cases": [
                {
                    "rule": c.rule,
                    "dtype": c.dtype,
                    "size": c.size,
                    "jacobian_shape": list(c.jacobian_shape),
                    "speedup_vs_best_jac": c.speedup(),
                    "speedup_clear": c.speedup_clear(),
                    "structured_speedup_vs_best_jac": c.speedup("structured"),
                    "mv_speedup_vs_jvp": c.speedup("mv", over="jvp"),
                    "mv_speedup_clear": c.speedup_clear("mv", over="jvp"),
                    "closed_floor_multiple": c.floor_multiple(),
                    **_hessian_ratios(c),
                    "timings": {m: dataclasses.asdict(t) for m, t in c.timings.items()},
                }
                for c in self.cases
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchReport:
        """Read back a report written by ``to_dict`` (same schema only)."""
        if data.get("schema") != BENCH_SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r} is not {BENCH_SCHEMA!r}")
        cases = tuple(
            Case(
                c["rule"],
                c["dtype"],
                c["size"],
                tuple(c["jacobian_shape"]),
                {m: Timing(**t) for m, t in c["timings"].items()},
            )
            for c in data["cases"]
        )
        return cls(cases, data["environment"], data["settings"])


def bench(
    rule_ids: Iterable[str] | None = None,
    *,
    dtypes: Iterable[str] = ("float32",),
    sizes: Sequence[int] | None = None,
    quick: bool = False,
    rounds: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    max_bytes: int = MAX_CASE_BYTES,
) -> BenchReport:
    """Benchmark every rule (or ``rule_ids``) at every dtype over its size sweep.

    ``sizes`` overrides every rule's sweep; ``quick`` takes one small size per rule, three
    rounds and 1 ms samples, and compiles a case's methods side by side on every core (a
    check that the benchmark runs, not a measurement: its compile times overlap).
    ``progress`` is called with (cases done, cases in all, label) before each case. A case
    estimated to need more than ``max_bytes`` (``case_bytes``; 4 GiB by default) is refused
    before anything runs.
    """
    selected = select(rule_ids)
    dtypes = tuple(dict.fromkeys(dtypes))  # each once, as the rules and the sizes
    sizes = checked_sizes(sizes, "bench") if sizes else sizes  # 2^31 - 1 at most
    rounds = rounds if rounds is not None else (3 if quick else 7)
    plan = [
        (r, dtype, size)
        for r in selected
        for dtype in dtypes
        for size in (tuple(sizes) if sizes else default_sizes(r, quick))
    ]
    refuse_oversized("bench", plan, case_bytes, max_bytes)
    min_sample_s = 1e-3 if quick else 2e-3
    cases = []
    with runtime.precise("float64" in dtypes) as env:
        env["cpu_count"] = os.cpu_count()
        dispatch_s = dispatch_time()
        for index, (r, dtype, size) in enumerate(plan):
            if progress is not None:
                progress(index, len(plan), f"{r.id} {dtype} {size}")
            cases.append(
                bench_case(
                    r,
                    dtype,
                    size,
                    rounds=rounds,
                    seed=seed,
                    min_sample_s=min_sample_s,
                    dispatch_s=dispatch_s,
                    parallel_compile=quick,
                )
            )
        if progress is not None:
            progress(len(plan), len(plan), "done")
    settings = {
        "rounds": rounds,
        "quick": quick,
        "seed": seed,
        "dtypes": list(dtypes),
        "min_sample_s": min_sample_s,
        "dispatch_s": dispatch_s,
        "timer_resolution_s": time.get_clock_info("perf_counter").resolution,
    }
    return BenchReport(tuple(cases), env, settings)
