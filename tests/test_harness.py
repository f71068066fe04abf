"""The harness itself: its error measure, its finite differences, its report, and that it
catches a wrong closed form (a check that cannot fail would be worthless)."""

import dataclasses
import json
import math
import os
import re
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj
from matcalc_jax.cli.watchdog import Watchdog
from matcalc_jax.verification import harness
from matcalc_jax.verification.harness import (
    REPORT_SCHEMA,
    Check,
    Report,
    _case_program,
    _product_scales,
    central_differences,
    check_rule,
    draw_case,
    finite_difference_jacobian,
    relative_error,
    verify,
)
from matcalc_jax.verification.tolerance import TOLERANCES, tolerance

from .helpers import (
    SUITE_XLA_FLAG_NAMES,
    SUITE_XLA_FLAGS,
    key,
    swap_in_wrong_linear,
    under_suite_xla_flags,
)


def test_relative_error_is_normwise():
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert relative_error(np.array([1.0, 0.0]), np.array([1.0, 1e-9])) == pytest.approx(
        1e-9, rel=1e-9, abs=0
    )
    assert relative_error(np.zeros(2), np.zeros(2)) == 0.0
    assert relative_error(np.array([1e-3]), np.zeros(1)) == pytest.approx(1e-3, rel=1e-9, abs=0)


def test_relative_error_treats_shape_and_nan_mismatches_as_infinite():
    assert relative_error(np.zeros((2, 3)), np.zeros((3, 2))) == np.inf
    assert relative_error(np.array([np.nan, 1.0]), np.array([0.0, 1.0])) == np.inf
    assert relative_error(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0
    assert relative_error(np.array([np.inf, 1.0]), np.array([np.inf, 1.0])) == 0.0
    assert relative_error(np.array([np.inf]), np.array([-np.inf])) == np.inf


def test_finite_differences_recover_a_known_jacobian():
    A = jnp.array([[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]], jnp.float64)
    x = jnp.array([0.3, -0.2, 0.1], jnp.float64)
    fd = finite_difference_jacobian(lambda A, x: jnp.sin(A @ x), (A, x), wrt=1)
    exact = jnp.cos(A @ x)[:, None] * A
    assert relative_error(fd, exact) < 1e-9


def test_finite_differences_of_a_matrix_argument_have_numerator_shape():
    X = jnp.arange(6.0, dtype=jnp.float64).reshape(2, 3) / 6
    fd = finite_difference_jacobian(lambda X: jnp.sum(X**3), (X,), wrt=0)
    assert fd.shape == (2, 3)
    assert relative_error(fd, 3 * X**2) < 1e-9


def test_the_harness_catches_a_transposed_closed_form():
    linear = mj.rule("linear")
    wrong = dataclasses.replace(
        linear, closed_form=lambda A, x, layout="numerator": linear.closed_form(A, x).T
    )
    checks = check_rule(wrong, "float64", 4, key(0))
    failed = {c.reference for c in checks if not c.passed}
    assert {"jacfwd", "jacrev", "finite_difference"} <= failed
    assert any("shape" in c.detail for c in checks)


def test_the_harness_catches_a_term_dropped_from_a_product_rule():
    rule = mj.rule("product_inner")

    def half_rule(x, W, V, layout="numerator"):
        return jnp.tanh(V @ x) @ mj.linear_jacobian(W, x)  # forgets (dz/dx) y

    checks = check_rule(dataclasses.replace(rule, closed_form=half_rule), "float32", 4, key(1))
    assert not any(c.passed for c in checks if c.reference in ("jacfwd", "jacrev"))


def test_the_harness_catches_a_one_ulp_scale_error_in_float64_only_if_above_tolerance():
    rule = mj.rule("exp")
    scaled = dataclasses.replace(
        rule, closed_form=lambda x, layout="numerator": rule.closed_form(x) * (1 + 1e-9)
    )
    checks = check_rule(scaled, "float64", 4, key(2))
    assert not next(c for c in checks if c.reference == "jacfwd").passed  # 1e-9 > 1e-12


def test_verify_reports_every_rule_and_converts_to_json(tmp_path):
    report = verify(["linear", "softmax"], dtypes=["float32", "float64"], sizes=[2, 3])
    assert report.passed
    assert report.rule_ids == ("linear", "softmax")
    assert report.environment["matmul_precision"] == "highest"
    assert report.environment["platform"] == jax.devices()[0].platform
    path = tmp_path / "report.json"
    text = report.to_json(path)
    data = json.loads(path.read_text())
    assert data == json.loads(text)
    assert data["schema"] == REPORT_SCHEMA
    assert data["passed"] is True
    assert set(data["rules"]) == {"linear", "softmax"}
    summary = data["rules"]["softmax"]["max_error"]
    assert set(summary["float64"]) == {
        "jacfwd",
        "jacrev",
        "eager",
        "denominator",
        "finite_difference",
        "structured",
        "mv",
        "vm",
        "adjoint",
        "transform",
        "transform_storage",
    }
    assert "finite_difference" not in summary["float32"]
    assert len(data["checks"]) == len(report.checks)


def test_verify_refuses_an_unknown_dtype_or_rule_before_any_work():
    with pytest.raises(ValueError, match="float8"):
        verify(["linear"], dtypes=["float8"])
    with pytest.raises(KeyError, match="unknown rule id"):
        verify(["nope"])


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"dtypes": []}, ValueError, "dtypes is empty"),
        ({"dtypes": ["complex64"]}, ValueError, "dtype 'complex64' is not one it checks"),
        ({"dtypes": [None]}, ValueError, "dtype None is not one it checks"),
        ({"sizes": ["2"]}, ValueError, "sizes=['2']; expected positive integers"),
        ({"sizes": [None]}, ValueError, "sizes=[None]"),
        ({"sizes": [10**30]}, ValueError, f"sizes=[{10**30}]; expected positive integers up to"),
        ({"sizes": [1e300]}, ValueError, "sizes=[1e+300]; expected positive integers up to"),
        ({"workers": 0}, ValueError, "workers=0; expected a positive integer"),
        ({"workers": 2.5}, ValueError, "workers=2.5"),
        ({"max_bytes": float("nan")}, ValueError, "max_bytes=nan; expected a positive number"),
        ({"max_bytes": None}, ValueError, "max_bytes=None"),
        ({"progress": 5}, TypeError, "progress=5; expected a function"),
        ({"programs": 5}, TypeError, "programs=5"),
        ({"programs": ""}, ValueError, "programs is an empty path"),
    ],
)
def test_verify_names_the_argument_it_cannot_take(arguments, error, message):
    """Before any work, in one line naming verify and the argument, not a NumPy or
    ThreadPoolExecutor error from deep inside (and a complex dtype is not read as its
    parts' real dtype)."""
    with pytest.raises(error, match=re.escape(f"verify: {message}")):
        verify(["linear"], **{"dtypes": ["float32"], "sizes": [2], **arguments})


def test_verify_takes_one_dtype_or_size_alone_and_counts_each_once(tmp_path):
    report = verify(["linear"], dtypes="float32", sizes=2)
    assert {(c.dtype, c.size) for c in report.checks} == {("float32", 2)}
    twice = verify(["linear"], dtypes=["float32", np.float32], sizes=[2])
    assert len(twice.checks) == len(report.checks)
    a_file = tmp_path / "f"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match="cannot be a directory of compiled programs"):
        verify(["linear"], dtypes="float32", sizes=2, programs=a_file)
    with pytest.raises(TypeError, match="rule_ids=b'linear'"):
        verify(b"linear")


def test_the_largest_error_of_a_rule_is_nan_when_one_check_is_nan():
    """max() passes over a NaN that follows a number: the summary would read 0 while the
    verdict says FAIL."""
    checks = tuple(
        Check("softmax", "float32", size, "jacfwd", error, 1e-6, error == 0.0)
        for size, error in ((2, 0.0), (3, float("nan")))
    )
    assert math.isnan(Report(checks, {}).max_error("softmax", "float32", "jacfwd"))
    assert Report(checks[:1], {}).max_error("softmax", "float32", "jacfwd") == 0.0


def test_verify_restores_the_x64_flag():
    before = jax.config.jax_enable_x64
    verify(["identity"], dtypes=["float64"], sizes=[2])
    assert jax.config.jax_enable_x64 == before


def test_tolerance_table_has_one_bound_per_dtype():
    assert tolerance(jnp.float32) == TOLERANCES["float32"] == tolerance("float32")
    assert tolerance(np.dtype("float64")) == TOLERANCES["float64"]
    assert TOLERANCES["float64"] < TOLERANCES["float32"] < TOLERANCES["float16"]
    with pytest.raises(KeyError, match="int32"):
        tolerance(jnp.int32)


def test_verify_in_half_precision_runs_on_the_elementwise_rules():
    report = verify(["exp", "logistic_vector"], dtypes=["bfloat16"], sizes=[4])
    assert report.passed, report.failures()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="jaxlib's CPU LAPACK kernels")
def test_finite_differences_factorize_every_perturbed_matrix_in_one_batched_call():
    # Two batched LAPACK calls that XLA may run at once deadlock jaxlib 0.10 on a 2-thread
    # pool (each blocks a pool thread waiting for work queued behind the other): x + h e_k
    # and x - h e_k must go through the map in one vmapped call, so one batched LU.
    inverse = mj.rule("inverse")
    X = inverse.example(key(0), jnp.float64, 4)[0]
    compiled = jax.jit(central_differences(inverse.fn, 0)).lower([X]).compile().as_text()
    calls = re.findall(r'custom_call_target="(lapack_\w+)"', compiled)
    assert calls.count("lapack_dgetrf_ffi") == 1  # two vmapped calls of inv compile to two


def test_products_are_measured_against_the_size_of_their_terms():
    # J v = 1 - (1 - 1e-6) cancels to 1e-6; one rounding error of 1e-7 in a term is
    # 10% of the result but 1e-7 of |J| |v|, the scale the product check uses
    J, v, u = np.array([[1.0, 1.0]]), np.array([1.0, -(1 - 1e-6)]), np.array([2.0])
    scales = _product_scales(J, v, u, in_ndim=1)
    assert scales == {"mv": pytest.approx(2 - 1e-6), "vm": 2.0, "adjoint": pytest.approx(4 - 2e-6)}
    exact = J @ v
    assert relative_error(exact + 1e-7, exact) == pytest.approx(0.1)
    assert relative_error(exact + 1e-7, exact, scales["mv"]) == pytest.approx(5e-8, rel=1e-6)


def test_a_product_that_cancels_no_longer_fails_its_float32_check():
    # chain_matrix_vector at size 1, the draw of the default run: J v cancels to 1e-3 of its
    # terms, and the normwise error against |J v| was 5e-5 > 1e-5
    r = mj.rule("chain_matrix_vector")
    k = jax.random.fold_in(jax.random.key(0), 5 * 1000 + 1)
    checks = check_rule(r, "float32", 1, k, eager=False)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_rules_that_need_lapack_run_in_half_precision_against_float64(dtype):
    report = verify(["inverse", "det", "logdet", "solve", "solve_rhs"], dtypes=[dtype], sizes=[3])
    assert report.passed, report.failures()
    assert {c.dtype for c in report.checks} == {dtype}
    X = jnp.eye(3, dtype=dtype) * 2
    J = mj.inverse_jacobian(X)
    assert J.dtype == jnp.dtype(dtype)
    expected = mj.inverse_jacobian(X.astype(jnp.float64))
    assert relative_error(J, expected) == 0.0  # -1/4 and 0 are exact in every dtype


def test_the_harness_catches_a_ten_percent_error_in_bfloat16():
    rule = mj.rule("exp")
    wrong = dataclasses.replace(
        rule, closed_form=lambda x, layout="numerator": rule.closed_form(x, layout=layout) * 1.1
    )
    checks = check_rule(wrong, "bfloat16", 4, key(3))
    assert not next(c for c in checks if c.reference == "jacfwd").passed


def test_verify_sends_progress_before_each_step_and_after_each_rule():
    events = []
    verify(["identity", "exp"], dtypes=["float32"], sizes=[2, 3], progress=events.append)
    rules = [e for e in events if e.kind == "rule"]
    assert [(e.rule, len(e.checks), e.cases_done) for e in rules] == [
        ("identity", 17, 2),
        ("exp", 17, 4),
    ]
    stages = [e for e in events if e.kind == "stage"]
    assert {e.stage for e in stages} >= {"compiling, drawing, eager", "closed forms and autodiff"}
    assert all(e.cases_total == 4 and e.rule_count == 2 for e in events)


def test_the_watchdog_calls_back_once_when_no_beat_comes():
    hangs = []
    with Watchdog(0.2, lambda label, waited: hangs.append((label, waited)), poll_s=0.05) as dog:
        dog.beat("step one")
        time.sleep(0.1)
        dog.beat("step two")
        time.sleep(0.6)
    assert len(hangs) == 1 and hangs[0][0] == "step two" and hangs[0][1] >= 0.2
    quiet = []
    with Watchdog(5, lambda *a: quiet.append(a)) as dog:
        dog.beat("fast")
    assert quiet == []
    with pytest.raises(ValueError, match="timeout_s"):
        Watchdog(0, lambda *a: None)


@pytest.mark.parametrize("r", mj.rules(), ids=[r.id for r in mj.rules()])
def test_half_precision_closed_forms_are_computed_wide_and_rounded_once(r):
    # bfloat16 has 8 bits: a closed form whose every operation rounds to bfloat16 drifts by
    # several units in the last place; computed in float32 and rounded once, it is within
    # one unit (2^-8, normwise) of the float64 closed form on the same arguments
    args = r.example(key(7), jnp.bfloat16, 4)
    wide = tuple(jnp.asarray(a, jnp.float64) for a in args)
    half, exact = jax.jit(lambda a, w: (r.jacobian(*a), r.jacobian(*w)))(args, wide)
    assert half.dtype == jnp.bfloat16
    assert relative_error(half, exact) <= 2.0**-8


def test_a_case_program_is_traced_once_and_reused_for_new_draws(monkeypatch):
    """Each (rule, dtype, size) is traced once, however many draws are checked."""
    r = mj.rule("softmax")
    real = harness.case_function
    monkeypatch.setattr(
        harness, "case_function", lambda *case: chex.assert_max_traces(real(*case), n=2)
    )
    chex.clear_trace_counter()
    _case_program.cache_clear()
    try:
        for size in (2, 3):
            for seed in (1, 2):  # new values, same shapes and dtypes: no new trace
                check_rule(r, "float32", size, key(seed))
        with pytest.raises(AssertionError, match="traced > 2 times"):
            check_rule(r, "float32", 4, key(3))  # a third case is a third trace
    finally:
        _case_program.cache_clear()
        chex.clear_trace_counter()


def test_a_case_refuses_an_example_drawn_in_another_dtype():
    r = mj.rule("exp")
    wrong = dataclasses.replace(
        r, make_example=lambda k, dtype, size: r.make_example(k, "float64", size)
    )
    with pytest.raises(AssertionError, match="float64"):
        draw_case(wrong, "float32", 3, key(0))


_THREADS = """
import threading, jax, jax.numpy as jnp
import matcalc_jax as mj
results, errors, seen = [], [], set()
stop = threading.Event()
def run():
    try:
        results.append(mj.verify(["linear", "softmax"], sizes=[2]).passed)
    except Exception as error:
        errors.append(repr(error))
def watch():
    while not stop.is_set():
        seen.add(jnp.zeros(1).dtype.name)
threads = [threading.Thread(target=run) for _ in range(2)]
watcher = threading.Thread(target=watch)
watcher.start()
for t in threads: t.start()
for t in threads: t.join()
stop.set(); watcher.join()
print(results, errors, sorted(seen), bool(jax.config.jax_enable_x64))
"""


def test_verify_in_two_threads_leaves_other_threads_in_their_mode():
    """64-bit mode is thread-local: two verifications in two threads both pass, and an
    unrelated thread (64-bit mode off, as in a fresh process) never sees float64."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _THREADS], capture_output=True, text=True, timeout=600, check=True
    )
    assert done.stdout.strip() == "[True, True] [] ['float32'] False", done.stderr[-2000:]


def test_a_warm_verify_calls_no_closed_form_and_gives_the_same_report(tmp_path, monkeypatch):
    """With a cache of programs, a second run loads the programs, the inputs and what the
    closed form gave op by op (the eager-vs-jit check's side): it neither traces nor runs a
    rule's Jacobian, and its report is the first run's, the eager check included."""
    from matcalc_jax.catalogue.record import Rule

    ids, dtypes = ["linear", "softmax"], ["float32", "float64"]
    cold = verify(ids, dtypes=dtypes, sizes=[3], programs=tmp_path)
    assert {c.reference for c in cold.checks} >= {"eager"}

    def not_again(self, *args, **kwargs):
        raise AssertionError(f"{self.id}: the closed form ran on a warm run")

    monkeypatch.setattr(Rule, "jacobian", not_again)
    warm = verify(ids, dtypes=dtypes, sizes=[3], programs=tmp_path)
    assert [dataclasses.astuple(c) for c in warm.checks] == [
        dataclasses.astuple(c) for c in cold.checks
    ]


def test_verify_in_two_processes_gives_the_same_report(tmp_path):
    """The rules checked in two worker processes: the same checks, in the same order,
    with the same errors (the same inputs, programs and options), and progress in order."""
    ids = ["linear", "softmax", "logdet"]
    one = verify(ids, dtypes=["float32", "float64"], sizes=[2, 3])
    heard = []
    two = verify(
        ids,
        dtypes=["float32", "float64"],
        sizes=[2, 3],
        processes=2,
        programs=tmp_path,
        progress=lambda event: heard.append((event.kind, event.rule)),
    )
    assert two.passed and len(two.checks) == len(one.checks)
    assert [dataclasses.astuple(c) for c in two.checks] == [
        dataclasses.astuple(c) for c in one.checks
    ]
    assert [rule for kind, rule in heard if kind == "rule"] == ids
    with pytest.raises(ValueError, match="processes=0"):
        verify(ids, processes=0)


def test_a_rule_changed_in_this_process_is_checked_as_this_process_holds_it(monkeypatch):
    """Worker processes import the catalogue from the files: a wrong closed form swapped
    in here passed every check there (the report said PASS). A rule whose record differs
    from the worker's is checked in this process: the same failures as ``processes=1``."""
    swap_in_wrong_linear(monkeypatch)
    one = verify(["linear", "exp"], dtypes="float32", sizes=2)
    two = verify(["linear", "exp"], dtypes="float32", sizes=2, processes=2)
    assert not one.passed and one.rule_passed("exp")
    assert [dataclasses.astuple(c) for c in two.checks] == [
        dataclasses.astuple(c) for c in one.checks
    ]


def test_compiler_options_keep_only_those_this_jaxlib_accepts(monkeypatch):
    assert harness.compiler_options() == harness.FAST_COMPILE  # this jaxlib knows both
    monkeypatch.setattr(harness, "FAST_COMPILE", {**harness.FAST_COMPILE, "xla_no_such_flag": 1})
    harness._accepted_options.cache_clear()
    try:
        assert harness.compiler_options() == {
            k: v for k, v in harness.FAST_COMPILE.items() if k != "xla_no_such_flag"
        }
    finally:
        harness._accepted_options.cache_clear()


def test_the_suite_compiles_as_verify_unless_xla_defaults_are_asked_for():
    # tests/conftest.py sets the flags in the process that starts the run; every worker
    # process inherits them (this test runs in one of them).
    asked_for_defaults = os.environ.get("MATCALC_JAX_TEST_XLA_DEFAULTS") == "1"
    flags = os.environ.get("XLA_FLAGS", "")
    callers = [f for f in flags.split() if f.split("=")[0] in SUITE_XLA_FLAG_NAMES]
    if set(callers) - set(SUITE_XLA_FLAGS):
        pytest.skip(f"the caller's XLA_FLAGS sets {callers}")
    assert under_suite_xla_flags() is not asked_for_defaults, flags


def test_worker_processes_start_with_the_xla_flags_asked_for(monkeypatch):
    """A flag reaches a worker's backend (it decides the device count there); a flag the
    caller's XLA_FLAGS sets already is left as the caller set it."""
    from matcalc_jax.verification.processes import ordered_map

    def in_a_worker(xla_flags):  # module-level functions: they pickle by name
        count = list(ordered_map(jax.device_count, [()], 1, xla_flags))
        flags = list(ordered_map(os.getenv, [("XLA_FLAGS",)], 1, xla_flags))
        return count + flags

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    flag = "--xla_force_host_platform_device_count=3"
    assert in_a_worker((flag,)) == [3, flag]
    assert in_a_worker(()) == [1, None]
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert in_a_worker((flag,)) == [2, "--xla_force_host_platform_device_count=2"]
    assert harness.worker_xla_flags() == (
        "--xla_cpu_use_fusion_emitters=false",
        "--xla_cpu_parallel_codegen_split_count=1",
    )


def test_worker_processes_take_device_memory_as_they_need_it(monkeypatch):
    """Workers sharing one GPU: none takes JAX's default three quarters of its memory at
    start (the second would fail), unless the caller's environment says otherwise."""
    from matcalc_jax.verification.processes import ordered_map

    name = "XLA_PYTHON_CLIENT_PREALLOCATE"
    monkeypatch.delenv(name, raising=False)
    assert list(ordered_map(os.getenv, [(name,), (name,)], 2)) == ["false", "false"]
    monkeypatch.setenv(name, "true")
    assert list(ordered_map(os.getenv, [(name,)], 1)) == ["true"]


def test_a_case_draws_the_same_numbers_whatever_the_threads_64_bit_mode():
    """A float32 case's inputs do not depend on whether the thread drawing them has 64-bit
    mode on (the caller's thread in one process, a worker's in another): a seed reproduces
    a run's inputs in any mode (a scale of sqrt(n) was once rounded in float64 or float32)."""
    for index, r in enumerate(mj.rules() + mj.programs()):
        case_key = harness.case_key(0, index, 3)
        with jax.enable_x64(False):
            off = draw_case(r, jnp.float32, 3, case_key)
        with jax.enable_x64(True):
            on = draw_case(r, jnp.float32, 3, case_key)
        for a, b in zip(jax.tree_util.tree_leaves(off), jax.tree_util.tree_leaves(on), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=r.id)
