"""matcalc_jax.jacobian on programs written the way public JAX code writes them: flax
(linen) and equinox modules, optax losses and transformations, signal processing, at
ordinary points and at their edges, against jax.jacfwd / jvp / vjp in float64.
"""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import matcalc_jax as mj

from .helpers import assert_transform_matches_autodiff, key

#: Host arrays, and parameters built by the test that uses them: every test process imports
#: this file (one runs it), and nothing here compiles at import.
X = np.linspace(-1.0, 1.2, 8)
LABEL = np.eye(8)[2]


class FlaxMLP(nn.Module):
    """Dense, LayerNorm, GELU, Dense, log-softmax: a classifier head."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(16)(x)
        x = nn.LayerNorm()(x)
        x = nn.gelu(x)
        return nn.log_softmax(nn.Dense(4)(x))


def _flax(module, x):
    """The module's ``apply`` at parameters initialized once, as a training script holds
    them (initialized inside each compared program, float32 parameters could round
    differently from one compiled program to the next)."""
    params = module.init(key(1), x)
    return lambda x: module.apply(params, x)


def _attention():
    attention = _flax(nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8), X.reshape(2, 4))
    return lambda x: attention(x.reshape(2, 4)).ravel()


#: Modules with parameters: each entry builds the program (its parameters drawn eagerly).
MODULES = {
    "flax MLP with LayerNorm": lambda: _flax(FlaxMLP(), X),
    "flax multi-head attention": _attention,
    "equinox MLP": lambda: eqx.nn.MLP(8, 3, 16, 2, activation=jax.nn.softplus, key=key(3)),
    "equinox LayerNorm": lambda: eqx.nn.LayerNorm(8),
    "equinox Dropout at inference": lambda: eqx.nn.Dropout(0.5, inference=True),
}

PROGRAMS = {
    "optax softmax cross-entropy": lambda x: optax.softmax_cross_entropy(x, LABEL),
    "optax Huber": lambda x: optax.huber_loss(x, jnp.zeros(8), delta=0.5),
    "optax sigmoid BCE": lambda x: optax.sigmoid_binary_cross_entropy(x, (x > 0) * 1.0),
    "optax log-cosh": optax.log_cosh,
    "optax KL": lambda x: optax.kl_divergence(jax.nn.log_softmax(x), jax.nn.softmax(x[::-1])),
    "optax clip by global norm": lambda x: optax.clip_by_global_norm(1.0).update(
        x, optax.EmptyState()
    )[0],
    "optax safe norm": lambda x: optax.safe_norm(x, 1e-3) * x,
    "short-time spectrum": lambda x: jnp.abs(jnp.fft.rfft(x.reshape(2, 4) * jnp.hanning(4))),
}


@pytest.mark.parametrize("name", [*MODULES, *PROGRAMS])
def test_user_program_against_autodiff(name):
    program = MODULES[name]() if name in MODULES else PROGRAMS[name]
    assert_transform_matches_autodiff(program, X)


EDGES = {
    # at delta exactly, on both sides, and at 0
    "optax Huber at its kink": (lambda x: optax.huber_loss(x, jnp.zeros(6), delta=0.5),
                                np.array([0.5, -0.5, 0.0, 0.49, 2.0, -0.0])),
    # saturated logits: the loss's tails
    "optax sigmoid BCE saturated": (lambda x: optax.sigmoid_binary_cross_entropy(x, jnp.ones(4)),
                                    np.array([40.0, -40.0, 0.0, 700.0])),
    # the norm of a zero vector: safe_norm's where picks the floor
    "optax safe norm at zero": (lambda x: optax.safe_norm(x, 1e-3) * jnp.ones(3), np.zeros(3)),
    # a clip that does not act (norm below the bound) and one that does
    "optax clip below the bound": (lambda x: optax.clip_by_global_norm(10.0).update(
        x, optax.EmptyState())[0], X),
    # relu at exactly 0 inside an equinox MLP's hidden layer input
    "jax.nn.relu at zero": (jax.nn.relu, np.array([0.0, -0.0, 1.0, -1.0])),
}  # fmt: skip


@pytest.mark.parametrize("name", list(EDGES))
def test_user_program_at_its_edges(name):
    f, x = EDGES[name]
    assert_transform_matches_autodiff(f, x)


_STACK = np.sin(np.arange(24.0) * 0.7).reshape(2, 4, 3) + np.eye(4, 3)
BATCHED_LINEAR_ALGEBRA = {
    # jax.vmap of a per-example factorization, or a stack of matrices: every factor of each
    "vmap(norm(M, 2))": (jax.vmap(lambda m: jnp.linalg.norm(m, ord=2)), _STACK),
    "svd of a stack of tall matrices": (
        lambda a: jnp.concatenate([f.ravel() for f in jnp.linalg.svd(a, full_matrices=False)]),
        _STACK,
    ),
    "svd of a stack of wide matrices": (
        lambda a: jnp.concatenate(
            [f.ravel() for f in jnp.linalg.svd(jnp.swapaxes(a, 1, 2), full_matrices=False)]
        ),
        _STACK,
    ),
    "vmap(lstsq)": (jax.vmap(lambda a: jnp.linalg.lstsq(a, jnp.arange(4.0))[0]), _STACK),
    "qr of a stack": (lambda a: jnp.concatenate([f.ravel() for f in jnp.linalg.qr(a)]), _STACK),
    "vmap(lu_factor)": (
        jax.vmap(lambda a: jax.scipy.linalg.lu_factor(a)[0]),
        _STACK[:, :3, :] + np.array([[[0.0, 0, 0], [0, 0, 0], [2, 0, 0]]]),  # rows pivot
    ),
    "vmap(lu_solve(lu_factor))": (
        jax.vmap(lambda a: jax.scipy.linalg.lu_solve(jax.scipy.linalg.lu_factor(a), jnp.ones(3))),
        _STACK[:, :3, :],
    ),
}


@pytest.mark.parametrize("name", list(BATCHED_LINEAR_ALGEBRA))
def test_batched_factorizations_against_autodiff(name):
    """svd, qr and lu of a stack of matrices (jax.vmap of a per-example norm, lstsq,
    lu_factor) were refused ("other than a thin SVD of one matrix"); each matrix of the
    stack is now differentiated by the one-matrix rule, eagerly and under jit."""
    f, a = BATCHED_LINEAR_ALGEBRA[name]
    a = jnp.asarray(a)
    assert_transform_matches_autodiff(f, a)
    np.testing.assert_allclose(
        mj.jacobian(f)(a).to_dense(), jax.jacrev(f)(a), rtol=1e-10, atol=1e-12
    )
