"""Edge points: the logistic tails, +-inf, NaN, large magnitudes, domain boundaries."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import matcalc_jax as mj

ALL_FLOATS = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def exact_logistic_prime(x: float) -> float:
    """sigma'(x) in Python floats, from exp(-|x|), no cancellation."""
    e = math.exp(-abs(x))
    return e / (1 + e) ** 2


def test_logistic_derivative_at_37_4_in_float64_is_the_true_tiny_value():
    """Regression: sigma(x)(1 - sigma(x)) cancels to exactly 0 at x = 37.4 in float64."""
    x = jnp.float64(37.4)
    naive = jax.nn.sigmoid(x) * (1 - jax.nn.sigmoid(x))
    assert float(naive) == 0.0  # the trap this rule avoids
    closed = float(mj.logistic_scalar_jacobian(x))
    assert closed > 0
    assert closed == pytest.approx(exact_logistic_prime(37.4), rel=1e-14, abs=0)
    assert closed == pytest.approx(5.7e-17, rel=0.05, abs=0)


@pytest.mark.parametrize("x", [-745.0, -100.0, -37.4, -1.0, 0.0, 1e-300, 2.5, 37.4, 100.0, 700.0])
def test_logistic_prime_matches_the_exact_value_in_float64(x):
    got = float(mj.logistic_prime(jnp.float64(x)))
    assert got == pytest.approx(exact_logistic_prime(x), rel=1e-14, abs=1e-320)


@pytest.mark.parametrize("dtype", ALL_FLOATS)
def test_logistic_prime_at_infinities_and_nan(dtype):
    x = jnp.array([-jnp.inf, jnp.inf, jnp.nan, 0.0], dtype)
    got = np.asarray(mj.logistic_prime(x), np.float64)
    np.testing.assert_array_equal(got[:2], [0.0, 0.0])
    assert np.isnan(got[2])
    assert got[3] == 0.25


@pytest.mark.parametrize("dtype", ALL_FLOATS)
def test_logistic_prime_is_finite_and_in_range_for_the_largest_finite_inputs(dtype):
    big = float(jnp.finfo(dtype).max)
    tiny = float(jnp.finfo(dtype).tiny)
    x = jnp.array([-big, -1e4, -88.0, -tiny, tiny, 88.0, 1e4, big], dtype)
    got = mj.logistic_prime(x)
    assert got.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(got)))
    assert bool(jnp.all((got >= 0) & (got <= 0.25)))


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_logistic_prime_never_nan_or_inf_for_finite_float32(x):
    got = mj.logistic_prime(jnp.float32(x))
    assert bool(jnp.isfinite(got)) and 0 <= float(got) <= 0.25


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_logistic_prime_is_accurate_for_any_finite_float64(x):
    got = float(mj.logistic_prime(jnp.float64(x)))
    assert got == pytest.approx(exact_logistic_prime(x), rel=1e-13, abs=1e-320)


def test_logistic_general_is_finite_in_the_tails():
    x = jnp.array([-1e30, -1e4, 0.0, 1e4, 1e30], jnp.float32)
    J = mj.logistic_general_jacobian(x, jnp.float32(2.0), jnp.float32(3.0), jnp.float32(0.5))
    assert bool(jnp.all(jnp.isfinite(J)))
    assert float(J[2, 2]) == pytest.approx(2 * 3 * exact_logistic_prime(3 * -0.5), rel=1e-6)


def test_elementwise_nan_stays_on_the_diagonal():
    """Structural zeros stay zero; jax.jacfwd spreads the NaN along the row instead."""
    x = jnp.array([0.5, jnp.nan, -0.25])
    closed = mj.logistic_jacobian(x)
    assert np.isnan(closed[1, 1])
    off_diagonal = ~np.eye(3, dtype=bool)
    np.testing.assert_array_equal(np.asarray(closed)[off_diagonal], 0.0)
    autodiff = jax.jacfwd(jax.nn.sigmoid)(x)
    assert np.isnan(autodiff[1, 0])  # documented difference


def test_softmax_with_a_masked_entry_has_a_zero_row_and_column():
    x = jnp.array([1.0, -jnp.inf, 0.5])
    J = mj.softmax_jacobian(x)
    np.testing.assert_array_equal(J[1], 0.0)
    np.testing.assert_array_equal(J[:, 1], 0.0)
    np.testing.assert_allclose(J, jax.jacfwd(jax.nn.softmax)(x), atol=1e-7)


def test_softmax_with_large_logits_is_finite_and_correct():
    x = jnp.array([1e4, 1e4 - 1.0, -1e4], jnp.float32)
    J = mj.softmax_jacobian(x)
    assert bool(jnp.all(jnp.isfinite(J)))
    np.testing.assert_allclose(J, jax.jacfwd(jax.nn.softmax)(x), atol=1e-6)
    np.testing.assert_allclose(J.sum(axis=0), 0.0, atol=1e-6)  # softmax sums to one


def test_softmax_of_all_minus_inf_is_nan_like_softmax():
    J = mj.softmax_jacobian(jnp.full(3, -jnp.inf))
    assert bool(jnp.all(jnp.isnan(jnp.diagonal(J))))


def test_power_with_zero_exponent_is_the_zero_matrix_even_at_zero():
    J = mj.power_jacobian(jnp.array([0.0, 2.0]), jnp.float32(0.0))
    np.testing.assert_array_equal(J, jnp.zeros((2, 2)))


def test_power_below_one_at_zero_is_inf_on_the_diagonal():
    J = mj.power_jacobian(jnp.array([0.0, 4.0]), jnp.float32(0.5))
    assert J[0, 0] == jnp.inf
    assert float(J[1, 1]) == pytest.approx(0.25)
    assert J[0, 1] == 0 and J[1, 0] == 0


def test_log_at_zero_is_inf_and_exp_overflows_like_exp():
    assert mj.log_jacobian(jnp.array([0.0, 1.0]))[0, 0] == jnp.inf
    assert mj.exp_jacobian(jnp.array([100.0], jnp.float32))[0, 0] == jnp.inf


def test_identity_and_linear_of_empty_vectors_are_empty():
    assert mj.identity_jacobian(jnp.zeros(0)).shape == (0, 0)
    assert mj.linear_jacobian(jnp.zeros((2, 0)), jnp.zeros(0)).shape == (2, 0)


def test_softmax_diagonal_keeps_its_digits_when_one_entry_dominates():
    """Regression: s_k - s_k^2 cancels for s_k near 1; the complement is summed instead."""
    x = jnp.array([-6.0, 4.0, -9.0], jnp.float64)
    e = np.exp(np.asarray(x, np.longdouble) - 4.0)
    s = e / e.sum()
    expected = float(s[1] * (s[0] + s[2]))  # s_k (1 - s_k) without cancellation
    assert float(mj.softmax_jacobian(x)[1, 1]) == pytest.approx(expected, rel=1e-14, abs=0)
