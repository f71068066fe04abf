"""The scale benchmark: what one device holds and what the devices send each other, for the
sharded per-example Jacobian and the sharded Gram Hessian over 1, 2, 4 and 8 devices, and the
peak memory of building a Jacobian in chunks.

Every figure is read from the compiled program, not from a clock:

- memory per device: ``Compiled.memory_analysis()`` of the SPMD program, which is the
  program one device runs: its arguments, its outputs and its temporaries, in bytes;
- communication: the collectives in the compiled HLO (``Compiled.as_text()``), each with the
  bytes of its result on one device (an all-reduce of a (d, d) float32 matrix moves d^2 * 4
  bytes through each device, up to the algorithm's constant: a ring sends 2 (N - 1) / N of
  it). ``all-gather`` of a sharded operand would show here; the tests assert there is none.

Emulated CPU devices (``--xla_force_host_platform_device_count``) share the host's cores, so
time does not fall with more of them; the seconds are reported, but only memory and bytes
moved are meant to scale. On real accelerators (``bench/run_gpu.sh``) all three do.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from matcalc_jax.benchmark.rules import _run
from matcalc_jax.catalogue import corpus, rule
from matcalc_jax.forms.objectives import logistic_regression_gradient, logistic_regression_hessian
from matcalc_jax.operators import batched_jacobian
from matcalc_jax.transform import jacobian

#: The collective operations of XLA's HLO; ``-start`` forms (asynchronous, on GPUs) are
#: counted once, their ``-done`` halves not at all.
COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_BYTES |= {"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_INSTRUCTION = re.compile(
    r"=\s*(?P<shape>\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>" + "|".join(COLLECTIVES) + r")(?:-start)?\("
)
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")

DEVICE_COUNTS = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled program: its operation and the bytes of its result."""

    op: str
    bytes: int


def collectives(hlo: str) -> list[Collective]:
    """The collectives in the text of a compiled HLO module, in program order."""
    found = []
    for match in _INSTRUCTION.finditer(hlo):
        size = 0
        for dtype, dims in _ARRAY.findall(match["shape"]):
            count = int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
            size += count * _BYTES.get(dtype, 4)
        found.append(Collective(match["op"], size))
    return found


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What one device holds and sends for one compiled program (bytes)."""

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    collectives: tuple[Collective, ...]
    seconds: float | None = None

    @property
    def resident_bytes(self) -> int:
        """Arguments, outputs and temporaries together: the program's memory on one device."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes

    @property
    def moved_bytes(self) -> int:
        """The bytes of all collective results on one device."""
        return sum(c.bytes for c in self.collectives)

    def as_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for c in self.collectives:
            counts[c.op] = counts.get(c.op, 0) + 1
        return {
            "argument_bytes": self.argument_bytes,
            "output_bytes": self.output_bytes,
            "temp_bytes": self.temp_bytes,
            "resident_bytes": self.resident_bytes,
            "moved_bytes": self.moved_bytes,
            "collectives": counts,
            "seconds": self.seconds,
        }


def compiled(fn: Callable, *args: Any, autotune: bool = True) -> Any:
    """``fn`` traced, lowered and compiled for ``args`` (their shardings included); on a GPU
    with ``autotune=False``, without timing candidate kernels (XLA's
    ``xla_gpu_autotune_level=0``)."""
    lowered = jax.jit(fn).lower(*args)
    if autotune or jax.default_backend() != "gpu":
        return lowered.compile()
    return lowered.compile({"xla_gpu_autotune_level": 0})


def footprint(fn: Callable, *args: Any, rounds: int = 0) -> Footprint:
    """The memory and collectives of ``jax.jit(fn)`` on ``args``; with ``rounds``, also the
    median seconds of that many calls after a warm-up. With none, the program is compiled
    and never run: on a GPU without autotuning, which runs candidate kernels on buffers of
    the program's size (a dense Jacobian of 64 GiB could not be compiled at all)."""
    program = compiled(fn, *args, autotune=bool(rounds))
    memory = program.memory_analysis()
    seconds = None
    if rounds:
        _run(program, args, 1)  # warm-up
        seconds = float(np.median([_run(program, args, 1) for _ in range(rounds)]))
    return Footprint(
        int(memory.argument_size_in_bytes),
        int(memory.output_size_in_bytes),
        int(memory.temp_size_in_bytes),
        tuple(collectives(program.as_text())),
        seconds,
    )


def batch_mesh(count: int, axis: str = "batch") -> jax.sharding.Mesh:
    """A one-axis mesh of the first ``count`` devices."""
    if count > jax.device_count():
        raise ValueError(
            f"batch_mesh: count={count}; JAX has {jax.device_count()} devices (on the CPU, "
            "emulate more with XLA_FLAGS=--xla_force_host_platform_device_count=8)"
        )
    return jax.make_mesh((count,), (axis,), devices=jax.devices()[:count])


def by_rows(mesh: jax.sharding.Mesh, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """``arrays`` split over ``mesh`` along their leading axis (rows, examples)."""
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return tuple(jax.device_put(a, sharding) for a in arrays)


def on_every_device(mesh: jax.sharding.Mesh, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """``arrays`` copied whole to every device of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return tuple(jax.device_put(a, sharding) for a in arrays)


# ------------------------------------------------------------------------------ the cases


def per_example_data(batch: int, width: int, dtype: Any = jnp.float32) -> tuple[jax.Array, ...]:
    """A batch ``xs`` (batch, width) and an MLP's weights W1 (2 width, width), W2
    (width, 2 width), scaled so that tanh stays out of saturation."""
    keys = jax.random.split(jax.random.key(1), 3)
    xs = jax.random.normal(keys[0], (batch, width), dtype)
    W1 = jax.random.normal(keys[1], (2 * width, width), dtype) / width**0.5
    W2 = jax.random.normal(keys[2], (width, 2 * width), dtype) / (2 * width) ** 0.5
    return xs, W1, W2


def per_example_mlp_jacobian(xs: jax.Array, W1: jax.Array, W2: jax.Array) -> Any:
    """The structured Jacobian of the corpus's vmapped MLP by the transform: a BlockDiagonal."""
    return jacobian(corpus.per_example_mlp)(xs, W1, W2)


def mlp_block(x: jax.Array, W1: jax.Array, W2: jax.Array) -> jax.Array:
    """The closed-form Jacobian of tanh(W2 tanh(W1 x)) for one example:
    diag(1 - y^2) W2 diag(1 - h^2) W1 with h = tanh(W1 x), y = tanh(W2 h)."""
    h = jnp.tanh(W1 @ x)
    y = jnp.tanh(W2 @ h)
    return (1 - y**2)[:, None] * (W2 * (1 - h**2)[None, :]) @ W1


def closed_per_example_jacobian(xs: jax.Array, W1: jax.Array, W2: jax.Array) -> Any:
    """``batched_jacobian`` of the closed-form block :func:`mlp_block`: a BlockDiagonal."""
    return batched_jacobian(lambda x: mlp_block(x, W1, W2), xs)


def per_example_cases(xs: jax.Array, W1: jax.Array, W2: jax.Array) -> dict[str, Callable]:
    """The per-example programs measured: the transform's Jacobian, ``batched_jacobian`` of
    the closed form, a Jacobian-vector product with each example's own tangent, and
    ``jax.jacfwd`` of the batched map, whose dense (N, n, N, m) array is only compiled (its
    memory read from the compiled program, never allocated: at the full size it would need
    tens of GB)."""

    def mv(xs: jax.Array, W1: jax.Array, W2: jax.Array) -> jax.Array:
        return per_example_mlp_jacobian(xs, W1, W2).mv(xs)

    def dense(xs: jax.Array, W1: jax.Array, W2: jax.Array) -> jax.Array:
        return jax.jacfwd(corpus.per_example_mlp)(xs, W1, W2)

    return {
        "transform": per_example_mlp_jacobian,
        "batched_jacobian": closed_per_example_jacobian,
        "mv": mv,
        "jacfwd (dense, compiled only)": dense,
    }


def gram_data(rows: int, d: int, dtype: Any = jnp.float32) -> tuple[jax.Array, ...]:
    """A logistic-regression problem: weights w (d,), inputs X (rows, d), labels y (rows,)."""
    keys = jax.random.split(jax.random.key(2), 3)
    X = jax.random.normal(keys[0], (rows, d), dtype) / d**0.5
    truth = jax.random.normal(keys[1], (d,), dtype)
    y = (jax.random.uniform(keys[2], (rows,), dtype) < jax.nn.sigmoid(X @ truth)).astype(dtype)
    return jnp.zeros((d,), dtype), X, y


def newton_step(w: jax.Array, X: jax.Array, y: jax.Array, ridge: float = 1e-6) -> jax.Array:
    """One Newton step for logistic regression: w - (H + ridge I)^{-1} g, with g = X^T (s - y)
    and H = X^T diag(s(1 - s)) X formed from the factored ``WeightedGram``."""
    g = logistic_regression_gradient(w, X, y)
    H = logistic_regression_hessian(w, X, y, structured=True).to_dense()
    return w - jnp.linalg.solve(H + ridge * jnp.eye(w.shape[0], dtype=H.dtype), g)


def gram_cases() -> dict[str, Callable]:
    """The Gram-Hessian programs measured, each of (w, X, y)."""

    def hessian(w: jax.Array, X: jax.Array, y: jax.Array) -> Any:
        return logistic_regression_hessian(w, X, y, structured=True)

    return {
        "to_dense": lambda w, X, y: hessian(w, X, y).to_dense(),
        "mv": lambda w, X, y: hessian(w, X, y).mv(jnp.ones_like(w)),
        "diagonal": lambda w, X, y: hessian(w, X, y).diagonal(),
        "newton_step": newton_step,
    }


# -------------------------------------------------------------------------------- sweeps


def sharded_sweep(
    device_counts: Sequence[int] = DEVICE_COUNTS,
    *,
    batch: int = 2048,
    width: int = 64,
    rows: int = 131072,
    d: int = 64,
    rounds: int = 5,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Footprints of the per-example and Gram programs with the batch (rows) split over each
    device count; one record per (program, method, devices)."""
    per_example = per_example_data(batch, width)
    gram = gram_data(rows, d)
    records = []
    for count in device_counts:
        mesh = batch_mesh(count)
        xs = by_rows(mesh, per_example[0]) + on_every_device(mesh, *per_example[1:])
        wxy = on_every_device(mesh, gram[0]) + by_rows(mesh, *gram[1:])
        for family, cases, args, size in (
            ("per_example", per_example_cases(*xs), xs, f"batch {batch}, width {width}"),
            ("gram", gram_cases(), wxy, f"rows {rows}, d {d}"),
        ):
            for method, fn in cases.items():
                if progress:
                    progress(f"{family} {method} on {count} device(s)")
                timed = rounds if "compiled only" not in method else 0
                found = footprint(fn, *args, rounds=timed).as_dict()
                records.append(
                    {"program": family, "method": method, "size": size, "devices": count, **found}
                )
    return records


def chunk_sweep(
    chunk_sizes: Sequence[int | None] = (None, 256, 64, 16),
    *,
    size: int = 1024,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Memory of building a dense Jacobian whole and in chunks, on one device: the softmax
    rule's ``jacfwd``/``jacrev`` and the transform's 3-layer-MLP Jacobian's ``to_dense``.
    Each record says how far the chunked array is from the whole one (0.0: identical)."""
    softmax = rule("softmax")
    softmax_args = softmax.example(jax.random.key(0), jnp.float32, size)
    mlp = rule("mlp3_input")
    mlp_args = mlp.example(jax.random.key(0), jnp.float32, size)
    mlp_J = jax.jit(lambda *a: mlp.structured(*a))(*mlp_args)
    builders: dict[str, tuple[Callable[[int | None], Callable], tuple]] = {
        "softmax jacfwd": (lambda k: lambda *a: softmax.jacfwd(*a, chunk_size=k), softmax_args),
        "softmax jacrev": (lambda k: lambda *a: softmax.jacrev(*a, chunk_size=k), softmax_args),
        "mlp3 to_dense": (lambda k: lambda J: J.to_dense(chunk_size=k), (mlp_J,)),
    }
    records = []
    for name, (build, args) in builders.items():
        whole = jax.jit(build(None))(*args)
        for k in chunk_sizes:
            if progress:
                progress(f"{name} chunk_size={k}")
            found = footprint(build(k), *args).as_dict()
            difference = float(jnp.max(jnp.abs(jax.jit(build(k))(*args) - whole)))
            records.append(
                {"case": name, "n": size, "chunk_size": k, "max_difference": difference, **found}
            )
    return records


def bench_scale(
    device_counts: Sequence[int] = DEVICE_COUNTS,
    *,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The sharded sweep and the chunk sweep; ``quick`` uses small sizes and one round."""
    if quick:
        sharded = sharded_sweep(
            device_counts, batch=64, width=8, rows=1024, d=8, rounds=1, progress=progress
        )
        chunks = chunk_sweep((None, 16, 4), size=64, progress=progress)
    else:
        sharded = sharded_sweep(device_counts, progress=progress)
        chunks = chunk_sweep(progress=progress)
    return {"sharded": sharded, "chunks": chunks}


# ------------------------------------------------------------------------------- tables


def _kib(count: int) -> str:
    return f"{count / 1024:,.1f}"


def format_scale(data: dict[str, Any]) -> str:
    """The two tables, in Markdown."""
    lines = [
        "Per device, from the compiled SPMD program (KiB; moved: bytes of collective results).",
        "",
        "| program | method | size | devices | arguments | outputs | temporaries | resident "
        "| moved | collectives | ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in data["sharded"]:
        ops = ", ".join(f"{n} {op}" for op, n in sorted(r["collectives"].items())) or "none"
        ms = "" if r["seconds"] is None else f"{r['seconds'] * 1e3:.2f}"
        lines.append(
            f"| {r['program']} | {r['method']} | {r['size']} | {r['devices']} "
            f"| {_kib(r['argument_bytes'])} | {_kib(r['output_bytes'])} "
            f"| {_kib(r['temp_bytes'])} | {_kib(r['resident_bytes'])} "
            f"| {r['moved_bytes']:,} | {ops} | {ms} |"
        )
    lines += [
        "",
        "Building a dense Jacobian in chunks, one device (KiB).",
        "",
        "| case | n | chunk_size | outputs | temporaries | max difference from whole |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["chunks"]:
        k = "whole" if r["chunk_size"] is None else r["chunk_size"]
        lines.append(
            f"| {r['case']} | {r['n']} | {k} | {_kib(r['output_bytes'])} "
            f"| {_kib(r['temp_bytes'])} | {r['max_difference']:.1e} |"
        )
    return "\n".join(lines)
