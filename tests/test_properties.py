"""Hypothesis properties over random shapes and values: the closed forms equal autodiff for
any valid arguments, not only the catalogue's examples."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import matcalc_jax as mj

from .helpers import assert_jacobians_close

sizes = st.integers(min_value=1, max_value=6)
# Magnitudes below 1e-6 are mapped to exact zeros: products of three of them would
# underflow to subnormals, where no two summation orders agree to a relative tolerance.
values = st.floats(min_value=-8, max_value=8, allow_nan=False, width=64).map(
    lambda v: v if abs(v) >= 1e-6 else 0.0
)
positives = st.floats(min_value=0.1, max_value=10, allow_nan=False, width=64)


def vectors(n, elements=values):
    return hnp.arrays(np.float64, (n,), elements=elements).map(jnp.asarray)


def matrices(rows, cols):
    return hnp.arrays(np.float64, (rows, cols), elements=values).map(jnp.asarray)


@st.composite
def linear_args(draw):
    n, m = draw(sizes), draw(sizes)
    return draw(matrices(n, m)), draw(vectors(m))


@given(linear_args())
def test_linear_equals_jacfwd_for_any_shape(args):
    A, x = args
    assert_jacobians_close(mj.linear_jacobian(A, x), jax.jacfwd(lambda x: A @ x)(x))
    np.testing.assert_array_equal(mj.linear_jacobian(A, x, layout="denominator"), A.T)


@given(linear_args())
def test_linear_transposed_equals_jacrev_for_any_shape(args):
    A, x = args
    At = A.T  # (m, n), and x in R^m: x^T At
    assert_jacobians_close(mj.linear_transposed_jacobian(x, At), jax.jacrev(lambda v: v @ At)(x))
    np.testing.assert_array_equal(mj.linear_transposed_jacobian(x, At, layout="denominator"), At)


def logistic_prime_by_cosh(x):
    """sigma'(x) = 1 / (4 cosh^2(x / 2)): an independent closed form, accurate to a few ulps.
    (Autodiff's sigma(1 - sigma) loses digits as |x| grows, so it is no reference there.)"""
    return 0.25 / np.cosh(np.asarray(x) / 2) ** 2


def softmax_jacobian_longdouble(x):
    """diag(s) - s s^T in numpy's extended precision: a reference for float64 (autodiff's
    diagonal s (1 - s) loses digits when one s_i is near 1)."""
    x = np.asarray(x, np.longdouble)
    e = np.exp(x - x.max())
    s = e / e.sum()
    return (np.diag(s) - np.outer(s, s)).astype(np.float64)


@given(st.integers(1, 6).flatmap(vectors))
def test_elementwise_family_equals_jacfwd(x):
    assert_jacobians_close(mj.logistic_jacobian(x), np.diag(logistic_prime_by_cosh(x)))
    assert_jacobians_close(mj.exp_jacobian(x), jax.jacfwd(jnp.exp)(x))
    assert_jacobians_close(mj.elementwise_jacobian(jnp.cos(x)), jax.jacfwd(jnp.sin)(x))
    assert_jacobians_close(mj.softmax_jacobian(x), softmax_jacobian_longdouble(x))


@given(st.integers(1, 6).flatmap(lambda n: vectors(n, positives)), st.floats(-2, 3))
def test_log_and_power_equal_jacfwd_on_their_domain(x, r):
    r = jnp.float64(r)
    assert_jacobians_close(mj.log_jacobian(x), jax.jacfwd(jnp.log)(x))
    assert_jacobians_close(mj.power_jacobian(x, r), jax.jacfwd(lambda x: x**r)(x))


@given(values)
def test_logistic_scalar_equals_the_cosh_form(x):
    got = mj.logistic_scalar_jacobian(jnp.float64(x))
    assert_jacobians_close(got, logistic_prime_by_cosh(x))


@given(st.floats(min_value=-3, max_value=3, allow_nan=False))
def test_logistic_scalar_equals_grad_where_autodiff_is_accurate(x):
    x = jnp.float64(x)  # |x| <= 3: sigma (1 - sigma) has lost fewer than 2 digits
    assert_jacobians_close(mj.logistic_scalar_jacobian(x), jax.grad(jax.nn.sigmoid)(x))


@st.composite
def inner_args(draw):
    m, n = draw(sizes), draw(sizes)
    return draw(matrices(n, m)), draw(matrices(n, m)), draw(vectors(m))


@given(inner_args())
def test_product_inner_and_chain_vector_on_random_layers(args):
    W, V, x = args
    W, V = W / 8, V / 8  # keep tanh off saturation, where both sides round to zero
    y, dy = W @ x, mj.linear_jacobian(W, x)
    z = jnp.tanh(V @ x)
    dz = mj.chain_vector(mj.elementwise_jacobian(1 - z**2), mj.linear_jacobian(V, x))
    expected = jax.grad(lambda x: (W @ x) @ jnp.tanh(V @ x))(x)
    assert_jacobians_close(mj.product_inner(y, z, dy, dz), expected)
    dy_den, dz_den = dy.T, dz.T
    assert_jacobians_close(mj.product_inner(y, z, dy_den, dz_den, layout="denominator"), expected)


@st.composite
def operators(draw):
    """A random structured operator of any leaf type, with random shapes and values."""
    n, m, r = draw(sizes), draw(sizes), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["dense", "low_rank", "dplr", "kron", "kron_vec", "blocks"]))
    if kind == "dense":
        return mj.Dense(draw(matrices(n, m)), 1)
    if kind == "low_rank":
        return mj.LowRank(draw(matrices(n, r)), draw(matrices(m, r)))
    if kind == "dplr":
        return mj.DiagonalPlusLowRank(draw(vectors(n)), draw(matrices(n, r)), draw(matrices(n, r)))
    if kind == "kron":
        return mj.Kronecker(draw(matrices(n, m)), draw(matrices(r, n)))
    if kind == "kron_vec":
        return mj.Kronecker(draw(matrices(n, m)), draw(vectors(r)))
    blocks = hnp.arrays(np.float64, (r, n, m), elements=values).map(jnp.asarray)
    return mj.BlockDiagonal(draw(blocks))


@given(operators(), st.integers(0, 2**31 - 1))
def test_operator_products_equal_the_dense_matrix(op, seed):
    """mv, vm and diagonal of every leaf type against its own dense matrix."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    v = jax.random.normal(k1, op.in_shape, jnp.float64)
    u = jax.random.normal(k2, op.out_shape, jnp.float64)
    dense = op.to_dense()
    in_ndim = len(op.in_shape)
    np.testing.assert_allclose(op.mv(v), jnp.tensordot(dense, v, axes=in_ndim), atol=1e-9)
    np.testing.assert_allclose(op.vm(u), jnp.tensordot(u, dense, axes=len(op.out_shape)), atol=1e-9)
    if op.in_shape == op.out_shape:
        size = int(np.prod(op.in_shape))
        diagonal = jnp.diagonal(dense.reshape(size, size)).reshape(op.in_shape)
        np.testing.assert_allclose(op.diagonal(), diagonal, atol=1e-12)
