"""The contract: every closed form equals jax.jacfwd / jax.jacrev, eager and under jit, in
both layouts, and central finite differences in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj
from matcalc_jax import catalogue
from matcalc_jax.core.layout import swap_out_in
from matcalc_jax.verification.harness import check_rule, relative_error

from .helpers import FLOAT_DTYPES, assert_jacobians_close, key, lowerings_during

RULES = mj.rules()
IDS = [r.id for r in RULES]
#: The product and chain rules: the seed's denominator-layout products, computed in its order.
COMBINATORS = {r.id for family in (catalogue.products, catalogue.chains) for r in family.RULES}


@pytest.mark.parametrize("r", RULES, ids=IDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("size", [1, 5])
def test_harness_passes_every_check(r, dtype, size):
    eager = size == 5  # as in verify: op-by-op dispatch at one size (it compiles each op)
    checks = check_rule(r, dtype, size, key(size), eager=eager)
    expected = {"jacfwd", "jacrev", "denominator", "structured", "mv", "vm", "adjoint"}
    expected |= {"transform", "transform_storage"}  # matcalc_jax.jacobian rediscovers it
    if eager:
        expected.add("eager")
    if dtype == "float64":
        expected.add("finite_difference")
    if r.has_hessian:
        expected |= {"hessian", "hessian_structured", "hvp"}
        expected |= {"transform_hessian", "transform_hessian_storage"}  # matcalc_jax.hessian
        if dtype == "float64":
            expected.add("hessian_finite_difference")
    assert {c.reference for c in checks} == expected
    failed = [c for c in checks if not c.passed]
    assert not failed, failed


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_float64_closed_form_matches_jacfwd_to_1e_10(r):
    args = r.example(key(3), jnp.float64, size=6)
    closed, autodiff = jax.jit(lambda *a: (r.jacobian(*a), jax.jacfwd(r.fn, argnums=r.wrt)(*a)))(
        *args
    )
    assert closed.shape == autodiff.shape
    assert closed.dtype == jnp.float64
    assert relative_error(closed, autodiff) < 1e-10


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_denominator_layout_is_the_axis_swapped_numerator(r):
    args = r.example(key(4), jnp.float64, size=3)
    numerator = r.jacobian(*args)
    denominator = r.jacobian(*args, layout="denominator")
    out_ndim = numerator.ndim - jnp.ndim(args[r.wrt])
    swapped = swap_out_in(numerator, out_ndim)
    if r.id in COMBINATORS:  # the seed's products in the seed's order: equal to rounding
        assert_jacobians_close(denominator, swapped)
    else:  # nothing but an arrangement of the same numbers: bitwise
        np.testing.assert_array_equal(denominator, swapped)


@pytest.mark.parametrize("r", RULES, ids=IDS)
@pytest.mark.parametrize("layout", mj.LAYOUTS)
def test_autodiff_twins_take_the_same_layout(r, layout):
    args = r.example(key(5), jnp.float64, size=3)
    closed, forward, reverse = jax.jit(
        lambda *a: (
            r.jacobian(*a, layout=layout),
            r.jacfwd(*a, layout=layout),
            r.jacrev(*a, layout=layout),
        )
    )(*args)
    assert_jacobians_close(closed, forward)
    assert_jacobians_close(closed, reverse)


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_closed_form_preserves_float32(r):
    args = r.example(key(6), jnp.float32, size=3)
    for layout in mj.LAYOUTS:
        traced = jax.eval_shape(lambda *a, layout=layout: r.jacobian(*a, layout=layout), *args)
        assert traced.dtype == jnp.float32


def test_seed_linear_rule_holds_literally_in_denominator_layout():
    A = jnp.arange(6.0).reshape(2, 3)
    x = jnp.ones(3)
    np.testing.assert_array_equal(mj.linear_jacobian(A, x, layout="denominator"), A.T)
    np.testing.assert_array_equal(mj.linear_jacobian(A, x), jax.jacfwd(lambda x: A @ x)(x))
    y = jnp.ones(2)
    np.testing.assert_array_equal(mj.linear_transposed_jacobian(y, A, layout="denominator"), A)


def test_identity_matches_jacfwd_in_its_dtype():
    for dtype in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64):
        x = jnp.ones(4, dtype)
        eye = mj.identity_jacobian(x)
        assert eye.dtype == dtype
        np.testing.assert_array_equal(eye, jax.jacfwd(lambda v: v)(x))


def test_swapping_a_host_array_compiles_nothing():
    """The harness swaps the layouts of the arrays its programs returned, on the host: a
    transpose per shape compiled op by op took seconds of a cold verify."""
    host = np.arange(24.0).reshape(2, 3, 4)
    swapped = None

    def swap():
        nonlocal swapped
        swapped = swap_out_in(host, 1)

    lowered = lowerings_during(swap)
    assert isinstance(swapped, np.ndarray) and not lowered
    np.testing.assert_array_equal(swapped, np.transpose(host, (1, 2, 0)))
    np.testing.assert_array_equal(swap_out_in(jnp.asarray(host), 2), np.transpose(host, (2, 0, 1)))
