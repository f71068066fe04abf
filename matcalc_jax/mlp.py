"""A small MLP whose gradient is computed by the seed's chain and product rules.

The network: a_0 = x, z_l = a_{l-1} W_l^T + b_l, a_l = tanh(z_l) for the hidden layers, and
softmax cross-entropy on the last z_L. ``backprop`` is the backward recursion a textbook
gives, written for a batch of N examples (rows):

    delta_L = (softmax(z_L) - t) / N                     (the gradient of the mean loss in z_L)
    dL/dW_l = delta_l^T a_{l-1},   dL/db_l = sum over the batch of delta_l
    delta_l = tanh'(z_l) * (delta_{l+1} W_{l+1})         (chain rule: diag(f'(z)), then W^T)

Each step is a seed rule: ``d(Wa)/da = W^T`` (``linear``), ``diag(f'(z))`` (``elementwise``,
applied as a product), the vector chain rule, and ``softmax(z) - t`` for softmax
cross-entropy. It never calls autodiff; the tests check it against ``jax.grad(loss)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import Array

from matcalc_jax import nn
from matcalc_jax.core import validate

Params = list[tuple[Array, Array]]


def init(key: Array, sizes: Sequence[int], dtype: jnp.dtype = jnp.float32) -> Params:
    """Weights W_l (sizes[l], sizes[l-1]) with N(0, 1/fan_in) entries, zero biases."""
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"mlp.init: sizes={tuple(sizes)}; expected two or more positive sizes")
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (
            jax.random.normal(k, (n_out, n_in), dtype) / jnp.sqrt(jnp.asarray(n_in, dtype)),
            jnp.zeros(n_out, dtype),
        )
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def _check(params: Params, x: Array, labels: Array) -> tuple[Array, Array]:
    x = validate.floating("mlp", "x", x)
    validate.rank("mlp", "x", x, 2, "a batch of inputs (N, d)")
    labels = validate.floating("mlp", "labels", labels)
    n_out = params[-1][0].shape[0]
    validate.shape("mlp", "labels", labels, (x.shape[0], n_out), "one-hot (N, classes)")
    return x, labels


def _affine(a: Array, W: Array, b: Array) -> Array:
    """a W^T + b for a batch a (N, m), W (n, m): contracted in place, no W^T is formed."""
    return jnp.einsum("nm,km->nk", a, W) + b


def logits(params: Params, x: Array, *, activation=nn.tanh) -> Array:
    """The last pre-activation z_L for a batch x (N, d)."""
    a = x
    for W, b in params[:-1]:
        a = activation(_affine(a, W, b))
    W, b = params[-1]
    return _affine(a, W, b)


def loss(params: Params, x: Array, labels: Array, *, activation=nn.tanh) -> Array:
    """Mean softmax cross-entropy -sum_k t_k log softmax(z_L)_k over the batch."""
    x, labels = _check(params, x, labels)
    z = logits(params, x, activation=activation)
    return -jnp.mean(jnp.sum(labels * nn.log_softmax(z, axis=-1), axis=-1))


def backprop(params: Params, x: Array, labels: Array) -> Params:
    """The gradient of ``loss`` (tanh hidden layers) by the textbook backward recursion."""
    x, labels = _check(params, x, labels)
    activations, pre_activations = [x], []
    for W, b in params[:-1]:
        z = _affine(activations[-1], W, b)
        pre_activations.append(z)
        activations.append(jnp.tanh(z))
    W, b = params[-1]
    z_last = _affine(activations[-1], W, b)
    delta = (nn.softmax(z_last, axis=-1) - labels) / x.shape[0]
    gradients = []
    for layer in range(len(params) - 1, -1, -1):
        a_previous = activations[layer]
        # dL/dW_l = delta_l^T a_{l-1}, contracted over the batch without forming delta^T.
        gradients.append((jnp.einsum("nk,nm->km", delta, a_previous), jnp.sum(delta, axis=0)))
        if layer > 0:
            W = params[layer][0]
            delta = nn.tanh_prime(pre_activations[layer - 1]) * (delta @ W)
    return gradients[::-1]
