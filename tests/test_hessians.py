"""Hessians: every closed-form Hessian equals jax.hessian, its structured form's mv equals
forward-over-reverse autodiff, the factored operator behaves as the matrix it stands for,
and the harness catches a wrong Hessian."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj
from matcalc_jax.verification import references
from matcalc_jax.verification.harness import check_rule, relative_error

from .helpers import assert_jacobians_close, key

HESSIAN_RULES = [r for r in mj.rules() if r.has_hessian]
IDS = [r.id for r in HESSIAN_RULES]


@pytest.mark.parametrize("r", HESSIAN_RULES, ids=IDS)
def test_closed_form_hessian_matches_jax_hessian_to_1e_10_in_float64(r):
    args = r.example(key(0), jnp.float64, size=6)
    closed = jax.jit(r.hessian)(*args)
    x = jnp.asarray(args[r.wrt])
    assert closed.shape == x.shape + x.shape
    assert relative_error(closed, references.jax_hessian(r, *args)) < 1e-10
    n = x.size
    np.testing.assert_allclose(closed.reshape(n, n), closed.reshape(n, n).T, atol=1e-12)


@pytest.mark.parametrize("r", HESSIAN_RULES, ids=IDS)
def test_structured_hessian_products_match_forward_over_reverse_under_vmap(r):
    args = r.example(key(1), jnp.float64, size=5)
    x = jnp.asarray(args[r.wrt])
    directions = jax.random.normal(key(2), (4, *x.shape), jnp.float64)
    op = jax.jit(r.hessian_operator)(*args)
    assert isinstance(op, mj.JacobianOperator)
    assert op.in_shape == op.out_shape == x.shape
    hvp = jax.jit(jax.vmap(op.mv))(directions)
    autodiff = jax.vmap(lambda v: references.jax_hvp(r, *args, tangent=v))(directions)
    assert_jacobians_close(hvp, autodiff)
    assert_jacobians_close(jax.vmap(op.vm)(directions), autodiff)  # symmetric
    assert_jacobians_close(op.to_dense(), r.hessian(*args))


@pytest.mark.parametrize("r", HESSIAN_RULES, ids=IDS)
def test_float32_hessian_stays_float32(r):
    args = r.example(key(3), jnp.float32, size=4)
    assert r.hessian(*args).dtype == jnp.float32
    assert r.hessian_operator(*args).mv(jnp.ones_like(args[r.wrt])).dtype == jnp.float32


def test_weighted_gram_is_x_t_diag_w_x_without_forming_it():
    kx, kw, kv = jax.random.split(key(4), 3)
    X = jax.random.normal(kx, (7, 4), jnp.float64)
    w = jax.random.uniform(kw, (7,), jnp.float64)
    v = jax.random.normal(kv, (4,), jnp.float64)
    op = mj.WeightedGram(X, w)
    dense = X.T @ jnp.diag(w) @ X
    assert op.shape == (4, 4) and op.in_shape == op.out_shape == (4,)
    assert_jacobians_close(op.to_dense(), dense)
    assert_jacobians_close(op.mv(v), dense @ v)
    assert_jacobians_close(op.vm(v), v @ dense)
    assert_jacobians_close(op.diagonal(), jnp.diagonal(dense))
    assert_jacobians_close(op.transpose().to_dense(), dense)
    assert len(jax.tree_util.tree_leaves(op)) == 2
    rebuilt = jax.jit(lambda op: op)(op)
    assert isinstance(rebuilt, mj.WeightedGram)
    with pytest.raises(ValueError, match=r"WeightedGram.mv.*expected \(4,\)"):
        op.mv(jnp.ones(5))


def test_logistic_hessian_keeps_its_digits_at_saturated_logits():
    # logits of +-40: s(1 - s) = 4.2e-18, which 1 - s cannot represent in float64.
    X = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    w = jnp.array([40.0, -40.0])
    y = jnp.array([1.0, 0.0])
    hessian = mj.logistic_regression_hessian(w, X, y)
    exact = np.exp(-40.0) / (1 + np.exp(-40.0)) ** 2
    np.testing.assert_allclose(np.diagonal(hessian), [exact, exact], rtol=1e-14)
    assert float(mj.rule("logistic_regression").fn(w, X, y)) > 0  # finite loss
    assert bool(jnp.all(jnp.isfinite(mj.logistic_regression_gradient(w * 1e3, X, y))))


def test_softmax_cross_entropy_gradient_is_softmax_minus_one_hot():
    z = jnp.array([2.0, -1.0, 0.5, 300.0])  # a large logit: max-shifted, no overflow
    t = jnp.array([0.0, 1.0, 0.0, 0.0])
    gradient = mj.softmax_cross_entropy_gradient(z, t)
    np.testing.assert_allclose(gradient, jax.nn.softmax(z) - t, atol=1e-15)
    assert bool(jnp.isfinite(mj.softmax_cross_entropy(z, t)))
    hessian = mj.softmax_cross_entropy_hessian(z, t, structured=True)
    assert isinstance(hessian, mj.DiagonalPlusLowRank)


def test_least_squares_hessian_is_twice_the_gram_matrix_and_does_not_depend_on_x():
    ka, kb = jax.random.split(key(5))
    A = jax.random.normal(ka, (6, 3), jnp.float64)
    b = jax.random.normal(kb, (6,), jnp.float64)
    for x in (jnp.zeros(3), jnp.arange(3.0)):
        assert_jacobians_close(mj.least_squares_hessian(x, A, b), 2 * A.T @ A)
    op = mj.least_squares_hessian(jnp.zeros(3), A, b, structured=True)
    assert isinstance(op, mj.WeightedGram)


def test_quadratic_form_hessian_of_a_non_symmetric_matrix_is_a_plus_a_transpose():
    A = jnp.array([[1.0, 2.0], [0.0, 3.0]])
    np.testing.assert_array_equal(mj.quadratic_form_hessian(jnp.ones(2), A), A + A.T)
    op = mj.quadratic_form_hessian(jnp.ones(2), A, structured=True)
    np.testing.assert_array_equal(op.mv(jnp.array([1.0, 0.0])), (A + A.T)[:, 0])


def test_trace_quadratic_and_frobenius_hessians_are_structured_kronecker_and_scaled_identity():
    X = jnp.ones((3, 2))
    A = jnp.arange(9.0).reshape(3, 3)
    assert isinstance(mj.trace_quadratic_hessian(X, A, structured=True), mj.Kronecker)
    op = mj.frobenius_hessian(X, structured=True)
    assert isinstance(op, mj.Scaled) and isinstance(op.operator, mj.Identity)
    np.testing.assert_array_equal(op.mv(X), 2 * X)


def test_the_harness_catches_a_wrong_hessian():
    rule = mj.rule("logistic_regression")
    wrong = dataclasses.replace(
        rule, hessian_form=lambda w, X, y: mj.logistic_regression_hessian(w, X, y) * 1.01
    )
    checks = check_rule(wrong, "float64", 4, key(6))
    failed = {c.reference for c in checks if not c.passed}
    # matcalc_jax.hessian of the program is a fourth witness against the wrong closed form
    assert failed == {
        "hessian",
        "hessian_structured",
        "hessian_finite_difference",
        "transform_hessian",
    }


def test_the_harness_catches_a_wrong_derived_hessian(monkeypatch):
    """The transform's Hessian broken once (the X^T D X rule with its weights off by 1%):
    ``transform_hessian`` fails, and nothing else."""
    from matcalc_jax.operators import contraction

    right = contraction.weighted_gram

    def wrong(outer, middle, inner):
        gram = right(outer, middle, inner)
        return None if gram is None else gram.scaled(1.01)

    monkeypatch.setattr(contraction, "weighted_gram", wrong)
    checks = check_rule(mj.rule("logistic_regression"), "float64", 4, key(6), eager=False)
    assert {c.reference for c in checks if not c.passed} == {"transform_hessian"}


def test_a_rule_needs_both_hessian_forms_or_neither():
    rule = mj.rule("quadratic_form")
    with pytest.raises(ValueError, match="both Hessian forms"):  # no structured keyword
        dataclasses.replace(rule, hessian_form=lambda x, A: A + A.T, structured_hessian_form=None)
