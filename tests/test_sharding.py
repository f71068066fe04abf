"""Beyond one device: the eight-device suite and two processes, each in subprocesses (so the
rest of the suite keeps its one device), and the memory caps of ``chunk_size``."""

import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj
from matcalc_jax.benchmark.scale import (
    Collective,
    collectives,
    footprint,
    gram_cases,
    gram_data,
    per_example_data,
    per_example_mlp_jacobian,
)
from matcalc_jax.core.sharding import batch_like, replicated_like

from .helpers import assert_jacobians_close, key

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 300


def _environment(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_eight_device_suite_passes():
    """tests/multidevice on eight emulated CPU devices: every test runs, none is skipped."""
    command = [sys.executable, "-m", "pytest", "tests/multidevice", "-q", "-n", "0"]
    command += ["-p", "no:cacheprovider", "-rs"]
    done = subprocess.run(
        command, cwd=ROOT, env=_environment(8), capture_output=True, text=True, timeout=LIMIT_S
    )
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail and "error" not in tail.lower(), tail


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
    """examples/distributed.py as two processes of four CPU devices each (gloo over
    loopback): the gathered per-example Jacobian and Gram Hessian equal one process's, and
    the compiled programs gather nothing."""
    port, out = _free_port(), tmp_path / "results.npz"
    script = str(ROOT / "examples" / "distributed.py")
    processes = []
    try:
        for index in range(2):
            command = [sys.executable, script, "--coordinator", f"127.0.0.1:{port}"]
            command += ["--processes", "2", "--id", str(index), "--timeout", "60"]
            command += ["--out", str(out)] if index == 0 else []
            output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
            processes.append(subprocess.Popen(command, env=_environment(4), **output))
        outputs = [p.communicate(timeout=LIMIT_S)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
    for p, text in zip(processes, outputs, strict=True):
        assert p.returncode == 0, text[-3000:]
        assert "of 8 devices, 32 examples here" in text, text[-3000:]
    found = np.load(out)
    xs, W1, W2 = per_example_data(64, 8)
    J = jax.jit(per_example_mlp_jacobian)(xs, W1, W2)
    w, X, y = gram_data(1024, 8)
    assert_jacobians_close(found["blocks"], J.blocks)
    assert_jacobians_close(found["mv"], J.mv(xs))
    assert_jacobians_close(found["hessian"], gram_cases()["to_dense"](w, X, y))
    assert_jacobians_close(found["newton_step"], gram_cases()["newton_step"](w, X, y))
    assert int(found["jacobian_all_gathers"]) == 0 and int(found["jacobian_all_reduces"]) == 0
    assert int(found["newton_step_all_gathers"]) == 0
    assert int(found["newton_step_all_reduces"]) == 1


# ----------------------------------------------------------------------------- chunk_size


def _whole_and_chunked(build, *args):
    """``build(layout, chunk_size)`` whole and in chunks of 1 and 3, in both layouts, from one
    compiled program."""

    def all_of_them(*args):
        return [
            (build(args, layout, None), build(args, layout, 1), build(args, layout, 3))
            for layout in ("numerator", "denominator")
        ]

    return jax.jit(all_of_them)(*args)


@pytest.mark.parametrize("method", ["jacfwd", "jacrev"])
def test_chunked_autodiff_equals_whole_for_every_rule(method):
    for rule in mj.rules():

        def build(args, layout, chunk_size, rule=rule):
            return getattr(rule, method)(*args, layout=layout, chunk_size=chunk_size)

        for whole, *chunked in _whole_and_chunked(build, *rule.example(key(7), jnp.float64)):
            for array in chunked:
                assert_jacobians_close(array, whole)


def test_chunked_to_dense_equals_whole_for_every_structured_form():
    for rule in mj.rules() + mj.programs():

        def build(args, layout, chunk_size, rule=rule):
            return rule.structured(*args).to_dense(layout, chunk_size=chunk_size)

        for whole, *chunked in _whole_and_chunked(build, *rule.example(key(7), jnp.float64)):
            for array in chunked:
                assert_jacobians_close(array, whole)


def test_chunked_to_dense_under_jit_of_a_wide_jacobian():
    """More rows than columns (mv of columns) and more columns than rows (vm of rows)."""
    A = jax.random.normal(key(3), (7, 3))
    for matrix in (A, A.T):
        J = mj.Dense(matrix, 1)
        product = mj.operators.compose(J, mj.Diagonal(jnp.arange(1.0, matrix.shape[1] + 1)))
        dense = jax.jit(partial(product.to_dense, chunk_size=2))()
        np.testing.assert_allclose(dense, matrix * jnp.arange(1.0, matrix.shape[1] + 1))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_bad_chunk_size_is_a_clear_error(bad):
    rule = mj.rule("softmax")
    args = rule.example(key(1))
    with pytest.raises(ValueError, match=r"rule 'softmax' jacfwd: chunk_size="):
        rule.jacfwd(*args, chunk_size=bad)
    with pytest.raises(ValueError, match=r"rule 'softmax' jacrev: chunk_size="):
        rule.jacrev(*args, chunk_size=bad)
    with pytest.raises(ValueError, match=r"DiagonalPlusLowRank.to_dense: chunk_size=.*positive"):
        rule.structured(*args).to_dense(chunk_size=bad)
    with pytest.raises(ValueError, match=r"Dense.to_dense: chunk_size="):
        mj.Dense(jnp.eye(2), 1).to_dense(chunk_size=bad)


def _temp(fn, *args) -> int:
    return footprint(fn, *args).temp_bytes


def test_peak_memory_falls_as_the_chunk_shrinks():
    """The compiled program's temporaries shrink with the chunk: softmax's jacrev (whole: an
    (n, n) cotangent batch and its intermediates) and the 3-layer MLP's to_dense."""
    softmax = mj.rule("softmax")
    args = softmax.example(key(2), jnp.float32, 512)
    sizes = [None, 128, 32, 8]
    temps = [_temp(partial(softmax.jacrev, chunk_size=k), *args) for k in sizes]
    assert temps == sorted(temps, reverse=True) and len(set(temps)) == len(temps), temps
    assert temps[-1] * 16 < temps[0], temps
    mlp = mj.rule("mlp3_input")
    J = jax.jit(mlp.structured)(*mlp.example(key(2), jnp.float32, 512))
    temps = [_temp(lambda J, k=k: J.to_dense(chunk_size=k), J) for k in sizes]
    assert temps[1:] == sorted(temps[1:], reverse=True) and temps[-1] * 8 < temps[0], temps


# ------------------------------------------------------------------------ measuring tools


def test_collectives_reads_each_operation_and_its_bytes():
    hlo = """
  %all-reduce = f32[8,8]{1,0} all-reduce(f32[8,8]{1,0} %dot), channel_id=1, to_apply=%add
  %ag = bf16[16,4]{1,0} all-gather(bf16[2,4]{1,0} %p), dimensions={0}
  %t = (f32[3]{0}, f64[2]{0}) all-reduce(f32[3]{0} %a, f64[2]{0} %b), to_apply=%add
  %s = f32[4]{0} all-reduce-start(f32[4]{0} %c), to_apply=%add
  %d = f32[4]{0} all-reduce-done(f32[4]{0} %s)
  %plain = f32[8,8]{1,0} add(f32[8,8]{1,0} %x, f32[8,8]{1,0} %y)
"""
    assert collectives(hlo) == [
        Collective("all-reduce", 256),
        Collective("all-gather", 128),
        Collective("all-reduce", 28),
        Collective("all-reduce", 16),
    ]


def test_one_device_programs_move_nothing():
    w, X, y = gram_data(64, 4)
    assert footprint(gram_cases()["newton_step"], w, X, y).collectives == ()


def test_sharding_helpers_leave_unsharded_arrays_alone():
    x = jnp.ones((4, 3))
    assert replicated_like(x) is None
    assert batch_like(jnp.zeros(4), x) is not None
    np.testing.assert_array_equal(batch_like(jnp.arange(4.0), x), jnp.arange(4.0))
    jax.jit(lambda x: (replicated_like(x), batch_like(x[:, 0], x))[1])(x)


def test_a_program_measured_but_never_run_is_compiled_on_a_gpu_without_autotuning(
    monkeypatch,
):
    """bench-scale's dense baseline (64 GiB on a GPU) is compiled only, for its memory:
    XLA's GPU autotuner would run candidate kernels on buffers that large, and the compile
    failed out of memory. On a GPU such a program is compiled with autotuning off; a timed
    one keeps it, and the CPU is asked nothing new."""
    from jax.stages import Lowered

    import matcalc_jax.benchmark.scale as scale

    asked = []
    compile_as_given = Lowered.compile

    def recorded(self, compiler_options=None, **kwargs):
        asked.append(compiler_options)
        return compile_as_given(self, compiler_options, **kwargs)

    monkeypatch.setattr(Lowered, "compile", recorded)
    x = jnp.ones((4, 4))
    footprint(jnp.sin, x)
    footprint(jnp.sin, x, rounds=1)
    monkeypatch.setattr(scale.jax, "default_backend", lambda: "gpu")
    found = footprint(jnp.cos, x)
    footprint(jnp.cos, x, rounds=1)
    assert asked == [None, None, {"xla_gpu_autotune_level": 0}, None]
    assert found.output_bytes == x.nbytes
