"""The harness itself: its error measure, its finite differences, its report, and that it
catches a wrong closed form (a check that cannot fail would be worthless)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj
from matcalc_jax._harness import (
    REPORT_SCHEMA,
    check_rule,
    finite_difference_jacobian,
    relative_error,
    verify,
)
from matcalc_jax._tolerance import TOLERANCES, tolerance

from .helpers import key


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
    }
    assert "finite_difference" not in summary["float32"]
    assert len(data["checks"]) == len(report.checks)


def test_verify_refuses_an_unknown_dtype_or_rule_before_any_work():
    with pytest.raises(KeyError, match="float8"):
        verify(["linear"], dtypes=["float8"])
    with pytest.raises(KeyError, match="unknown rule id"):
        verify(["nope"])


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
