"""The transform's benchmark: ``matcalc_jax.jacobian`` against ``jax.jacfwd`` /
``jax.jacrev`` on the corpus, with asdex and sparsejac beside them when installed.

Per program and size (float32, the same harness as the rules: compiled apart, warmed up,
interleaved rounds, medians), the methods are:

- ``build``: ``jacobian(f)(x)``, the structured operator, never densified;
- ``dense``: ``jacobian(f)(x).to_dense()``;
- ``jacfwd``, ``jacrev``: autodiff's dense Jacobian;
- ``forward``: ``f(x)`` itself, the unit for "building J costs no more than two forward
  passes";
- ``mv`` with J built beforehand (J is an argument of the compiled function), against
  ``jvp``, ``jax.jvp`` of ``f``;
- ``dense_trace_compile``, ``jacfwd_trace_compile``: the seconds to trace, lower and compile
  each afresh (not a run time: its median is over three compilations);
- ``asdex``: asdex's sparse Jacobian (``jacobian_from_coloring``, BCOO, its pattern detected
  and colored before timing); ``sparsejac``: ``sparsejac.jacfwd`` given that pattern.

Two special cases: an elementwise program at n = 10^6 (``build`` plus ``logdet``, ``trace``
and ``diagonal`` against one forward pass; the compiled program's temporary memory), and the
per-example Jacobians of a vmapped MLP at batch 128, width 64 (``build`` against
``jax.jacfwd`` and ``jax.jacrev`` of the batched map).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from matcalc_jax.benchmark.rules import Case, dispatch_time, time_methods
from matcalc_jax.catalogue import corpus, rule
from matcalc_jax.catalogue.record import Rule
from matcalc_jax.operators.base import storage
from matcalc_jax.operators.block_diagonal import BlockDiagonal
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.transform import jacobian

#: Sizes of the differentiated argument (its length; the side for a matrix, the batch for
#: the per-example map).
SIZES: dict[str, tuple[int, ...]] = {
    "tanh_affine_by_x": (256, 1024, 2048),
    "tanh_affine_by_W": (64, 128),
    "mlp3_input": (256, 1024),
    "nn_softmax": (256, 1024, 2048, 2**16, 2**20),
    "nn_log_softmax_linear": (256, 1024),
    "exp_sin_cubic": (256, 1024, 4096, 2**16, 2**20),
    "quadratic_program": (256, 1024),
    "sandwich_AXB": (16, 32),
    "per_example_mlp": (64, 256, 512),
    "elementwise_flow": (256, 1024, 4096, 2**16, 2**20),
    "layer_norm": (256, 1024, 2048, 2**16, 2**20),
    "mlp_by_params": (16, 64),
    "rk4_fori_loop": (256, 1024, 4096),
    "gru_scan": (16, 64),
    "conv_layer": (64, 256),
    "gp_log_likelihood": (64, 256),
    "graph_network": (64, 256),
    "clipped_update": (256, 1024, 4096),
}
QUICK_SIZE: dict[str, int] = {"sandwich_AXB": 8, "tanh_affine_by_W": 16, "per_example_mlp": 16}
#: The most bytes a dense Jacobian may take to be timed.
MAX_DENSE_BYTES = 2**28
#: The most entries of a Jacobian with a dense pattern for which the peers run: their
#: detection and coloring walk the pattern entry by entry (minutes for a dense 1024 x 1024
#: one). Where the pattern is sparse (diagonal, block-diagonal) they run up to
#: ``MAX_PEER_SIZE`` inputs.
MAX_PEER_ENTRIES = 2**18
MAX_PEER_SIZE = 2**16
PEERS = ("asdex", "sparsejac")


def installed(name: str) -> bool:
    """True when the optional peer ``name`` can be imported."""
    return importlib.util.find_spec(name) is not None


def _of_x(program: Rule, args: Sequence[Any]) -> Callable:
    return lambda x: program.fn(*args[: program.wrt], x, *args[program.wrt + 1 :])


def _peer_methods(program: Rule, args: Sequence[Any], peers: Sequence[str]) -> dict[str, Any]:
    """asdex's and sparsejac's sparse Jacobians of the program at ``x`` (detection and
    coloring done here, outside the timing)."""
    methods: dict[str, Any] = {}
    f = _of_x(program, args)
    x = args[program.wrt]
    if "asdex" in peers or "sparsejac" in peers:
        import asdex

        with warnings.catch_warnings():  # a dense pattern: asdex warns, and we report it
            warnings.simplefilter("ignore", asdex.DenseColoringWarning)
            coloring = asdex.jacobian_coloring(f, x)
        if "asdex" in peers:
            methods["asdex"] = (asdex.jacobian_from_coloring(f, coloring, "bcoo"), (x,))
        if "sparsejac" in peers:
            import sparsejac

            pattern = coloring.sparsity.to_bcoo()
            flat = lambda v: f(v.reshape(x.shape)).reshape(-1)  # noqa: E731
            methods["sparsejac"] = (sparsejac.jacfwd(flat, sparsity=pattern), (x.reshape(-1),))
    return methods


def compile_seconds(fn: Callable, args: Sequence[Any], repeats: int = 3) -> float:
    """The median seconds to trace, lower and compile ``jax.jit(fn)`` on ``args`` afresh
    (the transform's own work happens while tracing, so all three count)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.jit(fn).lower(*args).compile()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_program(
    program: Rule,
    size: int,
    *,
    rounds: int = 7,
    min_sample_s: float = 2e-3,
    dispatch_s: float = 0.0,
    peers: Sequence[str] = (),
    parallel_compile: bool = False,
) -> Case:
    """Time the transform and its peers on one corpus program at one size (float32)."""
    args = program.example(jax.random.key(size), jnp.float32, size)
    x = args[program.wrt]
    shape = jax.eval_shape(lambda *a: jacobian(program.fn, program.wrt)(*a).to_dense(), *args)
    dense = np.prod(shape.shape) * 4 <= MAX_DENSE_BYTES
    tangent = jax.random.normal(jax.random.key(1), x.shape, x.dtype)
    built = jax.jit(jacobian(program.fn, program.wrt))(*args)
    methods: dict[str, Callable] = {
        "build": jacobian(program.fn, program.wrt),
        "forward": program.fn,
        "mv": lambda J, v: J.mv(v),
        "jvp": lambda *call: jax.jvp(_of_x(program, call), (call[program.wrt],), (tangent,))[1],
    }
    call_args: dict[str, Sequence[Any]] = {name: args for name in methods}
    call_args["mv"] = (built, tangent)
    if dense:
        methods |= {
            "dense": lambda *call: jacobian(program.fn, program.wrt)(*call).to_dense(),
            "jacfwd": program.jacfwd,
            "jacrev": program.jacrev,
        }
        call_args |= {name: args for name in ("dense", "jacfwd", "jacrev")}
    sparse = isinstance(built, (Diagonal, BlockDiagonal)) and x.size <= MAX_PEER_SIZE
    if np.prod(shape.shape) > MAX_PEER_ENTRIES and not sparse:
        peers = ()
    for name, (method, method_args) in _peer_methods(program, args, peers).items():
        methods[name], call_args[name] = method, method_args
    timings = time_methods(
        program.id, "float32", size, methods, call_args, rounds=rounds,
        min_sample_s=min_sample_s, dispatch_s=dispatch_s, parallel_compile=parallel_compile,
    )  # fmt: skip
    if dense:  # trace + lower + compile, which time_methods splits (it reports compile only)
        for name in ("dense", "jacfwd"):
            timings[f"{name}_trace_compile"] = dataclasses.replace(
                timings[name], method=f"{name}_trace_compile",
                median_s=compile_seconds(methods[name], args), p25_s=0.0, p75_s=0.0,
            )  # fmt: skip
    return Case(program.id, "float32", size, tuple(shape.shape), timings)


def _per_example(batch: int, width: int) -> tuple[Callable, tuple]:
    keys = jax.random.split(jax.random.key(batch), 4)
    scale = np.float32(1 / np.sqrt(width))  # float32 under x64 too (a np.float64 promotes)
    weights = [jax.random.normal(k, (width, width), jnp.float32) * scale for k in keys[:3]]

    def mlp(xs: jax.Array) -> jax.Array:
        def one(x: jax.Array) -> jax.Array:
            return weights[2] @ jnp.tanh(weights[1] @ jnp.tanh(weights[0] @ x))

        return jax.vmap(one)(xs)

    return mlp, (jax.random.normal(keys[3], (batch, width), jnp.float32),)


def bench_special(*, rounds: int = 7, min_sample_s: float = 2e-3, quick: bool = False) -> dict:
    """The n = 10^6 elementwise case and the batch-128, width-64 per-example MLP."""
    results: dict[str, Any] = {}
    n = 10_000 if quick else 1_000_000
    flow = rule("elementwise_flow")
    args = flow.example(jax.random.key(0), jnp.float32, n)

    def functionals(*call: jax.Array) -> tuple:
        J = jacobian(flow.fn)(*call)
        return J.logdet(), J.trace(), J.diagonal()

    timings = time_methods(
        "elementwise_flow", "float32", n, {"build_logdet_trace_diagonal": functionals,
        "forward": flow.fn}, {"build_logdet_trace_diagonal": args, "forward": args},
        rounds=rounds, min_sample_s=min_sample_s,
    )  # fmt: skip
    results["elementwise_million"] = {
        "n": n,
        "timings": {k: dataclasses.asdict(t) for k, t in timings.items()},
        "time_over_forward": timings["build_logdet_trace_diagonal"].median_s
        / timings["forward"].median_s,
        "temp_bytes_per_entry": (timings["build_logdet_trace_diagonal"].temp_bytes or 0) / n,
        "dense_entries": n * n,
    }
    batch, width = (16, 16) if quick else (128, 64)
    mlp, mlp_args = _per_example(batch, width)
    methods = {
        "build": jacobian(mlp),
        "jacfwd": jax.jacfwd(mlp),
        "jacrev": jax.jacrev(mlp),
        "forward": mlp,
    }
    timings = time_methods(
        "per_example_mlp", "float32", batch, methods, {k: mlp_args for k in methods},
        rounds=rounds, min_sample_s=min_sample_s,
    )  # fmt: skip
    J = jax.jit(jacobian(mlp))(*mlp_args)
    best = min(timings["jacfwd"].median_s, timings["jacrev"].median_s)
    results["per_example_mlp"] = {
        "batch": batch,
        "width": width,
        "operator": type(J).__name__,
        "stored_entries": storage(J),
        "dense_entries": (batch * width) ** 2,
        "timings": {k: dataclasses.asdict(t) for k, t in timings.items()},
        "build_speedup_vs_jacfwd": timings["jacfwd"].median_s / timings["build"].median_s,
        "build_speedup_vs_best": best / timings["build"].median_s,
    }
    return results


def ratios(case: Case) -> dict[str, Any]:
    """The figures the targets are stated in, for one case."""
    t = case.timings
    best = case.best_autodiff()
    row: dict[str, Any] = {"program": case.rule, "size": case.size}
    if best is not None:
        row["build_speedup"] = best.median_s / t["build"].median_s
        row["dense_speedup"] = best.median_s / t["dense"].median_s
        row["dense_compile_over_jacfwd"] = (
            t["dense_trace_compile"].median_s / t["jacfwd_trace_compile"].median_s
        )
    row["mv_over_jvp"] = t["mv"].median_s / t["jvp"].median_s
    row["build_over_forward"] = t["build"].median_s / t["forward"].median_s
    for peer in PEERS:
        if peer in t:
            row[f"build_speedup_vs_{peer}"] = t[peer].median_s / t["build"].median_s
    return row


def bench_transform(
    program_ids: Sequence[str] | None = None,
    *,
    quick: bool = False,
    rounds: int | None = None,
    peers: Sequence[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark the transform on the corpus; a JSON-ready dictionary of cases and ratios.

    ``peers`` defaults to those of asdex and sparsejac that are installed; ``quick`` takes
    one small size per program and three rounds (a check that it runs, not a measurement).
    """
    known = {p.id: p for p in corpus.PROGRAMS}
    ids = list(dict.fromkeys(program_ids)) if program_ids else list(known)  # each once
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"bench-transform: unknown programs {unknown}; known: {sorted(known)}")
    selected = [known[i] for i in ids]
    peers = tuple(p for p in PEERS if installed(p)) if peers is None else tuple(peers)
    rounds = rounds if rounds is not None else (3 if quick else 7)
    min_sample_s = 1e-3 if quick else 2e-3
    plan = [
        (p, size)
        for p in selected
        for size in ((QUICK_SIZE.get(p.id, 32),) if quick else SIZES[p.id])
    ]
    dispatch_s = dispatch_time()
    cases = []
    with jax.default_matmul_precision("highest"):
        for index, (program, size) in enumerate(plan):
            if progress is not None:
                progress(index, len(plan), f"{program.id} {size}")
            cases.append(
                bench_program(
                    program, size, rounds=rounds, min_sample_s=min_sample_s,
                    dispatch_s=dispatch_s, peers=peers, parallel_compile=quick,
                )
            )  # fmt: skip
        if progress is not None:
            progress(len(plan), len(plan), "special cases")
        special = bench_special(rounds=rounds, min_sample_s=min_sample_s, quick=quick)
    return {
        "schema": "matcalc-jax/bench-transform/1",
        "settings": {"quick": quick, "rounds": rounds, "peers": list(peers)},
        "ratios": [ratios(c) for c in cases],
        "special": special,
        "cases": [
            {
                "program": c.rule,
                "size": c.size,
                "jacobian_shape": list(c.jacobian_shape),
                "timings": {m: dataclasses.asdict(t) for m, t in c.timings.items()},
            }
            for c in cases
        ],
    }


def cell(value: Any) -> str:
    """A ratio for a table: two decimals under 10, none above; '-' when missing."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


COLUMNS = (
    ("build_speedup", "build x"),
    ("dense_speedup", "dense x"),
    ("mv_over_jvp", "mv/jvp"),
    ("build_over_forward", "build/f"),
    ("dense_compile_over_jacfwd", "compile/fwd"),
    ("build_speedup_vs_asdex", "vs asdex"),
    ("build_speedup_vs_sparsejac", "vs sparsejac"),
)


def format_transform(data: dict[str, Any]) -> str:
    """The ratios as a Markdown table, then the two special cases."""
    head = "| program | size | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for row in data["ratios"]:
        cells = [cell(row.get(key)) for key, _ in COLUMNS]
        lines.append(f"| {row['program']} | {row['size']} | " + " | ".join(cells) + " |")
    million = data["special"]["elementwise_million"]
    blocks = data["special"]["per_example_mlp"]
    lines += [
        "",
        f"elementwise flow, n = {million['n']}: build + logdet + trace + diagonal = "
        f"{million['time_over_forward']:.2f} forward passes, "
        f"{million['temp_bytes_per_entry']:.1f} temporary bytes per entry "
        f"(a dense Jacobian: {million['dense_entries']:.1e} entries)",
        f"per-example MLP, batch {blocks['batch']}, width {blocks['width']}: "
        f"{blocks['operator']} storing {blocks['stored_entries']} entries "
        f"(dense: {blocks['dense_entries']}), built "
        f"{blocks['build_speedup_vs_jacfwd']:.0f}x faster than jax.jacfwd, "
        f"{blocks['build_speedup_vs_best']:.0f}x faster than the best of jacfwd and jacrev",
    ]
    return "\n".join(lines)
