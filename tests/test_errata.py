"""The seed's formulas that hold only in one layout or under an implicit row/column reading
(docs/errata.md). Each test pins the correct form in both layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj

from .helpers import assert_jacobians_close, key


def pieces_for_chain_scalar():
    """x scalar, u = sin(a x) in R^3, g = exp(W u) in R^2."""
    ka, kw = jax.random.split(key(20))
    a = jax.random.normal(ka, (3,), jnp.float64)
    W = jax.random.normal(kw, (2, 3), jnp.float64)
    x = jnp.float64(0.7)
    u = jnp.sin(a * x)
    dg_du_numerator = jax.jacfwd(lambda u: jnp.exp(W @ u))(u)  # (t, s) = (2, 3)
    du_dx = jax.jacfwd(lambda x: jnp.sin(a * x))(x)  # (s,) = (3,)
    expected = jax.jacfwd(lambda x: jnp.exp(W @ jnp.sin(a * x)))(x)  # (t,) = (2,)
    return dg_du_numerator, du_dx, expected


def test_erratum_chain_scalar_printed_order_fails_in_denominator_layout():
    """Printed: dg/dx = (dg/du)^T du/dx. Read literally in denominator layout, dg/du is
    s x t and du/dx, a vector-by-scalar derivative, is the 1 x s row,
    so (dg/du)^T du/dx is (t x s)(1 x s): the shapes do not compose."""
    dg_du_numerator, du_dx, _ = pieces_for_chain_scalar()
    dg_du_denominator = dg_du_numerator.T  # (s, t)
    du_dx_row = du_dx[None, :]  # (1, s): denominator layout of a vector-by-scalar derivative
    with pytest.raises(TypeError):
        jnp.matmul(dg_du_denominator.T, du_dx_row)


def test_erratum_chain_scalar_printed_form_holds_with_du_dx_as_a_column():
    """With du/dx read as the column s x 1, (dg/du)^T du/dx is the t x 1 column dg/dx."""
    dg_du_numerator, du_dx, expected = pieces_for_chain_scalar()
    dg_du_denominator = dg_du_numerator.T
    column = dg_du_denominator.T @ du_dx[:, None]  # (t, s)(s, 1) = (t, 1)
    assert_jacobians_close(column[:, 0], expected)


@pytest.mark.parametrize("layout", mj.LAYOUTS)
def test_erratum_chain_scalar_correct_form_in_both_layouts(layout):
    """Correct: numerator dg/dx = (dg/du)(du/dx); denominator dg/dx = (du/dx)(dg/du),
    the same order as the vector chain rule."""
    dg_du_numerator, du_dx, expected = pieces_for_chain_scalar()
    dg_du = dg_du_numerator if layout == "numerator" else dg_du_numerator.T
    got = mj.chain_scalar(dg_du, du_dx, layout=layout)
    assert got.shape == (2,)
    assert_jacobians_close(got, expected)
    explicit = dg_du @ du_dx if layout == "numerator" else du_dx @ dg_du
    np.testing.assert_array_equal(got, explicit)


def pieces_for_product_scalar_vector():
    """x in R^3, y = cos(u^T x) scalar, z = sin(C x) in R^4."""
    ku, kc, kx = jax.random.split(key(21), 3)
    u = jax.random.normal(ku, (3,), jnp.float64)
    C = jax.random.normal(kc, (4, 3), jnp.float64)
    x = jax.random.normal(kx, (3,), jnp.float64)
    y, z = jnp.cos(u @ x), jnp.sin(C @ x)
    dy_dx = jax.grad(lambda x: jnp.cos(u @ x))(x)  # (m,) = (3,)
    dz_dx_numerator = jax.jacfwd(lambda x: jnp.sin(C @ x))(x)  # (n, m) = (4, 3)
    expected_numerator = jax.jacfwd(lambda x: jnp.cos(u @ x) * jnp.sin(C @ x))(x)  # (4, 3)
    return y, z, dy_dx, dz_dx_numerator, expected_numerator


def test_erratum_product_scalar_vector_printed_form_holds_in_denominator_layout():
    """Printed: d(yz)/dx = y dz/dx + (dy/dx) z^T, with dy/dx the m x 1 column and dz/dx
    m x n: every term is m x n. This is the denominator layout, and there it is right."""
    y, z, dy_dx, dz_dx_numerator, expected_numerator = pieces_for_product_scalar_vector()
    printed = y * dz_dx_numerator.T + dy_dx[:, None] @ z[None, :]
    assert printed.shape == (3, 4)
    assert_jacobians_close(printed, expected_numerator.T)


def test_erratum_product_scalar_vector_printed_term_has_the_wrong_shape_in_numerator_layout():
    """In numerator layout dz/dx is n x m and dy/dx is the 1 x m row; the printed
    (dy/dx) z^T is then (1 x m)(1 x n), which does not compose; the right term is z (dy/dx)."""
    y, z, dy_dx, dz_dx_numerator, expected_numerator = pieces_for_product_scalar_vector()
    with pytest.raises(TypeError):
        jnp.matmul(dy_dx[None, :], z[None, :])
    corrected = y * dz_dx_numerator + z[:, None] @ dy_dx[None, :]
    assert_jacobians_close(corrected, expected_numerator)


@pytest.mark.parametrize("layout", mj.LAYOUTS)
def test_erratum_product_scalar_vector_correct_form_in_both_layouts(layout):
    y, z, dy_dx, dz_dx_numerator, expected_numerator = pieces_for_product_scalar_vector()
    dz_dx = dz_dx_numerator if layout == "numerator" else dz_dx_numerator.T
    expected = expected_numerator if layout == "numerator" else expected_numerator.T
    got = mj.product_scalar_vector(y, z, dy_dx, dz_dx, layout=layout)
    assert_jacobians_close(got, expected)
