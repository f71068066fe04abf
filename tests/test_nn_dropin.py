"""matcalc_jax.nn as a drop-in for jax.nn: the same arguments, dtypes and values, NaN and inf
semantics pinned row by row, low precision, and second derivatives at 0 and in the tails."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from matcalc_jax import mlp, nn

from .helpers import assert_derivatives_close, assert_jacobians_close, key

#: Every elementwise function, smooth at 0 (C^2) or not.
SMOOTH = ("sigmoid", "log_sigmoid", "softplus", "tanh", "silu", "gelu", "gelu_erf")
KINKED = ("relu", "relu6", "hard_tanh", "leaky_relu", "elu", "selu", "celu", "soft_sign")
REDUCTIONS = ("softmax", "log_softmax", "logsumexp")


def function(library, name):
    module = nn if library == "ours" else jax.nn
    if name == "gelu_erf":
        return functools.partial(module.gelu, approximate=False)
    if name == "tanh" and library != "ours":
        return jnp.tanh
    return getattr(module, name)


@pytest.mark.parametrize("name", SMOOTH + KINKED)
def test_check_grads_of_order_two_in_both_modes_away_from_kinks(name):
    f = function("ours", name)
    points = [1e-9, -1e-9, 0.3, -0.7, 2.5, -3.0, 15.0, -15.0, 30.0, -30.0]
    if name in SMOOTH:
        points.append(0.0)
    for x in points:
        # The step never crosses a kink (0, 6, +-1) for the points chosen.
        eps = min(1e-4, abs(x) / 4) if x != 0 else 1e-4
        check_grads(f, (jnp.array(x, jnp.float64),), order=2, modes=("fwd", "rev"), eps=eps)


@pytest.mark.parametrize("name", SMOOTH)
def test_regression_second_derivative_through_value_and_grad_at_zero(name):
    """The primal returned inside the tangent rule is differentiable: for tanh the old rule
    returned sign(x) * ..., whose derivative at 0 is 0, not 1."""
    ours, theirs = function("ours", name), function("jax.nn", name)
    got = jax.grad(lambda x: jax.value_and_grad(ours)(x)[0])(0.0)
    expected = jax.grad(lambda x: jax.value_and_grad(theirs)(x)[0])(0.0)
    assert float(got) == pytest.approx(float(expected), rel=1e-15, abs=1e-300)
    assert float(jax.grad(lambda x: jax.value_and_grad(nn.tanh)(x)[0])(0.0)) == 1.0


@pytest.mark.parametrize("name", SMOOTH + KINKED)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_values_and_derivatives_equal_jax_nn_where_it_is_accurate(name, dtype):
    x = jnp.asarray(np.linspace(-4.0, 4.0, 33) + 0.0123, dtype)
    ours, theirs = function("ours", name), function("jax.nn", name)
    assert ours(x).dtype == theirs(x).dtype == x.dtype
    assert_derivatives_close(ours, theirs, x)


@pytest.mark.parametrize("name", ("elu", "celu", "leaky_relu"))
def test_the_parameter_is_differentiable_like_jax_nn(name):
    x = jnp.linspace(-3.0, 2.0, 11)
    grad = jax.grad(lambda a: jnp.sum(function("ours", name)(x, a)))(0.7)
    expected = jax.grad(lambda a: jnp.sum(function("jax.nn", name)(x, a)))(0.7)
    assert_jacobians_close(grad, expected)


@pytest.mark.parametrize("name", SMOOTH + KINKED + REDUCTIONS)
@pytest.mark.parametrize("dtype", ["int32", "int8", "python", "bool"])
def test_integers_are_promoted_to_jax_nn_s_dtype(name, dtype):
    value = 3 if dtype == "python" else jnp.array([0, 1, 2]).astype(dtype)
    if name in REDUCTIONS and dtype == "python":
        value = [0, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no cast of a value the dtype cannot hold
        ours = function("ours", name)(value)
    try:
        with warnings.catch_warnings():
            # jax.nn's log_softmax casts its maximum's initial value -inf to the integers
            warnings.filterwarnings("ignore", "invalid value encountered in cast")
            theirs = function("jax.nn", name)(value)
    except TypeError:  # jax.nn.sigmoid and silu refuse integers; we promote them
        assert jnp.issubdtype(ours.dtype, jnp.floating)
        return
    assert ours.dtype == theirs.dtype
    assert_jacobians_close(ours, theirs, dtype=jnp.float32)


WEAK_INPUTS = {
    "python float": 0.5,
    "python int": 2,
    "python bool": True,
    "weak array": jnp.asarray(0.5),
    "int times a float": jnp.arange(3) * 2.0,
    "int array": jnp.arange(3),
    "bool array": jnp.array([True, False]),
    "float16": jnp.arange(3.0, dtype=jnp.float16),
}


@pytest.mark.parametrize("name", SMOOTH + KINKED + REDUCTIONS)
@pytest.mark.parametrize("kind", list(WEAK_INPUTS))
def test_dtype_and_weak_type_are_jax_nn_s(name, kind):
    """A Python number or a weakly typed array gives a weakly typed result where jax.nn's
    is (``nn.sigmoid(0.5) * h`` was float32 for a bfloat16 h), and a Python bool the dtype
    jax.nn gives (float32 for tanh in 64-bit mode, not float64)."""
    value = WEAK_INPUTS[kind]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "invalid value encountered in cast")  # as above
        try:
            theirs = function("jax.nn", name)(value)
        except (TypeError, ValueError):  # refused by jax.nn (an int sigmoid, a 0-d softmax)
            return
    ours = function("ours", name)(value)
    assert (ours.dtype, ours.weak_type) == (theirs.dtype, theirs.weak_type)
    h = jnp.ones(jnp.shape(theirs), jnp.bfloat16)
    assert (ours * h).dtype == (theirs * h).dtype


@pytest.mark.parametrize("name", ["elu", "celu", "leaky_relu"])
@pytest.mark.parametrize("x_dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("parameter", [0.3, np.float32(0.3), np.array(0.3), np.float64(0.3)])
def test_a_parameter_promotes_with_x_as_in_jax_nn(name, x_dtype, parameter):
    """A float64 alpha widens a float32 x (``alpha * x``), a Python number does not."""
    x = jnp.array([-1.5, 0.0, 2.0], x_dtype)
    parameter = jnp.asarray(parameter) if isinstance(parameter, np.ndarray) else parameter
    ours, theirs = function("ours", name)(x, parameter), function("jax.nn", name)(x, parameter)
    assert ours.dtype == theirs.dtype
    assert_jacobians_close(ours, theirs, dtype=x_dtype)


def test_logsumexp_promotes_a_and_b_together_as_jax_nn():
    for a, b in [
        (jnp.array([1, 2], jnp.int64), jnp.array([1.0, 2.0], jnp.float32)),
        (jnp.array([1, 2], jnp.int32), jnp.array([1, 2], jnp.int32)),
        (jnp.array([1.0, 2.0], jnp.float32), jnp.array([1.0, 2.0])),
    ]:
        assert nn.logsumexp(a, b=b).dtype == jax.nn.logsumexp(a, b=b).dtype


@pytest.mark.parametrize("name", ["elu", "celu", "leaky_relu", "selu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_mode_at_minus_infinity_is_finite_like_jax_nn(name, dtype):
    """The partial in alpha there is infinite (x, or alpha's -z e^z): it must not enter
    when alpha is not differentiated (an infinite partial times a zero tangent is NaN, and
    the NaN filled the Jacobian's row)."""
    x = jnp.array([-jnp.inf, -1e30, -1.0, 2.0], dtype)
    ours, theirs = (jax.jacfwd(function(side, name))(x) for side in ("ours", "jax.nn"))
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, theirs, rtol=4 * jnp.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("name", SMOOTH + KINKED + REDUCTIONS)
def test_empty_arrays_like_jax_nn(name):
    x = jnp.zeros((0,), jnp.float32)
    ours, theirs = function("ours", name)(x), function("jax.nn", name)(x)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("name", REDUCTIONS)
def test_where_masks_like_jax_nn_with_zero_derivative_at_masked_entries(name):
    x = jnp.array([[1.0, 2.0, 3.0, -1.0], [0.5, -2.0, 4.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    mask = jnp.array([[True, False, True, True], [False, True, True, False], [False] * 4])

    def ours(x, mask=mask):
        return function("ours", name)(x, axis=-1, where=mask)

    def theirs(x, mask=mask):
        return function("jax.nn", name)(x, axis=-1, where=mask)

    np.testing.assert_array_equal(jnp.isinf(ours(x)), jnp.isinf(theirs(x)))
    finite = jnp.isfinite(theirs(x))
    np.testing.assert_allclose(ours(x)[finite], theirs(x)[finite], rtol=1e-13, atol=0)
    for transform in (jax.jacfwd, jax.jacrev):
        J = transform(ours)(x)
        assert bool(jnp.all(jnp.isfinite(J)))
        masked = ~mask
        np.testing.assert_array_equal(jnp.moveaxis(J, (-2, -1), (0, 1))[masked], 0.0)
        if name != "logsumexp":
            reference = transform(lambda x: theirs(x, mask[:2]))(x[:2])
            assert_jacobians_close(J[:2, :, :2], reference)


@pytest.mark.parametrize("name", REDUCTIONS)
def test_where_and_b_broadcast_with_x_as_in_jax_nn(name):
    """A (2, 3) mask or weight over a (3,) x gives a (2, 3) (or (2,)) result, as in jax.nn
    (refused before). The reference broadcasts x itself: jax.nn.softmax and log_softmax of
    an x that broadcasts against ``where`` normalize over the wrong entries (0.5, 0.5 for
    softmax([0, 1, 2]) over [0, 2]), where they are right once x is broadcast."""
    x = jnp.array([0.0, 1.0, 2.0])
    mask = jnp.array([[True, False, True], [True, True, False]])

    def ours(x):
        return function("ours", name)(x, axis=-1, where=mask)

    def theirs(x):
        return function("jax.nn", name)(jnp.broadcast_to(x, mask.shape), axis=-1, where=mask)

    def lse(x, f):
        b = jnp.array([[1.0], [-2.0]]) * jnp.array([1.0, 0.5, 2.0])
        return f(x, b=b, axis=-1, return_sign=True)[0]

    finite = jnp.isfinite(theirs(x))
    np.testing.assert_allclose(ours(x)[finite], theirs(x)[finite], rtol=1e-14)
    assert ours(x).shape == theirs(x).shape
    np.testing.assert_allclose(
        jax.jacrev(ours)(x)[finite], jax.jacrev(theirs)(x)[finite], atol=1e-15
    )
    if name == "logsumexp":
        assert lse(x, nn.logsumexp).shape == lse(x, jax.nn.logsumexp).shape == (2,)
        np.testing.assert_allclose(lse(x, nn.logsumexp), lse(x, jax.nn.logsumexp), rtol=1e-14)
        np.testing.assert_allclose(
            jax.grad(lambda x: lse(x, nn.logsumexp).sum())(x),
            jax.grad(lambda x: lse(x, jax.nn.logsumexp).sum())(x),
            rtol=1e-13,
        )


@pytest.mark.parametrize(
    "a, b",
    [
        ([1e4, 1e4 - 0.5, 1e4 - 1.0], [1.0, 2.0, 0.5]),  # float32: 1e-4 off before
        ([1e20, 0.0], [3.0, 3.0]),  # the weights of the first entry: 3 before, 1
        ([1e20, 1e20], [1.0, 1.0]),  # two tied maxima: 1 and 1 before, 0.5 each
        ([-3e6, -3e6 + 1.0, -3e6 - 2.0], [0.5, -0.25, 2.0]),
    ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_weighted_logsumexp_gradient_keeps_its_digits_at_large_logits(a, b, dtype):
    """The weights are b e^(a - m) / S from the shifted terms, not e^(a - lse) b, whose
    rounded lse carries an error of eps |m| into every weight."""
    a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    expected = jax.grad(lambda a: jax.nn.logsumexp(a, b=b, return_sign=True)[0])(a)
    for f in (
        lambda a: nn.logsumexp(a, b=b),  # every sum here is positive
        lambda a: nn.logsumexp(a, b=b, return_sign=True)[0],
    ):
        np.testing.assert_allclose(jax.grad(f)(a), expected, rtol=4 * jnp.finfo(dtype).eps)


def test_logsumexp_takes_b_keepdims_and_return_sign_like_jax_nn():
    a = jnp.array([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])
    b = jnp.array([[1.0, -2.0, 0.5], [2.0, 1.0, 0.0]])
    for kwargs in (
        {"axis": -1, "b": b, "return_sign": True},
        {"axis": 0, "b": b, "keepdims": True, "return_sign": True},
        {"axis": None, "b": jnp.abs(b)},
        {"axis": -1, "keepdims": True},
    ):
        ours = nn.logsumexp(a, **kwargs)
        theirs = jax.nn.logsumexp(a, **kwargs)
        for o, t in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            assert o.shape == t.shape
            np.testing.assert_allclose(o, t, rtol=1e-14, atol=0)
    assert bool(jnp.isnan(nn.logsumexp(a[0], b=b[0])))  # a negative sum, no sign asked
    # b without zeros: at b_j = 0, d/db_j is exp(a_j) / S here, 0 in jax.nn (which drops
    # the entry before differentiating).
    positive = jnp.abs(b) + 0.25
    for argnums in (0, 1):
        grads = [
            jax.grad(lambda a, b, f=f: jnp.sum(f(a, axis=-1, b=b)), argnums)(a, positive)
            for f in (nn.logsumexp, jax.nn.logsumexp)
        ]
        assert_jacobians_close(*grads)


# ---------------------------------------------------------------- NaN and inf, row by row

NAN_ROWS = {
    # (input row, softmax, log_softmax, logsumexp): NaN in, NaN out, the whole slice.
    "nan": ([1.0, np.nan, 0.0], "nan", "nan", "nan"),
    "+inf": ([1.0, np.inf, 0.0], "nan", "nan", np.inf),
    "one -inf": ([1.0, -np.inf, 0.0], "finite", "one -inf", "finite"),
    "all -inf": ([-np.inf, -np.inf, -np.inf], 0.0, -np.inf, -np.inf),
}


@pytest.mark.parametrize("case", list(NAN_ROWS))
def test_nan_and_inf_semantics_table(case):
    row, expected_softmax, expected_log_softmax, expected_lse = NAN_ROWS[case]
    x = jnp.array(row, jnp.float64)
    values = {"softmax": nn.softmax(x), "log_softmax": nn.log_softmax(x), "lse": nn.logsumexp(x)}
    gradients = {
        "softmax": jax.jacrev(nn.softmax)(x),
        "log_softmax": jax.jacrev(nn.log_softmax)(x),
        "lse": jax.grad(nn.logsumexp)(x),
    }
    for name, expected in (
        ("softmax", expected_softmax),
        ("log_softmax", expected_log_softmax),
        ("lse", expected_lse),
    ):
        value, gradient = values[name], gradients[name]
        if expected == "nan":
            assert bool(jnp.all(jnp.isnan(value))) and bool(jnp.all(jnp.isnan(gradient)))
        elif expected == "finite":
            assert bool(jnp.all(jnp.isfinite(value))) and bool(jnp.all(jnp.isfinite(gradient)))
        elif expected == "one -inf":
            assert float(value[1]) == -np.inf and bool(
                jnp.all(jnp.isfinite(value[jnp.array([0, 2])]))
            )
            assert bool(jnp.all(jnp.isfinite(gradient)))
        else:
            np.testing.assert_array_equal(value, expected)
            if case == "+inf":
                assert bool(jnp.all(jnp.isnan(gradient)))  # a diverged model is not silent
            else:
                np.testing.assert_array_equal(gradient, 0.0)
    if case == "one -inf":
        assert float(values["softmax"][1]) == 0.0
        np.testing.assert_array_equal(gradients["softmax"][1], 0.0)
        np.testing.assert_array_equal(gradients["softmax"][:, 1], 0.0)


@pytest.mark.parametrize("name", SMOOTH + KINKED)
def test_nan_in_nan_out_elementwise(name):
    f = function("ours", name)
    x = jnp.array([np.nan, 1.0])
    assert bool(jnp.isnan(f(x)[0])) and not bool(jnp.isnan(f(x)[1]))
    g = jax.vmap(jax.grad(f))(x)
    assert bool(jnp.isnan(g[0]))


# ----------------------------------------------------------------------- low precision


@pytest.mark.parametrize(
    ("dtype", "big"), [("bfloat16", 256.0), ("float16", 2048.0), ("float32", 1e8)]
)
def test_regression_softmax_of_equal_large_logits_is_one_half(dtype, big):
    x = jnp.array([big, big], dtype)
    s = nn.softmax(x)
    assert s.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(s, np.float64), [0.5, 0.5])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_softmax_rows_sum_to_one_within_a_few_eps(dtype):
    x = (10 * jax.random.normal(key(3), (64, 33), jnp.float32)).astype(dtype)
    s = np.asarray(nn.softmax(x, axis=-1), np.float64)
    eps = float(jnp.finfo(dtype).eps)
    assert np.max(np.abs(s.sum(axis=-1) - 1)) <= 4 * eps
    reference = np.asarray(jax.nn.softmax(x.astype(jnp.float64), axis=-1))
    assert np.max(np.abs(s - reference)) <= eps  # rounded once from float32


def test_float16_log_softmax_over_many_elements_has_no_nan_gradient():
    """jax #40409: the float16 sum of 2^16 + 1 exponentials overflows."""
    x = jnp.zeros(2**16 + 1, jnp.float16)
    gradient = jax.grad(lambda x: nn.log_softmax(x)[0])(x)
    assert gradient.dtype == jnp.float16
    assert bool(jnp.all(jnp.isfinite(gradient)))
    assert float(nn.log_softmax(x)[0]) == pytest.approx(-np.log(2**16 + 1), rel=1e-3, abs=0)


def test_regression_log_softmax_keeps_the_tiny_gap():
    value = float(nn.log_softmax(jnp.array([40.0, 0.0, -40.0], jnp.float64))[0])
    assert value == pytest.approx(-np.exp(-40.0) - np.exp(-80.0), rel=1e-15, abs=0)


# ------------------------------------------------------------ a model switched library


def test_switching_a_model_from_jax_nn_to_matcalc_jax_nn_changes_nothing_visible():
    params = mlp.init(key(4), (8, 16, 16, 4), jnp.float32)
    x = jax.random.normal(key(5), (32, 8), jnp.float32)
    labels = jax.nn.one_hot(jnp.arange(32) % 4, 4, dtype=jnp.float32)
    mask = jnp.arange(4) < 3

    def model(library):
        def loss(params):
            a = x
            for i, (W, b) in enumerate(params[:-1]):
                act = (library.silu, library.gelu)[i % 2]
                a = act(a @ W.T + b)
            W, b = params[-1]
            logits = a @ W.T + b
            logp = library.log_softmax(logits, axis=-1, where=mask)
            return -jnp.mean(jnp.sum(jnp.where(mask, labels * logp, jnp.float32(0)), axis=-1))

        return loss

    ours, theirs = model(nn), model(jax.nn)
    assert_jacobians_close(ours(params), theirs(params))
    grads_ours, grads_theirs = jax.grad(ours)(params), jax.grad(theirs)(params)
    for g, t in zip(jax.tree.leaves(grads_ours), jax.tree.leaves(grads_theirs), strict=True):
        assert_jacobians_close(g, t)
