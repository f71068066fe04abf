"""matcalc_jax.nn against mpmath: every function's value, first and second derivative, in
both AD modes, at points spanning each dtype's range, within the stated ulp bounds.

The bounds hold for the code users' programs get: XLA's default code generation. Where the
suite compiles with its own flags (``SUITE_XLA_FLAGS``, tests/helpers.py), the bound tests
run in a child pytest under XLA's defaults, and here they are skipped."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from matcalc_jax.forms import activations
from matcalc_jax.verification import accuracy as _accuracy

from .helpers import SUITE_XLA_FLAGS, under_suite_xla_flags

pytest.importorskip("mpmath")

#: The ulp-bound tests: they measure the generated code, so they run under XLA's defaults.
BOUND_TESTS = "every_dtype"
under_defaults_only = pytest.mark.skipif(
    under_suite_xla_flags(),
    reason="run under XLA's default code generation by "
    "test_the_bounds_hold_under_xlas_default_code_generation",
)


@pytest.mark.skipif(not under_suite_xla_flags(), reason="this process has XLA's defaults")
def test_the_bounds_hold_under_xlas_default_code_generation():
    flags = [f for f in os.environ["XLA_FLAGS"].split() if f not in SUITE_XLA_FLAGS]
    environment = {
        **os.environ,
        "XLA_FLAGS": " ".join(flags),
        "MATCALC_JAX_TEST_XLA_DEFAULTS": "1",
        "PYTEST_ADDOPTS": "",
    }
    command = [sys.executable, "-m", "pytest", __file__, "-n", "0", "-q", "-k", BOUND_TESTS]
    command += ["-p", "no:cacheprovider"]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        command, cwd=root, env=environment, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    count = len(_accuracy.FUNCTIONS) + len(_accuracy.REDUCTIONS)
    assert re.search(rf"\b{count} passed\b", output) and "skipped" not in output, output


@under_defaults_only
@pytest.mark.parametrize("name", _accuracy.FUNCTIONS)
def test_elementwise_functions_are_within_their_ulp_bounds_in_every_dtype(name):
    for dtype in _accuracy.DTYPES:
        for order in _accuracy.ORDERS:
            m = _accuracy.measure(name, order, dtype)
            assert not m.failures, (name, order, dtype, m.failures[:3])
            bound = _accuracy.bound(name, order, dtype)
            assert m.max_ulps <= bound, (name, order, dtype, m.max_ulps, m.worst_x)
            assert m.near_root_ulps <= max(bound, 1.0), (name, order, dtype, m.near_root_ulps)


@under_defaults_only
@pytest.mark.parametrize("name", _accuracy.REDUCTIONS)
def test_reductions_are_within_their_bounds_in_every_dtype(name):
    for dtype in _accuracy.DTYPES:
        for order in _accuracy.ORDERS:
            m = _accuracy.measure_reduction(name, order, dtype, modes=1 if order == 2 else 2)
            assert not m.failures, (name, order, dtype, m.failures[:3])
            assert m.max_ulps <= _accuracy.reduction_bound(name, order, dtype), (
                name,
                order,
                dtype,
                m.max_ulps,
            )


def test_the_measure_catches_the_naive_derivatives_it_replaced():
    # jax.nn's sigmoid' and tanh' cancel in the tails: the oracle must see it.
    for name in ("sigmoid", "tanh"):
        assert _accuracy.measure(name, 1, "float64", "jax.nn").max_ulps > 1e6


def test_the_oracle_does_not_cancel_at_its_working_precision():
    """The mpmath formulas agree with themselves at twice the digits, at every float64
    point where the truth is within float64's range, to far below one float64 ulp. (Far
    outside it, e.g. gelu's tanh form at -1e308, exp(-1e924) is not resolved, and needs
    not be: the measurement only asks for 0 there.)"""
    table = _accuracy._oracle_table()
    xs = _accuracy.points("float64")[::7]
    for name, formulas in table.items():
        for order, f in enumerate(formulas):
            for x in xs:
                with mpmath.workdps(_accuracy.DIGITS):
                    low = f(mpmath.mpf(float(x)))
                with mpmath.workdps(2 * _accuracy.DIGITS):
                    high = f(mpmath.mpf(float(x)))
                if abs(high) > 1e-300:
                    assert abs(low - high) <= abs(high) * mpmath.mpf(10) ** -40, (name, order, x)


def test_the_points_span_each_dtype_to_its_largest_number():
    for dtype in _accuracy.DTYPES:
        xs = _accuracy.points(dtype)
        info = jnp.finfo(dtype)
        assert xs.max() == float(info.max) and xs.min() == -float(info.max)
        assert 0.0 in xs and float(info.tiny) in xs
        assert np.all(np.asarray(jnp.asarray(xs).astype(dtype).astype(jnp.float64)) == xs)


def test_a_wrong_derivative_fails_the_bound(monkeypatch):
    """Break sigma' by one part in 1e-10 and the measurement exceeds the float64 bound."""
    wrong = jax.custom_jvp(lambda x: activations._sigmoid_value(x))
    wrong.defjvp(lambda p, t: (wrong(p[0]), activations.logistic_prime(p[0]) * (1 + 1e-10) * t[0]))
    monkeypatch.setattr(activations, "sigmoid", wrong)
    _accuracy.evaluate.cache_clear()
    try:
        m = _accuracy.measure("sigmoid", 1, "float64")
    finally:
        _accuracy.evaluate.cache_clear()
    assert m.max_ulps > _accuracy.bound("sigmoid", 1, "float64")
