"""The closed-form MLP backprop equals jax.grad of the same loss."""

import jax
import jax.numpy as jnp
import pytest

from matcalc_jax import mlp

from .helpers import assert_jacobians_close, key


def data(dtype, n=16, d=5, classes=3, seed=0):
    kx, ky = jax.random.split(key(seed))
    x = jax.random.normal(kx, (n, d), dtype)
    labels = jax.nn.one_hot(jax.random.randint(ky, (n,), 0, classes), classes, dtype=dtype)
    return x, labels


@pytest.mark.parametrize("sizes", [(5, 3), (5, 8, 3), (5, 8, 6, 3)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_backprop_equals_jax_grad(sizes, dtype):
    params = mlp.init(key(1), sizes, dtype)
    params = [(W, b + 0.1) for W, b in params]  # non-zero biases, so db is tested
    x, labels = data(dtype)
    ours = jax.jit(mlp.backprop)(params, x, labels)
    expected = jax.jit(jax.grad(mlp.loss))(params, x, labels)
    assert len(ours) == len(expected)
    for (dW, db), (eW, eb) in zip(ours, expected, strict=True):
        assert dW.dtype == dtype
        assert_jacobians_close(dW, eW)
        assert_jacobians_close(db, eb)


def test_backprop_matches_jax_nn_gradient_of_the_same_network():
    params = mlp.init(key(2), (5, 7, 3), jnp.float64)
    x, labels = data(jnp.float64)

    def jax_nn_loss(params):
        z = mlp.logits(params, x, activation=jnp.tanh)
        return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(z), axis=-1))

    for (dW, db), (eW, eb) in zip(
        mlp.backprop(params, x, labels), jax.grad(jax_nn_loss)(params), strict=True
    ):
        assert_jacobians_close(dW, eW)
        assert_jacobians_close(db, eb)


def test_bad_shapes_and_sizes_raise():
    params = mlp.init(key(3), (5, 3))
    x, labels = data(jnp.float32)
    with pytest.raises(ValueError, match=r"'labels'.*\(16, 4\).*\(16, 3\)"):
        mlp.backprop(params, x, jnp.ones((16, 4)))
    with pytest.raises(ValueError, match=r"'x'.*rank 2"):
        mlp.loss(params, x[0], labels)
    with pytest.raises(ValueError, match="sizes"):
        mlp.init(key(0), (5,))
