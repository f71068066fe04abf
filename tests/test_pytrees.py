"""matcalc_jax.jacobian on pytrees, as jax.jacfwd takes them: argnums an int or a tuple,
arguments and outputs pytrees (a flax params dict, an equinox module's arrays), has_aux,
and the whole as one operator on the flattened vectors (ravel_pytree order)."""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import matcalc_jax as mj
from matcalc_jax.operators import BlockMatrix, is_operator

from .helpers import assert_jacobians_close, key

X = jnp.linspace(-1.0, 1.0, 4)
MODEL = nn.Sequential([nn.Dense(5), nn.tanh, nn.Dense(3)])
PARAMS = jax.tree.map(lambda a: a.astype(jnp.float64), MODEL.init(key(0), X))


def apply(params, x):
    return MODEL.apply(params, x)


def assert_trees_close(operators, arrays):
    """Same structure, and every operator's dense form within tolerance of its array."""
    flat_ops, tree = jax.tree.flatten(operators, is_leaf=is_operator)
    flat_arrays, other = jax.tree.flatten(arrays)
    assert tree == other, (tree, other)
    for op, array in zip(flat_ops, flat_arrays, strict=True):
        assert is_operator(op), type(op)
        assert_jacobians_close(op.to_dense(), array)


def test_a_flax_params_dict():
    J = mj.jacobian(apply)(PARAMS, X)
    assert_trees_close(J, jax.jacfwd(apply)(PARAMS, X))
    assert isinstance(J["params"]["layers_0"]["kernel"], mj.JacobianOperator)


def test_tuple_argnums_and_a_pytree_output():
    def f(params, x):
        y = apply(params, x)
        return y, {"energy": jnp.sum(y**2), "first": y[0]}

    assert_trees_close(
        mj.jacobian(f, argnums=(0, 1))(PARAMS, X), jax.jacfwd(f, argnums=(0, 1))(PARAMS, X)
    )
    assert_trees_close(mj.jacobian(f, argnums=1)(PARAMS, X), jax.jacfwd(f, argnums=1)(PARAMS, X))


def test_has_aux_as_in_jax():
    def f(x):
        return jnp.sin(x), {"doubled": 2 * x, "count": 3}

    J, aux = mj.jacobian(f, has_aux=True)(X)
    _, expected_aux = jax.jacfwd(f, has_aux=True)(X)
    assert isinstance(J, mj.Diagonal)
    np.testing.assert_array_equal(aux["doubled"], expected_aux["doubled"])
    assert int(aux["count"]) == 3


def test_an_equinox_modules_arrays():
    mlp = eqx.nn.MLP(4, 2, 6, 1, activation=jnp.tanh, key=key(1))
    mlp = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, mlp)
    arrays, static = eqx.partition(mlp, eqx.is_array)

    def f(arrays, x):
        return eqx.combine(arrays, static)(x)

    assert_trees_close(mj.jacobian(f)(arrays, X), jax.jacfwd(f)(arrays, X))


def test_the_whole_on_flattened_vectors():
    def f(params, x):
        y = apply(params, x)
        return {"y": y, "norm": jnp.sum(y**2)}

    J = mj.jacobian(f, argnums=(0, 1), ravel=True)(PARAMS, X)
    assert isinstance(J, BlockMatrix)
    flat, unravel = ravel_pytree((PARAMS, X))
    dense = jax.jacfwd(lambda v: ravel_pytree(f(*unravel(v)))[0])(flat)
    assert_jacobians_close(J.to_dense(), dense)
    u = jnp.cos(jnp.arange(J.out_shape[0]) + 0.5)
    v = jnp.sin(jnp.arange(J.in_shape[0]) + 0.5)
    assert_jacobians_close(J.vm(u), u @ dense)
    assert_jacobians_close(J.mv(v), dense @ v)
    assert_jacobians_close(J.T.mv(u), u @ dense)


def test_a_zero_size_leaf_on_flattened_vectors():
    """An empty output leaf beside a full one, ravel=True: to_dense raised a
    ZeroDivisionError (its block's rows were reshaped to (0, -1)); mv and vm were right."""
    x = jnp.arange(1.0, 7.0)
    for f, args in (
        (lambda a: (a[:0] * 2, a**2), (x,)),
        (lambda a, b: a * 2 + jnp.sum(b), (x, jnp.zeros(0))),
    ):
        J = mj.jacobian(f, argnums=tuple(range(len(args))), ravel=True)(*args)
        flat, unravel = ravel_pytree(args)
        dense = jax.jacfwd(lambda v, f=f, u=unravel: ravel_pytree(f(*u(v)))[0])(flat)
        assert_jacobians_close(J.to_dense(), dense)
        assert_jacobians_close(J.mv(jnp.ones(6)), dense @ jnp.ones(6))


def test_a_square_pytree_map_solves_and_has_a_logdet():
    def flow(tree):
        return {"a": tree["a"] + 0.5 * jnp.tanh(tree["b"].sum()), "b": 2.0 * tree["b"]}

    tree = {"a": jnp.array([0.3, -0.2]), "b": jnp.array([0.1, 0.4, -0.5])}
    J = mj.jacobian(flow, ravel=True)(tree)
    flat, unravel = ravel_pytree(tree)
    dense = jax.jacfwd(lambda v: ravel_pytree(flow(unravel(v)))[0])(flat)
    assert J.logdet() == pytest.approx(np.linalg.slogdet(dense)[1], rel=1e-12, abs=1e-12)
    b = jnp.arange(1.0, 6.0)
    assert_jacobians_close(J.solve(b), jnp.linalg.solve(dense, b))
    assert_jacobians_close(J.diagonal(), jnp.diagonal(dense))


def test_pytree_jacobians_pass_through_jit():
    J = jax.jit(mj.jacobian(apply))(PARAMS, X)
    assert_trees_close(J, jax.jacfwd(apply)(PARAMS, X))


def test_an_integer_leaf_is_named():
    with pytest.raises(TypeError, match=r"argument 0\['step'\] has dtype int"):
        mj.jacobian(lambda p: p["w"] * 2)({"w": X, "step": jnp.int32(3)})
