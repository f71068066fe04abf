"""matcalc_jax.nn: values and derivatives against jax.nn where jax.nn is right, the edges
where it is not, and every transformation a model puts them through."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from matcalc_jax import nn

from .helpers import assert_all_close, assert_derivatives_close, assert_jacobians_close, key

ELEMENTWISE = {
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "log_sigmoid": jax.nn.log_sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "celu": jax.nn.celu,
    "soft_sign": jax.nn.soft_sign,
    "relu6": jax.nn.relu6,
    "hard_tanh": jax.nn.hard_tanh,
    "leaky_relu": jax.nn.leaky_relu,
}
REDUCTIONS = {
    "softmax": jax.nn.softmax,
    "log_softmax": jax.nn.log_softmax,
    "logsumexp": jax.nn.logsumexp,
}
ALL_FLOATS = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def moderate(dtype, shape=(7,), seed=0):
    """Inputs where jax.nn is accurate: |x| < 3, away from relu's kink."""
    x = 1.5 * jax.random.normal(key(seed), shape, jnp.float64)
    return jnp.where(jnp.abs(x) < 1e-3, 0.5, x).astype(dtype)


@pytest.mark.parametrize("name", list(ELEMENTWISE))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_elementwise_values_and_two_derivatives_match_jax_nn(name, dtype):
    ours, theirs = getattr(nn, name), ELEMENTWISE[name]
    x = moderate(dtype)
    assert_derivatives_close(ours, theirs, x)


@pytest.mark.parametrize("name", list(REDUCTIONS))
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_reductions_match_jax_nn_in_value_and_jacobian(name, axis, dtype):
    ours = lambda x: getattr(nn, name)(x, axis=axis)  # noqa: E731
    theirs = lambda x: REDUCTIONS[name](x, axis=axis)  # noqa: E731
    x = moderate(dtype, (3, 4), seed=1)
    assert_all_close(
        lambda x: [
            (ours(x), theirs(x)),
            (jax.jacfwd(ours)(x), jax.jacfwd(theirs)(x)),
            (jax.jacrev(ours)(x), jax.jacrev(theirs)(x)),
        ],
        x,
    )


@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reductions_match_jax_nn_in_the_hessian(name):
    x = moderate(jnp.float64, (3, 4), seed=1)

    def loss(f):
        return lambda x: jnp.sum(jnp.sin(f(x, axis=-1)))

    assert_jacobians_close(
        jax.hessian(loss(getattr(nn, name)))(x), jax.hessian(loss(REDUCTIONS[name]))(x)
    )


def test_logsumexp_reduces_every_axis_by_default_like_jax_nn():
    x = moderate(jnp.float64, (3, 4))
    assert nn.logsumexp(x).shape == ()
    assert_jacobians_close(nn.logsumexp(x), jax.nn.logsumexp(x))
    assert_jacobians_close(nn.logsumexp(x, axis=(0, 1)), jax.nn.logsumexp(x))


@pytest.mark.parametrize("name", ["inner", "bilinear", "dense", "linear"])
def test_seed_forms_match_autodiff_of_the_plain_formula(name):
    k = jax.random.split(key(2), 4)
    y, z = jax.random.normal(k[0], (3,), jnp.float64), jax.random.normal(k[1], (4,), jnp.float64)
    A = jax.random.normal(k[2], (3, 4), jnp.float64)
    b = jax.random.normal(k[3], (3,), jnp.float64)
    cases = {
        "inner": (nn.inner, lambda y, z: y @ z, (y, y[::-1])),
        "bilinear": (nn.bilinear, lambda y, A, z: y @ A @ z, (y, A, z)),
        "dense": (nn.dense, lambda W, x, b: W @ x + b, (A, z, b)),
        "linear": (nn.linear, lambda A, x: A @ x, (A, z)),
    }
    ours, plain, args = cases[name]
    argnums = tuple(range(len(args)))
    assert_jacobians_close(ours(*args), plain(*args))
    for transform in (jax.jacfwd, jax.jacrev):
        got = transform(ours, argnums=argnums)(*args)
        expected = transform(plain, argnums=argnums)(*args)
        for g, e in zip(got, expected, strict=True):
            assert_jacobians_close(g, e)


def test_works_under_jit_vmap_scan_cond_and_hessian():
    xs = moderate(jnp.float64, (5, 4))

    def loss(x):
        return nn.logsumexp(nn.tanh(x)) + jnp.sum(nn.sigmoid(x) * nn.softplus(x))

    def reference(x):
        return jax.nn.logsumexp(jnp.tanh(x)) + jnp.sum(jax.nn.sigmoid(x) * jax.nn.softplus(x))

    assert_jacobians_close(jax.jit(jax.vmap(jax.grad(loss)))(xs), jax.vmap(jax.grad(reference))(xs))
    assert_jacobians_close(jax.hessian(loss)(xs[0]), jax.hessian(reference)(xs[0]))

    def scan_sum(f):
        def step(carry, x):
            return carry + f(x), None

        return lambda xs: jax.lax.scan(step, jnp.zeros((), xs.dtype), xs)[0]

    assert_jacobians_close(jax.grad(scan_sum(loss))(xs), jax.grad(scan_sum(reference))(xs))
    branch = lambda f: lambda x: jax.lax.cond(x[0] > 0, f, lambda x: -f(x), x)  # noqa: E731
    assert_jacobians_close(jax.grad(branch(loss))(xs[1]), jax.grad(branch(reference))(xs[1]))
    assert_jacobians_close(jax.jacfwd(branch(loss))(xs[2]), jax.jacfwd(branch(reference))(xs[2]))


def test_regression_sigmoid_derivative_at_37_4_in_float64_is_not_zero():
    x = jnp.float64(37.4)
    assert float(jax.nn.sigmoid(x) * (1 - jax.nn.sigmoid(x))) == 0.0  # the naive formula
    assert float(jax.grad(nn.sigmoid)(x)) == pytest.approx(5.7198728773e-17, rel=1e-9, abs=0)
    assert float(jax.grad(nn.log_sigmoid)(-x)) == pytest.approx(1.0, rel=1e-15, abs=0)
    assert float(jax.grad(nn.log_sigmoid)(x)) == pytest.approx(5.7198728773e-17, rel=1e-9, abs=0)


def test_regression_tanh_derivative_in_the_tail_is_not_zero():
    x = jnp.float64(20.0)
    assert float(1 - jnp.tanh(x) ** 2) == 0.0  # the naive formula
    assert float(jax.grad(nn.tanh)(x)) == pytest.approx(4 * np.exp(-40.0), rel=1e-15, abs=0)


def test_float32_tanh_is_xlas_value_with_the_exact_tail_derivative():
    # float32: the value is XLA's tanh bit for bit (faster, and 3.09 ulps at most against
    # mpmath, docs/accuracy.md); the derivative is still 4 e / (1 + e)^2, not 1 - tanh^2.
    x = jnp.asarray([-30.0, -9.5, -0.3, -1e-8, -0.0, 0.0, 1e-20, 0.2, 0.7, 4.0, 30.0, np.inf])
    x = x.astype(jnp.float32)
    np.testing.assert_array_equal(nn.tanh(x), jnp.tanh(x))
    np.testing.assert_array_equal(jnp.signbit(nn.tanh(x)), jnp.signbit(x))
    tail = jax.vmap(jax.grad(nn.tanh))(jnp.asarray([30.0, -30.0], jnp.float32))
    np.testing.assert_allclose(tail, 4 * np.exp(-60.0), rtol=1e-6)
    assert float(1 - jnp.tanh(jnp.float32(30.0)) ** 2) == 0.0  # what 1 - tanh^2 would give
    # float64 keeps the expm1 form: 2.44 ulps where XLA's tanh is 6.88 (docs/accuracy.md).
    y = jnp.linspace(-3.0, 3.0, 2001, dtype=jnp.float64)
    assert not np.array_equal(nn.tanh(y), jnp.tanh(y))


def test_tanh_prime_is_right_in_float16_where_the_exponential_is_rescaled():
    # The closed forms call forms.activations.tanh_prime in the caller's dtype. In float16
    # the exponential is rescaled from 2|x| > K = 4, where 1 + e is still about 1.02: the
    # quotient must keep its denominator there (4 e alone is 3% off at x = 2.1). Out to
    # |x| = 5.5, where sech^2 is still a normal float16 number.
    from matcalc_jax.forms import activations

    x = jnp.asarray(np.linspace(-5.5, 5.5, 221), jnp.float16)
    truth = 1 / np.cosh(np.asarray(x, np.float64)) ** 2  # at the float16 input itself
    actual = np.asarray(activations.tanh_prime(x), np.float64)
    np.testing.assert_allclose(actual, truth, rtol=3 * float(jnp.finfo(jnp.float16).eps))


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_regression_fully_masked_rows_give_finite_documented_derivatives(name):
    x = jnp.array([[0.5, -1.0, 2.0], [-jnp.inf, -jnp.inf, -jnp.inf]])
    f = lambda x: getattr(nn, name)(x, axis=-1)  # noqa: E731
    values = f(x)
    expected_masked = {"softmax": 0.0, "log_softmax": -jnp.inf, "logsumexp": -jnp.inf}[name]
    np.testing.assert_array_equal(values[1], expected_masked)
    for transform in (jax.jacfwd, jax.jacrev):
        J = transform(f)(x)
        assert bool(jnp.all(jnp.isfinite(J)))
        np.testing.assert_array_equal(J[1], 0.0)
        # The unmasked row is untouched: it matches jax.nn.
        reference = transform(lambda x: getattr(jax.nn, name)(x, axis=-1))(x[:1])
        assert_jacobians_close(J[:1, ..., :1, :], reference)
    naive = jax.jacrev(lambda x: getattr(jax.nn, name)(x, axis=-1))(x)
    assert bool(jnp.any(jnp.isnan(naive)))  # what jax.nn gives for the masked row


def test_a_masked_entry_has_zero_weight_and_zero_derivative():
    x = jnp.array([1.0, -jnp.inf, 0.0])
    np.testing.assert_array_equal(nn.softmax(x)[1], 0.0)
    J = jax.jacfwd(nn.softmax)(x)
    np.testing.assert_array_equal(J[1], 0.0)
    np.testing.assert_array_equal(J[:, 1], 0.0)
    np.testing.assert_allclose(jax.grad(nn.logsumexp)(x), jax.nn.softmax(x), atol=1e-7)


def test_large_logits_are_fine():
    x = jnp.array([1e4, 1e4 - 2.0, -1e4], jnp.float32)
    for f in (nn.softmax, nn.log_softmax):
        J = jax.jacfwd(f)(x)
        assert bool(jnp.all(jnp.isfinite(f(x)))) and bool(jnp.all(jnp.isfinite(J)))
    assert float(nn.logsumexp(x)) == pytest.approx(1e4 + np.log1p(np.exp(-2.0)), rel=1e-6)


@pytest.mark.parametrize("dtype", ALL_FLOATS)
@pytest.mark.parametrize("name", list(ELEMENTWISE) + list(REDUCTIONS))
def test_no_nan_or_inf_for_finite_inputs_in_any_float(name, dtype):
    big = float(jnp.finfo(dtype).max)
    x = jnp.array([-big, -1e4, -60.0, -1.0, 0.0, 1.0, 60.0, 1e4, big], dtype)
    f = getattr(nn, name)
    values = f(x)
    gradient = jax.grad(lambda x: jnp.sum(f(x)))(x)
    assert gradient.dtype == dtype
    if name == "selu":  # selu(max) = 1.05 max overflows, as the true value does
        values = values[:-1]
    if name != "log_softmax":  # x_k - logsumexp(x) spans 2 * max here: it overflows to -inf
        assert bool(jnp.all(jnp.isfinite(values))), values
    assert bool(jnp.all(jnp.isfinite(gradient))), gradient


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_sigmoid_and_tanh_derivatives_are_finite_and_bounded_for_any_float32(x):
    x = jnp.float32(x)
    assert 0.0 <= float(jax.grad(nn.sigmoid)(x)) <= 0.25
    assert 0.0 <= float(jax.grad(nn.tanh)(x)) <= 1.0
    assert 0.0 <= float(jax.grad(nn.softplus)(x)) <= 1.0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match=r"nn.sigmoid: argument 'x' has dtype complex64"):
        nn.sigmoid(jnp.ones(3, jnp.complex64))
    with pytest.raises(TypeError, match=r"nn.tanh: argument 'x' is str"):
        nn.tanh("one")
    with pytest.raises(ValueError, match=r"nn.softmax: argument 'where' has shape \(2,\)"):
        nn.softmax(jnp.ones(3), where=jnp.array([True, False]))
    with pytest.raises(ValueError, match=r"'nn.dense'.*'b'.*\(2,\).*\(3,\)"):
        nn.dense(jnp.ones((3, 4)), jnp.ones(4), jnp.ones(2))
    with pytest.raises(ValueError, match="out of range"):
        nn.softmax(jnp.ones(3), axis=1)
    with pytest.raises(TypeError, match="axis"):
        nn.softmax(jnp.ones(3), axis="last")


@pytest.mark.parametrize("masked", [100.0, 1000.0, float("inf"), float("nan")])
def test_logsumexp_leaves_out_an_entry_whose_weight_is_zero(masked):
    """b = 0 leaves the entry out whatever a holds there, as jax.nn and SciPy do."""
    a, b = jnp.array([masked, 1.0]), jnp.array([0.0, 1.0])
    assert float(nn.logsumexp(a, b=b)) == pytest.approx(1.0)
    gradient = jax.grad(lambda a: nn.logsumexp(a, b=b))(a)
    np.testing.assert_array_equal(gradient, [0.0, 1.0])
    np.testing.assert_array_equal(gradient, jax.grad(lambda a: jax.nn.logsumexp(a, b=b))(a))
    lse, sign = nn.logsumexp(a, b=b, return_sign=True)
    assert float(lse) == pytest.approx(1.0) and float(sign) == 1.0


def test_logsumexp_derivative_in_a_zero_weight_is_exact():
    """d/db_i log sum b e^a = e^(a_i - lse), also where b_i = 0 (jax.nn gives 0 there)."""
    a, b = jnp.array([0.5, 1.0]), jnp.array([0.0, 1.0])
    gradient = jax.grad(lambda b: nn.logsumexp(a, b=b))(b)
    np.testing.assert_allclose(gradient, np.exp(np.array([0.5, 1.0]) - 1.0), rtol=1e-6)


@pytest.mark.parametrize(
    "f", [nn.relu, nn.relu6, nn.hard_tanh, lambda x: nn.leaky_relu(x, 0.1)],
    ids=["relu", "relu6", "hard_tanh", "leaky_relu"],
)  # fmt: skip
def test_every_derivative_at_nan_is_nan(f):
    """NaN in, NaN out, at every order (the second derivative was 1 at NaN)."""
    second = jax.grad(jax.grad(f))
    assert np.isnan(jax.grad(f)(jnp.nan)) and np.isnan(second(jnp.nan))
    assert np.isnan(jax.grad(second)(jnp.nan))
    for x in (1.5, -1.5, jnp.inf, -jnp.inf):  # and nothing leaks elsewhere
        assert float(second(jnp.asarray(x))) == 0.0


def _first_maximum_oracle(x, axes):
    """NumPy: True at the first (C order over ``axes``) entry equal to the slice's maximum;
    none where the maximum is NaN or the slice is empty."""
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, kept + list(axes))
    flat = moved.reshape(*moved.shape[: len(kept)], -1)
    mask = np.zeros(flat.shape, bool)
    for where in np.ndindex(*flat.shape[:-1]):
        row = flat[where]
        if row.size and not np.isnan(row).any():
            mask[(*where, int(np.argmax(row == row.max())))] = True
    return np.transpose(mask.reshape(moved.shape), np.argsort(kept + list(axes)))


@pytest.mark.parametrize(
    "shape, axes",
    [((7, 5), (1,)), ((7, 5), (0,)), ((3, 4, 5), (0, 2)), ((2, 3, 4), (0, 1, 2)), ((4, 0), (1,))],
)
def test_the_first_maximum_of_each_slice_is_the_one_marked(shape, axes):
    """The mask behind softmax's accurate diagonal: ties, infinities, NaN and empty slices."""
    rng = np.random.default_rng(0)
    values = np.array([0.0, 1.0, 2.0, 2.0, -np.inf, np.inf, np.nan])
    for trial in range(20):
        x = rng.choice(values, size=shape) if trial % 2 else rng.integers(0, 3, shape) * 1.0
        expected = _first_maximum_oracle(x, axes)
        np.testing.assert_array_equal(nn._first_maximum(jnp.asarray(x), axes), expected)
