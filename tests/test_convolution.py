"""Convolutions and windowed sums through matcalc_jax.jacobian: every dimension-number
layout, stride, padding, dilation and feature / batch group JAX supports, in the input and
in the kernel, against jax.jacfwd / jvp / vjp in float64; the operator stores the kernel."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax import lax

import matcalc_jax as mj
from matcalc_jax import operators
from matcalc_jax.operators.convolution import Convolution

from .helpers import assert_jacobians_close, assert_transform_matches_autodiff, key

CONFIGS = {
    "1-D, NWC, stride 2, SAME": dict(
        lhs=(2, 9, 3), rhs=(3, 3, 4), strides=(2,), padding="SAME", numbers=("NWC", "WIO", "NWC")
    ),
    "2-D, NCHW, VALID": dict(lhs=(1, 2, 6, 5), rhs=(3, 2, 3, 2), strides=(1, 1), padding="VALID"),
    "2-D, dilated kernel and input": dict(
        lhs=(1, 2, 7, 6), rhs=(2, 2, 2, 3), strides=(1, 2), padding=((1, 2), (0, 1)),
        lhs_dilation=(2, 1), rhs_dilation=(1, 2),
    ),
    "feature groups (depthwise)": dict(
        lhs=(2, 4, 8), rhs=(4, 1, 3), strides=(1,), padding="SAME", feature_group_count=4
    ),
    "batch groups": dict(lhs=(4, 2, 7), rhs=(4, 2, 3), strides=(2,), padding="VALID",
                         batch_group_count=2),
    "NHWC with HWIO, negative padding": dict(
        lhs=(1, 7, 6, 2), rhs=(3, 2, 2, 3), strides=(2, 1), padding=((-1, 1), (1, 0)),
        numbers=("NHWC", "HWIO", "NHWC"),
    ),
}  # fmt: skip


def _conv(config):
    numbers = config.get("numbers")
    options = {k: config[k] for k in ("lhs_dilation", "rhs_dilation", "feature_group_count",
                                      "batch_group_count") if k in config}  # fmt: skip
    return lambda lhs, rhs: lax.conv_general_dilated(
        lhs, rhs, config["strides"], config["padding"], dimension_numbers=numbers, **options
    )


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("side", ["input", "kernel"])
def test_convolution_against_autodiff(name, side):
    config = CONFIGS[name]
    conv = _conv(config)
    lhs = jax.random.normal(key(1), config["lhs"], jnp.float64)
    rhs = jax.random.normal(key(2), config["rhs"], jnp.float64)
    if side == "input":
        J = assert_transform_matches_autodiff(lambda x: jnp.tanh(conv(x, rhs)), lhs)
    else:
        J = assert_transform_matches_autodiff(lambda w: conv(lhs, w) ** 2, rhs)
    assert any(isinstance(part, Convolution) for part in _parts(J)), str(J)


def _parts(op):
    yield op
    for child in op.children():
        yield from _parts(child)


def test_a_conv_layer_stores_its_kernel_not_the_matrix():
    """A 1-D layer, 32 positions by 8 channels, kernel 5: the operator stores the kernel
    (320 entries), not the 256 x 256 matrix."""
    x = jax.random.normal(key(3), (1, 32, 8), jnp.float64)
    kernel = jax.random.normal(key(4), (5, 8, 8), jnp.float64)

    def f(x):
        return lax.conv_general_dilated(
            x, kernel, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")
        )

    J = mj.jacobian(f)(x)
    assert operators.storage(J) == kernel.size
    assert_jacobians_close(J.to_dense(), jax.jacfwd(f)(x))


def test_a_flax_conv_net_with_average_and_max_pooling():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), strides=(1, 1))(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2)) + nn.max_pool(x, (2, 2), strides=(2, 2))
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    x = jax.random.normal(key(5), (2, 6, 6, 2), jnp.float64)
    model = Net()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(key(6), x))
    assert_transform_matches_autodiff(lambda x: model.apply(params, x), x)
    tree = mj.jacobian(model.apply)(params, x)
    expected = jax.jacfwd(model.apply)(params, x)
    assert_jacobians_close(
        tree["params"]["Conv_0"]["kernel"].to_dense(), expected["params"]["Conv_0"]["kernel"]
    )


@pytest.mark.parametrize(
    ("window", "strides", "padding"),
    [((2,), (2,), ((0, 0),)), ((3,), (1,), ((1, 1),)), ((2,), (3,), ((0, 1),))],
)
def test_window_sums_against_autodiff(window, strides, padding):
    f = lambda x: lax.reduce_window(x, 0.0, lax.add, window, strides, padding)  # noqa: E731
    assert_transform_matches_autodiff(f, jnp.linspace(-1.0, 1.0, 8))


@pytest.mark.parametrize(
    ("reduce", "init", "strides", "padding"),
    [
        (lax.max, -jnp.inf, (2, 2), "VALID"),
        (lax.min, jnp.inf, (2, 2), "VALID"),
        (lax.max, -jnp.inf, (1, 1), "SAME"),  # overlapping windows, padding
    ],
)
def test_the_hessian_through_a_pooling_s_gradient(reduce, init, strides, padding):
    """jax.grad of a max or min pooling is select_and_scatter_add: the pooling's choice
    transposed, linear in the cotangent, derivative 0 in the pooled input."""
    f = lambda x: jnp.sum(  # noqa: E731
        jnp.tanh(lax.reduce_window(x, init, reduce, (2, 2), strides, padding)) ** 3
    )
    x = jax.random.normal(key(7), (4, 6), jnp.float64)
    assert_jacobians_close(mj.hessian(f)(x).to_dense(), jax.hessian(f)(x))
    ties = jnp.array([[1.0, 1.0, 0.0, 2.0], [1.0, 0.0, 2.0, 2.0]])  # the first entry, as JAX
    assert_jacobians_close(mj.hessian(f)(ties).to_dense(), jax.hessian(f)(ties))


def test_the_hessian_of_a_flax_max_pooling_network_in_its_input():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jnp.tanh(nn.Conv(3, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            return nn.Dense(1)(x.reshape(-1))[0]

    x = jax.random.normal(key(8), (1, 4, 4, 1), jnp.float64)
    model = Net()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(key(9), x))
    f = lambda x: model.apply(params, x)  # noqa: E731
    assert_jacobians_close(mj.hessian(f)(x).to_dense(), jax.hessian(f)(x))
