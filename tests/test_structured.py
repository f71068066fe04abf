"""Structured Jacobians: every rule's structured form equals its dense closed form and
autodiff; the operator algebra keeps structure; pytrees pass through jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj

from .helpers import FLOAT_DTYPES, assert_jacobians_close, key

RULES = mj.rules()
IDS = [r.id for r in RULES]

TIGHTEST = {
    "product_inner": mj.Dense,  # a gradient: dense is its only form
    "product_bilinear": mj.Dense,
    "product_scalar_vector": mj.Sum,  # y dz/dx + z (dy/dx)^T: scaled composition + rank one
    "chain_vector": mj.Composition,  # V diag(f') W, never multiplied out
    "chain_matrix_trace": mj.Dense,  # gradient A^T (dz/dY) B^T from the Kronecker form
    "chain_matrix_vector": mj.Dense,
    "chain_scalar": mj.Dense,
    "identity": mj.Identity,
    "linear": mj.Dense,
    "linear_transposed": mj.Dense,
    "elementwise": mj.Diagonal,
    "logistic_scalar": mj.Diagonal,
    "logistic_vector": mj.Diagonal,
    "sum": mj.Sum,
    "power": mj.Diagonal,
    "exp": mj.Diagonal,
    "log": mj.Diagonal,
    "logistic_general": mj.Diagonal,
    "softmax": mj.DiagonalPlusLowRank,
    "affine_matrix": mj.Kronecker,  # A (x) B^T
    "linear_layer": mj.Kronecker,  # I (x) x^T
    "linear_layer_input": mj.Dense,
    "linear_layer_bias": mj.Identity,
    "trace_linear": mj.Dense,  # gradients of scalar maps: dense is their only form
    "trace_quadratic": mj.Dense,
    "frobenius": mj.Dense,
    "quadratic_form": mj.Dense,
    "least_squares": mj.Dense,
    "inverse": mj.Kronecker,  # -X^-1 (x) X^-T
    "det": mj.Dense,
    "logdet": mj.Dense,
    "solve": mj.Kronecker,  # -A^-1 (x) y^T
    "solve_rhs": mj.Dense,
    "logistic_regression": mj.Dense,
    "softmax_cross_entropy": mj.Dense,
}


@pytest.mark.parametrize("rule_id", sorted(TIGHTEST))
def test_these_rules_return_their_tightest_type(rule_id):
    r = mj.rule(rule_id)
    assert type(r.structured(*r.example(key(0)))) is TIGHTEST[rule_id]


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_every_rule_returns_an_operator(r):
    assert isinstance(r.structured(*r.example(key(0))), mj.JacobianOperator)


@pytest.mark.parametrize("r", RULES, ids=IDS)
@pytest.mark.parametrize("layout", mj.LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_structured_to_dense_equals_the_dense_closed_form_and_jacfwd(r, layout, dtype):
    args = r.example(key(1), jnp.dtype(dtype), size=4)

    @jax.jit
    def compared(*args):
        op = r.structured(*args, layout=layout)
        dense = op.to_dense()
        return op, dense, r.jacobian(*args, layout=layout), r.jacfwd(*args, layout=layout)

    op, dense, closed, autodiff = compared(*args)
    assert op.layout == layout
    assert dense.shape == op.shape
    assert dense.dtype == jnp.dtype(dtype)
    assert_jacobians_close(dense, closed)
    assert_jacobians_close(dense, autodiff)


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_mv_and_vm_equal_jvp_and_vjp_under_jit_and_vmap(r):
    args = r.example(key(2), jnp.float64, size=3)
    x = jnp.asarray(args[r.wrt])
    out = r.fn(*args)
    tangents = jax.random.normal(key(3), (5, *x.shape), jnp.float64)
    cotangents = jax.random.normal(key(4), (5, *out.shape), jnp.float64)

    def of_x(x):
        return r.fn(*args[: r.wrt], x, *args[r.wrt + 1 :])

    op = jax.jit(r.structured)(*args)
    mv = jax.jit(jax.vmap(op.mv))(tangents)
    vm = jax.jit(jax.vmap(op.vm))(cotangents)

    @jax.jit
    def autodiff(x, tangents, cotangents):
        jvp = jax.vmap(lambda t: jax.jvp(of_x, (x,), (t,))[1])(tangents)
        _, pullback = jax.vjp(of_x, x)
        return jvp, jax.vmap(lambda u: pullback(u)[0])(cotangents)

    jvp, vjp = autodiff(x, tangents, cotangents)
    assert_jacobians_close(mv, jvp)
    assert_jacobians_close(vm, vjp)
    # The adjoint identity <u, J v> = <J^T u, v>, for each pair.
    forward = jnp.sum(cotangents * mv, axis=tuple(range(1, mv.ndim)))
    backward = jnp.sum(vm * tangents, axis=tuple(range(1, vm.ndim)))
    assert_jacobians_close(forward, backward)


def test_structured_forms_vmap_over_the_rule_arguments():
    xs = jax.random.normal(key(5), (6, 4), jnp.float64)
    ops = jax.vmap(mj.rule("softmax").structured)(xs)  # a batch of operators (a pytree)
    dense = jax.vmap(lambda op: op.to_dense())(ops)
    np.testing.assert_allclose(dense, jax.vmap(jax.jacfwd(jax.nn.softmax))(xs), atol=1e-12)


def test_operators_are_pytrees():
    op = mj.Diagonal(jnp.arange(3.0))
    doubled = jax.tree_util.tree_map(lambda leaf: 2 * leaf, op)
    assert type(doubled) is mj.Diagonal
    np.testing.assert_array_equal(doubled.values, [0.0, 2.0, 4.0])
    composite = mj.Scaled(jnp.float32(2.0), mj.Kronecker(jnp.eye(2), jnp.ones((3, 4))))
    leaves, treedef = jax.tree_util.tree_flatten(composite)
    assert len(leaves) == 3
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    np.testing.assert_array_equal(rebuilt.to_dense(), composite.to_dense())


def test_diagonal_of_square_operators_and_refusal_of_others():
    d = mj.DiagonalPlusLowRank(jnp.arange(3.0), jnp.ones((3, 1)), jnp.arange(3.0)[:, None])
    np.testing.assert_array_equal(d.diagonal(), jnp.diagonal(d.to_dense()))
    k = mj.Kronecker(jnp.arange(4.0).reshape(2, 2), jnp.arange(9.0).reshape(3, 3))
    np.testing.assert_array_equal(
        k.diagonal(), jnp.diagonal(k.to_dense().reshape(6, 6)).reshape(2, 3)
    )
    b = mj.BlockDiagonal(jnp.arange(18.0).reshape(2, 3, 3))
    np.testing.assert_array_equal(
        b.diagonal(), jnp.diagonal(b.to_dense().reshape(6, 6)).reshape(2, 3)
    )
    s = mj.Dense(jnp.arange(4.0).reshape(2, 2), 1) + mj.Identity((2,), "float32")
    np.testing.assert_array_equal(s.diagonal(), [1.0, 4.0])
    with pytest.raises(ValueError, match=r"diagonal\(\).*square.*\(2,\).*\(3,\)"):
        mj.Dense(jnp.ones((2, 3)), 1).diagonal()
    with pytest.raises(ValueError, match="square"):
        mj.LowRank(jnp.ones((2, 1)), jnp.ones((3, 1))).diagonal()


def test_composition_keeps_structure_where_the_algebra_allows():
    d1, d2 = mj.Diagonal(jnp.array([1.0, 2.0])), mj.Diagonal(jnp.array([3.0, 4.0]))
    both = d1 @ d2
    assert type(both) is mj.Diagonal
    np.testing.assert_array_equal(both.values, [3.0, 8.0])

    A1, B1 = jnp.arange(6.0).reshape(3, 2), jnp.arange(8.0).reshape(4, 2)
    A2, B2 = jnp.arange(4.0).reshape(2, 2), jnp.arange(12.0).reshape(3, 4)
    outer, inner = mj.Kronecker(A1, B1), mj.Kronecker(A2, B2)  # X (2,3) -> (2,4) -> (3,2)
    kron = outer @ inner
    assert type(kron) is mj.Kronecker
    expected = jnp.tensordot(outer.to_dense(), inner.to_dense(), axes=2)
    np.testing.assert_allclose(kron.to_dense(), expected)

    b1 = mj.BlockDiagonal(jax.random.normal(key(6), (3, 2, 4)))
    b2 = mj.BlockDiagonal(jax.random.normal(key(7), (3, 4, 5)))
    blocks = b1 @ b2
    assert type(blocks) is mj.BlockDiagonal
    np.testing.assert_allclose(
        blocks.to_dense(), jnp.tensordot(b1.to_dense(), b2.to_dense(), axes=2), rtol=1e-12
    )

    M = mj.Dense(jnp.arange(6.0).reshape(2, 3), 1)
    assert mj.Identity((2,), "float64") @ M is M
    assert M @ mj.Identity((3,), "float64") is M
    scaled = mj.Scaled(jnp.asarray(2.0), d1) @ M
    assert type(scaled) is mj.Scaled
    lazy = d1 @ M
    assert type(lazy) is mj.Composition
    np.testing.assert_array_equal(lazy.to_dense(), jnp.diag(d1.values) @ M.to_dense())
    np.testing.assert_array_equal(scaled.to_dense(), 2 * lazy.to_dense())


def test_at_reads_its_operands_in_the_layout_order():
    W = jnp.arange(6.0).reshape(3, 2)  # dy/dx, x in R^2, y in R^3
    d = jnp.array([1.0, -1.0, 2.0])  # dz/dy = diag(d)
    numerator = mj.Diagonal(d) @ mj.Dense(W, 1)  # (dz/dy)(dy/dx)
    denominator = mj.Dense(W, 1, "denominator") @ mj.Diagonal(d, "denominator")  # seed order
    np.testing.assert_array_equal(numerator.to_dense(), d[:, None] * W)
    np.testing.assert_array_equal(denominator.to_dense(), (d[:, None] * W).T)


def test_bad_compositions_and_sums_raise_clear_errors():
    M = mj.Dense(jnp.ones((2, 3)), 1)
    with pytest.raises(ValueError, match=r"takes \(3,\) but the inner .* gives \(2,\)"):
        _ = M @ M
    with pytest.raises(ValueError, match=r"numerator-layout .* denominator-layout"):
        _ = M @ mj.Dense(jnp.ones((3, 3)), 1, "denominator")
    with pytest.raises(ValueError, match="cannot add"):
        _ = M + mj.Dense(jnp.ones((3, 2)), 1)
    with pytest.raises(ValueError, match=r"Dense.mv: argument has shape \(2,\); expected \(3,\)"):
        M.mv(jnp.ones(2))
    with pytest.raises(ValueError, match="layout"):
        M.to_dense(layout="rows")


def test_combinators_take_structured_pieces_and_keep_structure():
    x = jax.random.normal(key(8), (4,), jnp.float64)
    W = jax.random.normal(key(9), (5, 4), jnp.float64)
    z = jnp.tanh(W @ x)
    dz = mj.chain_elementwise(1 - z**2, mj.Dense(W, 1))
    assert type(dz) is mj.Composition
    dense_dz = mj.chain_elementwise(1 - z**2, W)
    np.testing.assert_allclose(dz.to_dense(), dense_dz)
    # chain_vector with a Diagonal keeps Diagonal @ Diagonal diagonal.
    assert type(mj.chain_vector(mj.Diagonal(z), mj.Diagonal(z))) is mj.Diagonal
    # Mixed dense and structured pieces: the dense one is wrapped.
    grad = mj.product_inner(z, z, dz, dense_dz)
    np.testing.assert_allclose(
        grad.to_dense(), jax.grad(lambda x: jnp.tanh(W @ x) @ jnp.tanh(W @ x))(x)
    )
    with pytest.raises(ValueError, match=r"'product_inner'.*'dy_dx'.*denominator"):
        mj.product_inner(z, z, dz.with_layout("denominator"), dense_dz)


def test_batched_jacobian_is_block_diagonal_never_n_by_n():
    xs = jax.random.normal(key(10), (7, 4), jnp.float64)
    op = mj.batched_jacobian(mj.softmax_jacobian, xs)
    assert type(op) is mj.BlockDiagonal
    assert op.blocks.shape == (7, 4, 4)
    batched = jax.vmap(jax.nn.softmax)
    np.testing.assert_allclose(op.to_dense(), jax.jacfwd(batched)(xs), atol=1e-15)
    v = jax.random.normal(key(11), xs.shape, jnp.float64)
    np.testing.assert_allclose(op.mv(v), jax.jvp(batched, (xs,), (v,))[1], atol=1e-15)
    with pytest.raises(ValueError, match=r"'xs' has shape \(4,\)"):
        mj.batched_jacobian(mj.softmax_jacobian, xs[0])


def test_dense_stored_either_way_is_the_same_map():
    A = jax.random.normal(key(12), (3, 4), jnp.float64)  # out 3, in 4
    numerator = mj.Dense(A, 1)
    denominator = mj.Dense.from_array(A.T, 1, "denominator")
    assert denominator.stored == "denominator" and denominator.array is not None
    assert denominator.out_shape == (3,) and denominator.in_shape == (4,)
    v, u = jnp.arange(4.0), jnp.arange(3.0)
    np.testing.assert_allclose(denominator.mv(v), numerator.mv(v))
    np.testing.assert_allclose(denominator.vm(u), numerator.vm(u))
    np.testing.assert_array_equal(denominator.to_dense("numerator"), A)
    np.testing.assert_array_equal(denominator.to_dense(), A.T)


_W = jnp.arange(12.0).reshape(3, 4) / 10 - 0.5

BATCHED_JACOBIANS = {
    "Diagonal": jnp.sin,
    "DiagonalPlusLowRank": jax.nn.softmax,
    "a composition": lambda x: jnp.tanh(_W.T @ jnp.tanh(_W @ x)),
    "a reversal": lambda x: x[::-1] * 2.0,
    "a Pullback": lambda x: jnp.tanh(optax_like_clip(x)),
}


@jax.custom_vjp
def optax_like_clip(x):  # a backward rule not linear in its cotangent
    return x


optax_like_clip.defvjp(
    lambda x: (x, None), lambda _, g: (g / jnp.maximum(1.0, jnp.linalg.norm(g)),)
)


@pytest.mark.parametrize("name", list(BATCHED_JACOBIANS))
def test_an_operator_returned_from_vmap_is_a_batch_its_methods_refuse(name):
    """jax.vmap(mj.jacobian(f))(xs) stacks the operators' arrays: a Diagonal read the batch
    as more entries (its trace the sum of the batch's, to_dense of shape (2, 4, 2, 4)),
    other types failed with unclear errors. Its methods, @ and + now raise naming the
    batch; a vmap over it sees one operator again, also after jit and a scan's stacking."""
    f = BATCHED_JACOBIANS[name]
    xs = jax.random.normal(key(7), (2, 4), jnp.float64)
    expected = jax.vmap(jax.jacrev(f))(xs)
    for made in (
        jax.vmap(mj.jacobian(f))(xs),
        jax.jit(jax.vmap(mj.jacobian(f)))(xs),
        jax.lax.scan(lambda c, x: (c, mj.jacobian(f)(x)), 0.0, xs)[1],
    ):
        calls = {
            "to_dense": lambda J: J.to_dense(),
            "trace": lambda J: J.trace(),
            "diagonal": lambda J: J.diagonal(),
            "mv": lambda J: J.mv(jnp.ones(4)),
            "vm": lambda J: J.vm(jnp.ones(4)),
            "transpose": lambda J: J.T,
            "compose": lambda J: J @ mj.Identity((4,), "float64"),
            "add": lambda J: J + mj.Identity((4,), "float64"),
        }
        for method, call in calls.items():
            said = rf"\.{method}: this \w+ is a batch of operators \(its arrays have 1 axis"
            with pytest.raises(mj.BatchOfOperatorsError, match=said):
                call(made)
        dense = jax.vmap(lambda J: J.to_dense())(made)
        np.testing.assert_allclose(dense, expected, rtol=1e-12, atol=1e-15)
        traces = jax.jit(jax.vmap(lambda J: J.trace()))(made)
        np.testing.assert_allclose(traces, jnp.trace(expected, axis1=1, axis2=2), rtol=1e-12)


BATCHED_HESSIANS = {
    # Sums of terms whose types read their shapes from different arrays: rebuilt with the
    # batch's axes, a Sum compared them (LowRank (4, 2) <- (4, 3) against a Composition
    # (4, 2) <- (3,)) and raised "cannot add ..." from inside jax.vmap
    "logsumexp(W x)": lambda x: jax.nn.logsumexp(_W[:, :3] @ x),
    "sum(sin(W x)^2) + prod(x)": lambda x: jnp.sum(jnp.sin(_W[:, :3] @ x) ** 2) + jnp.prod(x),
}


@pytest.mark.parametrize("name", list(BATCHED_HESSIANS))
def test_a_hessian_returned_from_vmap_is_a_batch(name):
    """jax.vmap(mj.hessian(f)) as jax.vmap(jax.hessian(f)): a batch of Hessians, whose
    operators are rebuilt from arrays with the batch's axes without checking their shapes
    (a check read the batch as one operator's shapes)."""
    f = BATCHED_HESSIANS[name]
    xs = jax.random.normal(key(8), (4, 3), jnp.float64)
    expected = jax.vmap(jax.hessian(f))(xs)
    for made in (jax.vmap(mj.hessian(f))(xs), jax.jit(jax.vmap(mj.hessian(f)))(xs)):
        with pytest.raises(mj.BatchOfOperatorsError, match=r"Hessian\.trace: this Hessian"):
            made.trace()
        dense = jax.vmap(lambda H: H.to_dense())(made)
        np.testing.assert_allclose(dense, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", list(BATCHED_HESSIANS))
def test_a_hessian_is_a_tree_of_placeholders_for_vmap_and_equinox(name):
    """tree_map over a Hessian with placeholders (an axis spec of 0s, equinox's filters'
    True/False): a Sum rebuilt from them checked its terms' shapes (AttributeError: 'int'
    object has no attribute 'shape'), and the graph, read again by identity, took its equal
    placeholders for one leaf (a structure mismatch). Both now rebuild as they were."""
    eqx = pytest.importorskip("equinox")
    f = BATCHED_HESSIANS[name]
    xs = jax.random.normal(key(9), (3, 3), jnp.float64)
    expected = jax.vmap(jax.hessian(f))(xs)
    spec = jax.tree_util.tree_map(lambda a: 0, mj.hessian(f)(xs[0]))
    assert jax.tree_util.tree_structure(spec) == jax.tree_util.tree_structure(mj.hessian(f)(xs[0]))
    for made in (
        jax.vmap(mj.hessian(f), out_axes=spec)(xs),
        eqx.filter_vmap(mj.hessian(f))(xs),
    ):
        dense = jax.vmap(lambda H: H.to_dense())(made)
        np.testing.assert_allclose(dense, expected, rtol=1e-12, atol=1e-15)


def test_an_operator_is_its_own_vmap_axis_spec():
    """The ranks an operator's structure records are not part of its equality: an
    operator of integer leaves is an in_axes / out_axes spec for one (a structure mismatch
    once the ranks were recorded)."""
    xs = jnp.stack([jnp.linspace(0.1, 0.9, 4), jnp.linspace(0.2, 1.8, 4)])
    Js = jax.vmap(mj.jacobian(jnp.sin))(xs)
    traces = jax.vmap(lambda J: J.trace(), in_axes=(mj.Diagonal(0),))(Js)
    np.testing.assert_allclose(traces, jnp.sum(jnp.cos(xs), axis=1), rtol=1e-12)
    moved = jax.vmap(mj.jacobian(jnp.sin), out_axes=mj.Diagonal(1))(xs)
    np.testing.assert_allclose(moved.values, jnp.cos(xs).T, rtol=1e-12)
    with pytest.raises(mj.BatchOfOperatorsError, match="1 axis more"):
        moved.trace()


def test_an_operator_built_from_arrays_with_more_axes_is_not_a_batch():
    """Built directly, an operator's arrays are what its shapes say, whatever their rank:
    a Diagonal of a (2, 4) array is the map on (2, 4) tangents."""
    J = mj.Diagonal(jnp.arange(8.0).reshape(2, 4))
    assert float(J.trace()) == 28.0
    assert jax.tree_util.tree_map(lambda a: a, J).trace() == 28.0


def test_an_operator_is_not_taken_for_an_array():
    """np.asarray of an operator (a Hessian's block of a dict of parameters) gave a 0-d
    object array holding it; jnp.asarray, a deep error. Both say to call to_dense."""
    J = mj.jacobian(jnp.sin)(jnp.arange(3.0))
    for convert in (np.asarray, jnp.asarray, np.array):
        with pytest.raises(TypeError, match=r"Diagonal is a structured Jacobian.*to_dense\(\)"):
            convert(J)
