"""Matrix-argument rules: the trace chain rule three ways against jax.jacrev's (s, t, p, q)
tensor, the vec/Kronecker identities, the linear layer, and the documented behaviour of the
inverse, determinant, log-determinant and solves at singular and near-singular inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj
from matcalc_jax.verification.harness import relative_error

from .helpers import assert_jacobians_close, key


def _affine_example(seed, p=3, q=4, s=5, t=2):
    ka, kx, kb, kg = jax.random.split(key(seed), 4)
    A = jax.random.normal(ka, (s, p), jnp.float64)
    X = jax.random.normal(kx, (p, q), jnp.float64)
    B = jax.random.normal(kb, (q, t), jnp.float64)
    return A, X, B, kg


# ------------------------------------------------------------ the trace chain rule


@pytest.mark.parametrize("layout", mj.LAYOUTS)
def test_trace_chain_rule_per_entry_vec_and_contracted_agree_with_jacrev(layout):
    A, X, B, _ = _affine_example(0)

    def z_of(Y):
        return jnp.sum(jnp.sin(Y) * Y)

    Y = A @ X @ B
    G = jax.grad(z_of)(Y)  # dz/dY, shape (s, t)
    tensor = jax.jacrev(lambda X: A @ X @ B)(X)  # (s, t, p, q), autodiff's own
    assert tensor.shape == (5, 2, 3, 4)
    expected = jax.grad(lambda X: z_of(A @ X @ B))(X)
    arranged = tensor if layout == "numerator" else jnp.transpose(tensor, (2, 3, 0, 1))

    per_entry = mj.trace_chain_per_entry(G, arranged, layout=layout)
    contracted = mj.chain_matrix_trace(G, arranged, layout=layout)
    closed_tensor = mj.affine_matrix_jacobian(A, X, B, layout=layout)
    row = mj.trace_chain_vec(G, mj.kronecker_vec_jacobian(A, B), X.shape)
    column = mj.trace_chain_vec(
        G, mj.kronecker_vec_jacobian(A, B, order="column"), X.shape, order="column"
    )
    for result in (per_entry, contracted, row, column, mj.affine_matrix_gradient(G, A, B)):
        assert_jacobians_close(result, expected)
    np.testing.assert_allclose(closed_tensor, arranged, rtol=1e-14, atol=1e-14)


def test_kronecker_vec_identities_hold_for_both_vec_orders():
    A, X, B, _ = _affine_example(1)
    Y = A @ X @ B
    row = mj.kronecker_vec_jacobian(A, B)
    np.testing.assert_allclose(row @ X.reshape(-1), Y.reshape(-1), rtol=1e-13)
    column = mj.kronecker_vec_jacobian(A, B, order="column")
    np.testing.assert_allclose(column @ X.T.reshape(-1), Y.T.reshape(-1), rtol=1e-13)
    # The row-major vec Jacobian is jacrev's tensor flattened.
    tensor = jax.jacrev(lambda X: A @ X @ B)(X)
    np.testing.assert_allclose(row, tensor.reshape(Y.size, X.size), rtol=1e-14)


def test_vec_order_is_checked():
    A, X, B, _ = _affine_example(2)
    with pytest.raises(ValueError, match=r"order='F'.*'row', 'column'"):
        mj.kronecker_vec_jacobian(A, B, order="F")
    with pytest.raises(ValueError, match=r"'dvecY_dvecX'.*expected"):
        mj.trace_chain_vec(jnp.ones((5, 2)), jnp.ones((10, 11)), X.shape)


def test_affine_structured_vm_is_the_gradient_a_t_g_b_t():
    A, X, B, kg = _affine_example(3)
    G = jax.random.normal(kg, (5, 2), jnp.float64)
    op = mj.rule("affine_matrix").structured(A, X, B)
    assert isinstance(op, mj.Kronecker)
    assert_jacobians_close(op.vm(G), A.T @ G @ B.T)


# ---------------------------------------------------------------- linear layer


def test_linear_layer_derivatives_by_weights_input_and_bias():
    kw, kx, kb, ku = jax.random.split(key(4), 4)
    W = jax.random.normal(kw, (3, 5), jnp.float64)
    x = jax.random.normal(kx, (5,), jnp.float64)
    b = jax.random.normal(kb, (3,), jnp.float64)
    u = jax.random.normal(ku, (3,), jnp.float64)  # dz/dy
    f = mj.rule("linear_layer").fn
    for argnum, closed in enumerate(
        (
            mj.linear_layer_weight_jacobian,
            mj.linear_layer_input_jacobian,
            mj.linear_layer_bias_jacobian,
        )
    ):
        np.testing.assert_array_equal(closed(W, x, b), jax.jacfwd(f, argnums=argnum)(W, x, b))
    weight_gradient = mj.rule("linear_layer").structured(W, x, b).vm(u)
    assert_jacobians_close(weight_gradient, jnp.outer(u, x))  # dz/dW = (dz/dy) x^T


# ------------------------------------------------------- singular and near-singular


def test_reciprocal_condition_of_the_identity_is_one_and_of_a_singular_matrix_zero():
    eye = jnp.eye(3)
    assert float(mj.reciprocal_condition(eye, eye)) == 1.0
    singular = jnp.array([[1.0, 2.0], [2.0, 4.0]])
    assert float(mj.reciprocal_condition(singular, jnp.linalg.inv(singular))) == 0.0


@pytest.mark.parametrize(
    "closed",
    [
        lambda X: mj.inverse_jacobian(X),
        lambda X: mj.logdet_gradient(X),
        lambda X: mj.logdet_gradient(X, absolute=True),
        lambda X: mj.solve_jacobian(X, jnp.ones(X.shape[0], X.dtype)),
        lambda X: mj.solve_rhs_jacobian(X, jnp.ones(X.shape[0], X.dtype)),
    ],
    ids=["inverse", "logdet", "logdet_absolute", "solve", "solve_rhs"],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_singular_inputs_give_all_nan_never_garbage(closed, dtype):
    exactly = jnp.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]], dtype)
    tiny = jnp.finfo(dtype).eps / 100
    nearly = jnp.diag(jnp.array([1.0, 1.0, tiny], dtype))  # rcond = eps / 100 < eps
    for X in (exactly, nearly):
        result = jax.jit(closed)(X)
        assert bool(jnp.all(jnp.isnan(result))), result


def test_ill_conditioned_but_nonsingular_inputs_are_still_answered():
    X = jnp.diag(jnp.array([1.0, 1e-9]))  # rcond 1e-9 >> eps in float64
    expected = jax.jacfwd(jnp.linalg.inv)(X)
    assert relative_error(mj.inverse_jacobian(X), expected) < 1e-12
    assert relative_error(mj.logdet_gradient(X), jnp.diag(jnp.array([1.0, 1e9]))) < 1e-12


def test_logdet_of_a_negative_determinant_is_nan_and_absolute_gives_the_inverse_transpose():
    X = jnp.array([[0.0, 1.0], [1.0, 0.5]])  # det = -1
    assert bool(jnp.isnan(mj.rule("logdet").fn(X)))
    assert bool(jnp.all(jnp.isnan(mj.logdet_gradient(X))))
    np.testing.assert_allclose(mj.logdet_gradient(X, absolute=True), jnp.linalg.inv(X).T)
    expected = jax.grad(lambda X: jnp.linalg.slogdet(X)[1])(X)
    assert relative_error(mj.logdet_gradient(X, absolute=True), expected) < 1e-14


@pytest.mark.parametrize(
    "X",
    [
        [[1.0, 2.0], [2.0, 4.0]],  # rank 1 of 2: adjugate nonzero
        [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]],  # rank 2 of 3
        [[0.0, 0.0], [0.0, 0.0]],  # rank 0: the adjugate of a 2x2 zero is zero
        [[3.0]],
    ],
    ids=["rank1of2", "rank2of3", "zero2x2", "scalar"],
)
def test_det_gradient_is_the_finite_adjugate_at_singular_matrices(X):
    X = jnp.asarray(X)
    gradient = jax.jit(mj.det_gradient)(X)
    assert bool(jnp.all(jnp.isfinite(gradient)))
    expected = jax.grad(jnp.linalg.det)(X)  # JAX differentiates det by cofactors
    assert relative_error(gradient, expected) < 1e-12
    if X.shape == (2, 2):  # adj([[a, b], [c, d]])^T = [[d, -c], [-b, a]]
        (a, b), (c, d) = np.asarray(X)
        np.testing.assert_allclose(gradient, [[d, -c], [-b, a]], atol=1e-15)


def test_det_gradient_has_the_sign_of_the_determinant():
    X = jnp.array([[0.0, 2.0], [3.0, 0.0]])  # det = -6
    np.testing.assert_allclose(mj.det_gradient(X), -6.0 * jnp.linalg.inv(X).T)


@pytest.mark.parametrize(
    ("X", "expected"),
    [
        # det(X) = 1e-39 under-, 1e39 overflows float32; adj(X)^T = c^2 I does not
        (1e-13 * jnp.eye(3, dtype=jnp.float32), 1e-26 * np.eye(3)),
        (1e13 * jnp.eye(3, dtype=jnp.float32), 1e26 * np.eye(3)),
        # det = -1e-350 underflows float64, adj^T = -1e-280 P does not (P swaps two rows)
        (jnp.array(1e-70 * np.eye(5)[[1, 0, 2, 3, 4]]), -1e-280 * np.eye(5)[[1, 0, 2, 3, 4]]),
        (1e110 * jnp.array([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 4.0]]), None),
        # 130 mantissas of 1/2 (1 = 0.5 * 2^1): their product 2^-130 would underflow
        (jnp.eye(130, dtype=jnp.float32), np.eye(130)),
    ],
    ids=["float32_1e-13", "float32_1e13", "float64_underflow_swapped", "float64_1e110", "I130"],
)
def test_det_gradient_where_det_itself_is_beyond_the_dtypes_range(X, expected):
    if expected is None:  # adj(c A)^T = c^(n-1) adj(A)^T, A = X / c exact in float64
        A = np.asarray(X) / 1e110
        expected = 1e220 * np.linalg.det(A) * np.linalg.inv(A).T
    gradient = jax.jit(mj.det_gradient)(X)
    assert gradient.dtype == X.dtype
    assert relative_error(gradient, expected) < 8 * float(jnp.finfo(X.dtype).eps)
    np.testing.assert_array_equal(np.asarray(gradient) == 0, expected == 0)


def test_examples_of_the_inverse_rules_are_well_conditioned_by_construction():
    for size in (1, 2, 8, 64):
        (X,) = mj.rule("inverse").example(key(size), jnp.float64, size)
        s = jnp.linalg.svd(X, compute_uv=False)
        assert float(s.min()) >= 0.5 - 1e-12 and float(s.max()) <= 1.5 + 1e-12
        assert float(jnp.linalg.det(X)) > 0
