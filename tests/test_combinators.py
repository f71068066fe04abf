"""The product, chain and sum combinators on pieces the tests build themselves (not the
catalogue's instances), in both layouts, against autodiff of the whole composite."""

import jax
import jax.numpy as jnp
import pytest

import matcalc_jax as mj
from matcalc_jax.core.layout import from_numerator

from .helpers import assert_jacobians_close, key

LAYOUTS = mj.LAYOUTS


def draw(seed, *shapes):
    keys = jax.random.split(key(seed), len(shapes))
    return [jax.random.normal(k, s, jnp.float64) for k, s in zip(keys, shapes, strict=True)]


def jac(f, x, layout, out_ndim):
    """jax.jacfwd of f at x, arranged in ``layout``: the pieces the combinators are fed."""
    return from_numerator(jax.jacfwd(f)(x), out_ndim, layout)


# Pieces: y(x) = sin(B x), z(x) = (C x)^2 for a vector x; for a matrix X, y(X) = sin(X) @ b.
@pytest.mark.parametrize("layout", LAYOUTS)
def test_product_inner_on_vector_x(layout):
    B, C, x = draw(0, (5, 3), (5, 3), (3,))
    y_of = lambda x: jnp.sin(B @ x)  # noqa: E731
    z_of = lambda x: (C @ x) ** 2  # noqa: E731
    got = mj.product_inner(
        y_of(x), z_of(x), jac(y_of, x, layout, 1), jac(z_of, x, layout, 1), layout=layout
    )
    assert_jacobians_close(got, jax.grad(lambda x: y_of(x) @ z_of(x))(x))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_product_inner_on_matrix_x(layout):
    b, c, X = draw(1, (4,), (4,), (3, 4))
    y_of = lambda X: jnp.sin(X) @ b  # noqa: E731
    z_of = lambda X: jnp.tanh(X) @ c  # noqa: E731
    got = mj.product_inner(
        y_of(X), z_of(X), jac(y_of, X, layout, 1), jac(z_of, X, layout, 1), layout=layout
    )
    assert got.shape == X.shape
    assert_jacobians_close(got, jax.grad(lambda X: y_of(X) @ z_of(X))(X))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_product_bilinear(layout):
    A, B, C, x = draw(2, (5, 2), (5, 3), (2, 3), (3,))
    y_of = lambda x: jnp.sin(B @ x)  # noqa: E731
    z_of = lambda x: (C @ x) ** 2  # noqa: E731
    got = mj.product_bilinear(
        y_of(x), A, z_of(x), jac(y_of, x, layout, 1), jac(z_of, x, layout, 1), layout=layout
    )
    assert_jacobians_close(got, jax.grad(lambda x: y_of(x) @ A @ z_of(x))(x))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_product_scalar_vector(layout):
    u, C, x = draw(3, (3,), (4, 3), (3,))
    y_of = lambda x: jnp.cos(u @ x)  # noqa: E731
    z_of = lambda x: jnp.sin(C @ x)  # noqa: E731
    got = mj.product_scalar_vector(
        y_of(x), z_of(x), jax.grad(y_of)(x), jac(z_of, x, layout, 1), layout=layout
    )
    expected = jac(lambda x: y_of(x) * z_of(x), x, layout, 1)
    assert got.shape == ((4, 3) if layout == "numerator" else (3, 4))
    assert_jacobians_close(got, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sum_rule(layout):
    B, C, x = draw(4, (4, 3), (4, 3), (3,))
    y_of = lambda x: jnp.sin(B @ x)  # noqa: E731
    z_of = lambda x: jnp.exp(C @ x)  # noqa: E731
    got = mj.sum_rule(jac(y_of, x, layout, 1), jac(z_of, x, layout, 1), layout=layout)
    assert_jacobians_close(got, jac(lambda x: y_of(x) + z_of(x), x, layout, 1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chain_vector(layout):
    B, C, x = draw(5, (4, 3), (2, 4), (3,))
    y_of = lambda x: jnp.sin(B @ x)  # noqa: E731
    z_of = lambda y: jnp.exp(C @ y)  # noqa: E731
    y = y_of(x)
    got = mj.chain_vector(jac(z_of, y, layout, 1), jac(y_of, x, layout, 1), layout=layout)
    assert got.shape == ((2, 3) if layout == "numerator" else (3, 2))
    assert_jacobians_close(got, jac(lambda x: z_of(y_of(x)), x, layout, 1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chain_vector_with_matrix_x(layout):
    b, C, X = draw(6, (4,), (2, 3), (3, 4))
    y_of = lambda X: jnp.sin(X) @ b  # noqa: E731  (y in R^3)
    z_of = lambda y: jnp.tanh(C @ y)  # noqa: E731
    y = y_of(X)
    got = mj.chain_vector(jac(z_of, y, layout, 1), jac(y_of, X, layout, 1), layout=layout)
    assert_jacobians_close(got, jac(lambda X: z_of(y_of(X)), X, layout, 1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chain_matrix_trace(layout):
    X, M = draw(7, (2, 3), (3, 4))
    Y_of = lambda X: jnp.sin(X @ M)  # noqa: E731  (Y in R^{2 x 4})
    z_of = lambda Y: jnp.sum(Y**3)  # noqa: E731
    Y = Y_of(X)
    dY_dX = jac(Y_of, X, layout, 2)
    assert dY_dX.shape == ((2, 4, 2, 3) if layout == "numerator" else (2, 3, 2, 4))
    got = mj.chain_matrix_trace(jax.grad(z_of)(Y), dY_dX, layout=layout)
    expected = jax.grad(lambda X: z_of(Y_of(X)))(X)
    assert_jacobians_close(got, expected)
    # The seed's per-entry form, literally: dz/dX_ij = tr((dz/dY)^T dY/dX_ij).
    G = jax.grad(z_of)(Y)
    numerator = jax.jacfwd(Y_of)(X)
    for i in range(2):
        for j in range(3):
            entry = jnp.trace(G.T @ numerator[:, :, i, j])
            assert abs(entry - got[i, j]) <= 1e-12 * jnp.max(jnp.abs(got))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chain_matrix_vector(layout):
    X, v = draw(8, (3, 4), (4,))
    y_of = lambda X: jnp.tanh(X) @ v  # noqa: E731
    z_of = lambda y: jnp.sum(jnp.sin(y))  # noqa: E731
    y = y_of(X)
    got = mj.chain_matrix_vector(jax.grad(z_of)(y), jac(y_of, X, layout, 1), layout=layout)
    assert_jacobians_close(got, jax.grad(lambda X: z_of(y_of(X)))(X))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chain_scalar(layout):
    a, W = draw(9, (3,), (2, 3))
    x = jnp.float64(0.3)
    u_of = lambda x: jnp.sin(a * x)  # noqa: E731
    g_of = lambda u: jnp.exp(W @ u)  # noqa: E731
    u = u_of(x)
    got = mj.chain_scalar(jac(g_of, u, layout, 1), jax.jacfwd(u_of)(x), layout=layout)
    assert got.shape == (2,)
    assert_jacobians_close(got, jax.jacfwd(lambda x: g_of(u_of(x)))(x))


def test_combinators_compose_with_each_other():
    """Two chain rules and a product rule nest: d/dx of sin(W x)^T tanh(V sin(W x))."""
    W, V, x = draw(10, (4, 3), (4, 4), (3,))
    s = jnp.sin(W @ x)
    ds = mj.chain_vector(mj.elementwise_jacobian(jnp.cos(W @ x)), mj.linear_jacobian(W, x))
    t = jnp.tanh(V @ s)
    dt = mj.chain_vector(
        mj.chain_vector(mj.elementwise_jacobian(1 - t**2), mj.linear_jacobian(V, s)), ds
    )
    got = mj.product_inner(s, t, ds, dt)
    assert_jacobians_close(
        got, jax.grad(lambda x: jnp.sin(W @ x) @ jnp.tanh(V @ jnp.sin(W @ x)))(x)
    )


def test_combinators_work_under_jit_and_vmap():
    B, x = draw(11, (4, 3), (5, 3))  # a batch of 5 points x

    def gradient(x):
        y = jnp.sin(B @ x)
        dy = mj.chain_vector(mj.elementwise_jacobian(jnp.cos(B @ x)), mj.linear_jacobian(B, x))
        return mj.product_inner(y, y, dy, dy)

    got = jax.jit(jax.vmap(gradient))(x)
    expected = jax.vmap(jax.grad(lambda x: jnp.sin(B @ x) @ jnp.sin(B @ x)))(x)
    assert_jacobians_close(got, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chain_elementwise_equals_chain_vector_through_the_diagonal(layout):
    B, X = draw(12, (4,), (4, 2, 3))
    derivative = jnp.cos(B)
    dy_dx = from_numerator(X, 1, layout)  # any x shape: here (2, 3)
    got = mj.chain_elementwise(derivative, dy_dx, layout=layout)
    expected = mj.chain_vector(mj.elementwise_jacobian(derivative), dy_dx, layout=layout)
    assert got.shape == dy_dx.shape
    assert_jacobians_close(got, expected)


def test_chain_elementwise_checks_its_pieces():
    with pytest.raises(ValueError, match=r"'chain_elementwise'.*'dy_dx'"):
        mj.chain_elementwise(jnp.ones(3), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"'chain_elementwise'.*'derivative'"):
        mj.chain_elementwise(jnp.ones((3, 3)), jnp.ones((3, 2)))
