"""The Hessian benchmark: ``matcalc_jax.hessian`` against ``jax.hessian`` and
``jax.jacfwd(jax.grad(f))``, with asdex's sparse Hessian beside them when installed, and
``laplacian`` against ``trace(jax.hessian)`` and folx's forward Laplacian.

Per program (float32, n = 1024 unless quick; compiled apart, warmed up, interleaved rounds,
medians, the harness of the rules), evaluation and preparation are timed apart, as the
peers report them:

- evaluation: ``build`` (``hessian(f)(x)``, the structured operator), ``dense``
  (``hessian(f)(x).to_dense()``), ``jax_hessian``, ``jacfwd_grad``, ``asdex`` (its
  compressed Hessian decompressed to a sparse matrix, given its coloring);
- preparation: the seconds to trace, lower and compile ``build`` and ``jax_hessian``, and
  for asdex its sparsity detection and coloring plus its first compile.

Three special cases: a separable objective at n = 10^6 (``diagonal``, ``trace`` and
``logdet`` against one ``jax.grad``), the Laplacian of a 2-hidden-layer tanh MLP at
d = 256, and a Gauss-Newton product (``mv``) against a ``jvp`` then a ``vjp``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from matcalc_jax.benchmark.rules import dispatch_time, time_methods
from matcalc_jax.benchmark.transform import cell, installed
from matcalc_jax.operators.base import storage
from matcalc_jax.transform.second_order import gauss_newton, hessian, laplacian

N = 1024
QUICK_N = 64
#: A second, larger size for the programs whose structured Hessian costs O(n): at n = 1024
#: their build is within a few times the cost of an empty jitted call.
LARGER: dict[str, int] = {
    "separable": 4096, "rosenbrock": 4096, "softmax_cross_entropy": 4096, "per_example": 4096,
}  # fmt: skip
PEERS = ("asdex", "folx")


# ------------------------------------------------------------------------ programs


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def glm(n: int) -> tuple[Callable, jax.Array]:
    """Logistic regression's loss in w: sum log(1 + e^z) - y z, z = X w, X of 2n rows."""
    X = _normal(1, (2 * n, n)) / math.sqrt(n)
    y = (_normal(2, (2 * n,)) > 0).astype(jnp.float32)

    def f(w: jax.Array) -> jax.Array:
        z = X @ w
        return jnp.sum(jnp.logaddexp(0.0, z) - y * z)

    return f, _normal(3, (n,))


def separable(n: int) -> tuple[Callable, jax.Array]:
    """sum_i sin(x_i) + x_i^4 / 4 + softplus(x_i)."""

    def f(x: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sin(x) + x**4 / 4 + jax.nn.softplus(x))

    return f, _normal(4, (n,))


def rosenbrock(n: int) -> tuple[Callable, jax.Array]:
    """sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2."""

    def f(x: jax.Array) -> jax.Array:
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    return f, _normal(5, (n,)) * 0.5


def softmax_cross_entropy(n: int) -> tuple[Callable, jax.Array]:
    """-sum_k t_k log softmax(z)_k with soft targets t."""
    t = jax.nn.softmax(_normal(6, (n,)))

    def f(z: jax.Array) -> jax.Array:
        return -jnp.sum(t * jax.nn.log_softmax(z))

    return f, _normal(7, (n,))


def per_example(n: int) -> tuple[Callable, jax.Array]:
    """A per-example loss summed over a vmapped batch of n / 16 examples of 16 features."""
    W = _normal(8, (16, 16)) / 4

    def one(x: jax.Array) -> jax.Array:
        return jnp.sum(jnp.tanh(W @ x) ** 2) + 0.1 * jnp.sum(x**2)

    def f(xs: jax.Array) -> jax.Array:
        return jnp.sum(jax.vmap(one)(xs))

    return f, _normal(9, (n // 16, 16))


def barrier(n: int) -> tuple[Callable, jax.Array]:
    """A quadratic form plus a log barrier: x^T A x / 2 - sum log x."""
    B = _normal(10, (n, n)) / math.sqrt(n)
    A = B @ B.T + jnp.eye(n)

    def f(x: jax.Array) -> jax.Array:
        return 0.5 * x @ (A @ x) - jnp.sum(jnp.log(x))

    return f, jnp.abs(_normal(11, (n,))) + 0.5


PROGRAMS: dict[str, Callable[[int], tuple[Callable, jax.Array]]] = {
    "glm": glm,
    "separable": separable,
    "rosenbrock": rosenbrock,
    "softmax_cross_entropy": softmax_cross_entropy,
    "per_example": per_example,
    "barrier": barrier,
}


def preparation_seconds(fn: Callable, args: Sequence[Any]) -> float:
    """Seconds to trace, lower and compile ``jax.jit(fn)`` the first time, as a user's first
    call pays them: JAX's caches are cleared first (the transform's work happens while
    tracing, so all three count)."""
    jax.clear_caches()
    start = time.perf_counter()
    jax.jit(lambda *call: fn(*call)).lower(*args).compile()
    return time.perf_counter() - start


def _asdex(f: Callable, x: jax.Array) -> tuple[Callable, float]:
    """asdex's sparse Hessian of f given its coloring, and the seconds its detection and
    coloring took."""
    import asdex

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", asdex.DenseColoringWarning)
        coloring = asdex.hessian_coloring(f, x)
    prepared = time.perf_counter() - start
    return asdex.hessian_from_coloring(f, coloring, "bcoo"), prepared


def bench_program(
    name: str, n: int, *, rounds: int, min_sample_s: float, dispatch_s: float, peers: Sequence[str]
) -> dict[str, Any]:
    """Time one program's Hessian by every method; a JSON-ready row."""
    f, x = PROGRAMS[name](n)
    methods: dict[str, Callable] = {
        "build": hessian(f),
        "dense": lambda x: hessian(f)(x).to_dense(),
        "jax_hessian": jax.hessian(f),
        "jacfwd_grad": jax.jacfwd(jax.grad(f)),
        "grad": jax.grad(f),
    }
    preparation = {
        name: preparation_seconds(methods[name], (x,)) for name in ("build", "dense", "jax_hessian")
    }
    if "asdex" in peers:
        jax.clear_caches()
        methods["asdex"], detection = _asdex(f, x)
        preparation["asdex_detection"] = detection
        preparation["asdex"] = detection + preparation_seconds(methods["asdex"], (x,))
    timings = time_methods(
        name, "float32", n, methods, {m: (x,) for m in methods}, rounds=rounds,
        min_sample_s=min_sample_s, dispatch_s=dispatch_s,
    )  # fmt: skip
    H = jax.jit(hessian(f))(x)
    t = {m: timing.median_s for m, timing in timings.items()}
    row: dict[str, Any] = {
        "program": name,
        "n": int(x.size),
        "structure": type(H.operator).__name__,
        "stored_entries": storage(H),
        "dense_entries": int(x.size) ** 2,
        "build_speedup": t["jax_hessian"] / t["build"],
        "dense_speedup": t["jax_hessian"] / t["dense"],
        "build_over_grad": t["build"] / t["grad"],
        "preparation_s": preparation,
        "timings": {m: dataclasses.asdict(timing) for m, timing in timings.items()},
    }
    if "asdex" in t:
        row["build_speedup_vs_asdex"] = t["asdex"] / t["build"]
        row["dense_speedup_vs_asdex"] = t["asdex"] / t["dense"]
        row["asdex_speedup"] = t["jax_hessian"] / t["asdex"]
    return row


# -------------------------------------------------------------------- special cases


def bench_million(*, n: int, rounds: int, min_sample_s: float) -> dict[str, Any]:
    """A separable objective at n entries: diagonal, trace and logdet of its Hessian against
    one ``jax.grad``."""
    f, x = separable(n)

    def functionals(x: jax.Array) -> tuple:
        H = hessian(f)(x)
        return H.diagonal(), H.trace(), H.logdet()

    methods = {"diagonal_trace_logdet": functionals, "grad": jax.grad(f)}
    timings = time_methods(
        "separable", "float32", n, methods, {m: (x,) for m in methods}, rounds=rounds,
        min_sample_s=min_sample_s,
    )  # fmt: skip
    return {
        "n": n,
        "time_over_grad": timings["diagonal_trace_logdet"].median_s / timings["grad"].median_s,
        "jax_hessian_bytes": 4 * n * n,
        "timings": {m: dataclasses.asdict(t) for m, t in timings.items()},
    }


def tanh_mlp(d: int, width: int) -> Callable:
    """A scalar 2-hidden-layer tanh MLP of its input x in R^d."""
    W1 = _normal(20, (width, d)) / math.sqrt(d)
    W2 = _normal(21, (width, width)) / math.sqrt(width)
    w3 = _normal(22, (width,)) / math.sqrt(width)

    def f(x: jax.Array) -> jax.Array:
        return w3 @ jnp.tanh(W2 @ jnp.tanh(W1 @ x))

    return f


def bench_laplacian(
    *, d: int, rounds: int, min_sample_s: float, peers: Sequence[str]
) -> dict[str, Any]:
    """The Laplacian of ``tanh_mlp`` at d inputs, width d: ``laplacian`` against
    ``trace(jax.hessian)`` and folx's forward Laplacian."""
    f = tanh_mlp(d, d)
    x = _normal(23, (d,))
    methods: dict[str, Callable] = {
        "laplacian": laplacian(f),
        "trace_jax_hessian": lambda x: jnp.trace(jax.hessian(f)(x)),
    }
    if "folx" in peers:
        import folx

        forward = folx.forward_laplacian(f, sparsity_threshold=0)
        methods["folx"] = lambda x: forward(x).laplacian
    timings = time_methods(
        "laplacian_mlp", "float32", d, methods, {m: (x,) for m in methods}, rounds=rounds,
        min_sample_s=min_sample_s,
    )  # fmt: skip
    t = {m: timing.median_s for m, timing in timings.items()}
    result = {
        "d": d,
        "width": d,
        "speedup": t["trace_jax_hessian"] / t["laplacian"],
        "timings": {m: dataclasses.asdict(timing) for m, timing in timings.items()},
    }
    if "folx" in t:
        result["folx_speedup"] = t["trace_jax_hessian"] / t["folx"]
    return result


def bench_gauss_newton(*, batch: int, rounds: int, min_sample_s: float) -> dict[str, Any]:
    """``gauss_newton(model, loss).mv`` (the operator built beforehand) against the
    matrix-free recipe: ``jax.jvp`` of the model, the loss's HVP, ``jax.vjp``; a tanh MLP
    classifier (64 features, width 128, 10 classes) with softmax cross-entropy."""
    params = {
        "w1": _normal(30, (64, 128)) / 8,
        "w2": _normal(31, (128, 10)) / math.sqrt(128),
    }
    inputs = _normal(32, (batch, 64))
    targets = jax.nn.one_hot(jnp.arange(batch) % 10, 10, dtype=jnp.float32)

    def model(p: dict, xs: jax.Array) -> jax.Array:
        return jnp.tanh(xs @ p["w1"]) @ p["w2"]

    def loss(logits: jax.Array) -> jax.Array:
        return -jnp.sum(targets * jax.nn.log_softmax(logits))

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v = _normal(33, flat.shape)
    G = jax.jit(gauss_newton(model, loss))(params, inputs)

    def recipe(params: dict, v: jax.Array) -> jax.Array:
        tangent = unravel(v)
        y, jv = jax.jvp(lambda p: model(p, inputs), (params,), (tangent,))
        hjv = jax.jvp(jax.grad(loss), (y,), (jv,))[1]
        pulled = jax.vjp(lambda p: model(p, inputs), params)[1](hjv)[0]
        return jax.flatten_util.ravel_pytree(pulled)[0]

    methods = {"gauss_newton_mv": lambda G, v: G.mv(v), "jvp_hvp_vjp": recipe}
    call_args = {"gauss_newton_mv": (G, v), "jvp_hvp_vjp": (params, v)}
    timings = time_methods(
        "gauss_newton", "float32", batch, methods, call_args, rounds=rounds,
        min_sample_s=min_sample_s,
    )  # fmt: skip
    return {
        "batch": batch,
        "parameters": int(flat.size),
        "mv_over_recipe": timings["gauss_newton_mv"].median_s / timings["jvp_hvp_vjp"].median_s,
        "timings": {m: dataclasses.asdict(t) for m, t in timings.items()},
    }


def bench_hessian(
    program_ids: Sequence[str] | None = None,
    *,
    quick: bool = False,
    rounds: int | None = None,
    peers: Sequence[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark ``hessian``, ``laplacian`` and ``gauss_newton``; a JSON-ready dictionary.

    ``peers`` defaults to those of asdex and folx that are installed; ``quick`` takes small
    sizes and three rounds (a check that it runs, not a measurement)."""
    names = list(dict.fromkeys(program_ids)) if program_ids else list(PROGRAMS)  # each once
    unknown = [p for p in names if p not in PROGRAMS]
    if unknown:
        raise ValueError(f"bench-hessian: unknown programs {unknown}; known: {sorted(PROGRAMS)}")
    peers = tuple(p for p in PEERS if installed(p)) if peers is None else tuple(peers)
    rounds = rounds if rounds is not None else (3 if quick else 7)
    min_sample_s = 1e-3 if quick else 2e-3
    n = QUICK_N if quick else N
    dispatch_s = dispatch_time()
    rows = []
    plan = [(name, n) for name in names]
    if not quick:
        plan += [(name, LARGER[name]) for name in names if name in LARGER]
    steps = len(plan) + 3
    with jax.default_matmul_precision("highest"):
        for index, (name, size) in enumerate(plan):
            if progress is not None:
                progress(index, steps, f"{name} {size}")
            rows.append(
                bench_program(
                    name, size, rounds=rounds, min_sample_s=min_sample_s,
                    dispatch_s=dispatch_s, peers=peers,
                )
            )  # fmt: skip
        separable_n = 10_000 if quick else 1_000_000
        if progress is not None:
            progress(len(plan), steps, f"separable at n = {separable_n}")
        million = bench_million(n=separable_n, rounds=rounds, min_sample_s=min_sample_s)
        if progress is not None:
            progress(len(plan) + 1, steps, "laplacian of an MLP")
        lap = bench_laplacian(
            d=32 if quick else 256, rounds=rounds, min_sample_s=min_sample_s, peers=peers
        )
        if progress is not None:
            progress(len(plan) + 2, steps, "gauss-newton product")
        gn = bench_gauss_newton(
            batch=32 if quick else 256, rounds=rounds, min_sample_s=min_sample_s
        )
    return {
        "schema": "matcalc-jax/bench-hessian/1",
        "settings": {
            "quick": quick,
            "rounds": rounds,
            "n": n,
            "peers": list(peers),
            "dispatch_s": dispatch_s,
        },
        "programs": rows,
        "special": {"separable_million": million, "laplacian_mlp": lap, "gauss_newton": gn},
    }


COLUMNS = (
    ("structure", "structure"),
    ("stored_entries", "stores"),
    ("build_speedup", "build x"),
    ("dense_speedup", "dense x"),
    ("asdex_speedup", "asdex x"),
    ("build_speedup_vs_asdex", "build vs asdex"),
)


def format_hessian(data: dict[str, Any]) -> str:
    """The figures as a Markdown table (speed-ups over ``jax.hessian``), then preparation
    times and the special cases."""
    head = "| program | n | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for row in data["programs"]:
        cells = [
            str(row.get(key, "-")) if key in ("structure", "stored_entries")
            else cell(row.get(key))
            for key, _ in COLUMNS
        ]  # fmt: skip
        lines.append(f"| {row['program']} | {row['n']} | " + " | ".join(cells) + " |")
    lines += ["", "| program, n | preparation (s): " + ", ".join(
        sorted({k for row in data["programs"] for k in row["preparation_s"]})) + " |"]  # fmt: skip
    for row in data["programs"]:
        prep = ", ".join(f"{k} {v:.2f}" for k, v in sorted(row["preparation_s"].items()))
        lines.append(f"| {row['program']} {row['n']} | {prep} |")
    million = data["special"]["separable_million"]
    lap = data["special"]["laplacian_mlp"]
    gn = data["special"]["gauss_newton"]
    folx = f", folx {lap['folx_speedup']:.2f}x" if "folx_speedup" in lap else ""
    lines += [
        "",
        f"separable, n = {million['n']}: diagonal + trace + logdet = "
        f"{million['time_over_grad']:.2f} times one jax.grad "
        f"(jax.hessian would need {_bytes(million['jax_hessian_bytes'])})",
        f"laplacian of a 2-hidden-layer tanh MLP, d = {lap['d']}: "
        f"{lap['speedup']:.2f}x faster than trace(jax.hessian){folx}",
        f"gauss_newton mv, {gn['parameters']} parameters, batch {gn['batch']}: "
        f"{gn['mv_over_recipe']:.2f} times a jvp + HVP + vjp",
    ]
    return "\n".join(lines)


def write_plot(data: dict[str, Any], path: str) -> str:
    """Bars of the speed-ups over ``jax.hessian`` per program (log scale): the structured
    build, ``to_dense``, and asdex's sparse Hessian where it ran. Needs matplotlib (the
    ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'matcalc-jax[bench]'") from error
    n = data["settings"]["n"]
    rows = [row for row in data["programs"] if row["n"] == n]
    series = [
        ("build_speedup", "matcalc_jax.hessian (structured)"),
        ("dense_speedup", "matcalc_jax.hessian(...).to_dense()"),
        ("asdex_speedup", "asdex (sparse, after its detection)"),
    ]
    series = [(key, label) for key, label in series if any(key in row for row in rows)]
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for k, (key, label) in enumerate(series):
        positions = [i + (k - (len(series) - 1) / 2) * width for i in range(len(rows))]
        values = [row.get(key, 0.0) for row in rows]
        axes.bar(positions, values, width, label=label)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xticks(range(len(rows)), [f"{r['program']}\n{r['structure']}" for r in rows])
    axes.tick_params(axis="x", labelsize=8)
    axes.set_ylabel("speed-up over jax.hessian")
    axes.set_title(f"Hessians at n = {n}, float32 (above 1: faster than jax.hessian)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _bytes(count: float) -> str:
    """A byte count in the largest unit that keeps it at least 1 (400 MB, not 0.0 TB)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} bytes"
