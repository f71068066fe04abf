"""The operator algebra, type by type, against the dense matrix as the oracle: the transpose
of the map, scaling, sums, composition, and for square maps diagonal, trace, log|det| and
solve. Every operator type of the package appears here (a new type without a case fails
``test_every_operator_type_has_a_case``)."""

import inspect
import math
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj
from matcalc_jax import operators
from matcalc_jax.core.layout import swap_out_in
from matcalc_jax.verification.harness import relative_error

from .helpers import key, lowerings_during


def _normal(seed, shape):
    return jax.random.normal(key(seed), shape, jnp.float64)


def _well_conditioned(seed, n):
    return jnp.eye(n) + 0.3 * _normal(seed, (n, n)) / np.sqrt(n)


def _found(f, x, kind, **options):
    """The first operator of type ``kind`` in the transform's Jacobian of ``f`` at ``x``."""
    stack = [mj.jacobian(f, **options)(x)]
    while stack:
        op = stack.pop()
        if isinstance(op, kind):
            return op
        stack.extend(op.children())
    raise LookupError(kind.__name__)


@jax.custom_vjp
def _clipped(x):
    return x


_clipped.defvjp(lambda x: (x, None), lambda _, g: (3.0 * jnp.clip(g, -0.5, 0.5),))


@jax.custom_vjp
def _clipped_pair(a, b):
    return a, b


def _by_global_norm(_, g):  # both cotangents scaled down to a global norm of 100 at most
    scale = jnp.minimum(1.0, 100.0 / jnp.sqrt(jnp.sum(g[0] ** 2) + jnp.sum(g[1] ** 2)))
    return 2.0 * g[0] * scale, g[1] * scale


_clipped_pair.defvjp(lambda a, b: ((a, b), None), _by_global_norm)

#: ``mul`` and its parameters, as the transform's fallback holds a primitive.
_MUL = operators.Static(
    (jax.lax.mul_p, dict(jax.make_jaxpr(jnp.multiply)(1.0, 2.0).eqns[0].params))
)
#: The parameters of a left-side, lower triangular solve.
_TRIANGULAR = {"left_side": True, "lower": True, "transpose_a": False, "unit_diagonal": False}


#: One instance of every type, shapes chosen rectangular where the type allows.
CASES = {
    "Identity": lambda: mj.Identity((3,), "float64"),
    "Diagonal": lambda: mj.Diagonal(_normal(1, (3,)) + 3.0),
    "Dense": lambda: mj.Dense(_normal(2, (2, 3)), 1),
    "Dense_stored_denominator": lambda: mj.Dense(_normal(3, (3, 2)), 1, stored="denominator"),
    "Dense_matrix_to_vector": lambda: mj.Dense(_normal(4, (2, 3, 4)), 1),
    "LowRank": lambda: mj.LowRank(_normal(5, (2, 1)), _normal(6, (3, 1))),
    "DiagonalPlusLowRank": lambda: mj.DiagonalPlusLowRank(
        _normal(7, (4,)) ** 2 + 1.0, 0.3 * _normal(8, (4, 2)), 0.3 * _normal(9, (4, 2))
    ),
    "Kronecker": lambda: mj.Kronecker(_normal(10, (3, 2)), _normal(11, (4, 5))),
    "Kronecker_vector": lambda: mj.Kronecker(_normal(12, (3, 2)), _normal(13, (4,))),
    "BlockDiagonal": lambda: mj.BlockDiagonal(_normal(14, (2, 3, 4))),
    "WeightedGram": lambda: mj.WeightedGram(_normal(15, (5, 3)), _normal(16, (5,)) ** 2),
    "Banded": lambda: operators.Banded(_normal(76, (3, 5)), (-1, 0, 2)),
    "Scaled": lambda: mj.Scaled(jnp.asarray(-2.0), mj.Dense(_normal(17, (2, 3)), 1)),
    "Sum": lambda: mj.Sum((mj.Dense(_normal(18, (2, 3)), 1), mj.Dense(_normal(19, (2, 3)), 1))),
    "Composition": lambda: mj.Composition(
        mj.Dense(_normal(20, (2, 4)), 1), mj.Dense(_normal(21, (4, 3)), 1)
    ),
    "Transposed": lambda: operators.Transposed(mj.Dense(_normal(22, (2, 3)), 1)),
    "LowRank_tensor": lambda: mj.LowRank(_normal(23, (2, 3, 2)), _normal(24, (4, 2))),
    # X (3, 4) -> A X^T over a batch axis: a permutation, a contraction and a pass-through.
    "Contraction": lambda: operators.Contraction(
        (2, 3), (3, 4), "float64", _normal(25, (2, 4)), ("ab", "cb", "ca")
    ),
    "Contraction_sum_and_broadcast": lambda: operators.Contraction(
        (2, 4), (3, 4), "float64", None, ("ab", "", "cb")
    ),
    "Zero": lambda: operators.Zero((2,), (3, 2), "float64"),
    # output leaves (2,), (3,) by input leaves (3,), (2, 1)
    "BlockMatrix": lambda: mj.BlockMatrix(
        (
            (mj.Dense(_normal(26, (2, 3)), 1), mj.Dense(_normal(27, (2, 2, 1)), 1)),
            (mj.Diagonal(_normal(28, (3,))), mj.Dense(_normal(29, (3, 2, 1)), 1)),
        )
    ),
    # the maps of JAX's primitives
    "Reshape": lambda: operators.Reshape((2, 3), (6,), "float64"),
    "Embed": lambda: operators.Embed((6,), (2,), "float64", ((1, 1, 2),)),
    "Restrict": lambda: operators.Restrict((2,), (6,), "float64", ((1, 1, 2),)),
    "Reverse": lambda: operators.Reverse((2, 3), (2, 3), "float64", (1,)),
    "DynamicSlice": lambda: operators.DynamicSlice((2,), (5,), "float64", (jnp.asarray(2),)),
    "ChangeType": lambda: operators.ChangeType((3,), (3,), "float64", "float32"),
    "Rounding": lambda: operators.Rounding((2, 3), (2, 3), "float64", (5, 10)),
    "Gather": lambda: _found(
        lambda x: x[jnp.array([2, 0, 2])], _normal(54, (4,)), operators.Gather
    ),
    "TakeAlong": lambda: operators.TakeAlong((3,), (4,), "float64", jnp.array([3, 0, 1]), 0),
    "Select": lambda: operators.Select(
        jnp.array([True, False, True]),
        (mj.Dense(_normal(55, (3, 2)), 1), mj.Dense(_normal(56, (3, 2)), 1)),
    ),
    "TriangularSolve": lambda: operators.TriangularSolve(
        (3, 2),
        (3, 2),
        "float64",
        jnp.tril(_well_conditioned(57, 3)),
        operators.Static(tuple(sorted({**_TRIANGULAR, "conjugate_a": False}.items()))),
    ),
    "TridiagonalSolve": lambda: operators.TridiagonalSolve(
        (4, 2),
        (4, 2),
        "float64",
        _normal(58, (4,)),
        _normal(59, (4,)) + 4.0,
        _normal(60, (4,)),
        operators.Static(()),
    ),
    "LinearSolve": lambda: _found(
        lambda b: jax.lax.custom_linear_solve(
            lambda x: _well_conditioned(58, 3) @ x,
            b,
            solve=lambda _, b: jnp.linalg.solve(_well_conditioned(58, 3), b),
            transpose_solve=lambda _, b: jnp.linalg.solve(_well_conditioned(58, 3).T, b),
        ),
        _normal(59, (3,)),
        operators.LinearSolve,
    ),
    "Linearized": lambda: operators.Linearized(
        (3,), (3,), "float64", (_normal(62, (3,)), _normal(63, (3,))), _MUL, 0, 0, "a case", (0,)
    ),
    "Pullback": lambda: _found(_clipped, _normal(64, (3,)), operators.Pullback),
    "LinearizedByRows": lambda: _found(
        lambda x: jax.lax.scan(lambda c, v: (c, _clipped(c * v)), 1.0, x)[1],
        _normal(67, (4,)),
        operators.LinearizedByRows,
        fallback="autodiff",
    ),
    "JointPullback": lambda: _found(
        lambda x: jnp.concatenate(_clipped_pair(x[:2], x[2:])),
        _normal(66, (5,)),
        operators.JointPullback,
    ),
    "FromCotangents": lambda: _found(
        lambda x: 0.25 * _clipped(x), _normal(64, (3,)), operators.FromCotangents
    ),
    "WithFallbacks": lambda: operators.WithFallbacks(mj.Dense(_normal(65, (2, 3)), 1), ("a",)),
    "InProgramDtypes": lambda: _found(  # float32 in and out, float64 inside
        lambda x: (_normal(69, (2, 3)) @ x).astype(jnp.float32),
        _normal(70, (3,)).astype(jnp.float32),
        operators.InProgramDtypes,
    ),
    "Convolution": lambda: _found(
        lambda x: jax.lax.conv(x, _normal(66, (2, 1, 3)), (1,), "SAME"),
        _normal(67, (1, 1, 5)),
        operators.Convolution,
    ),
    "WindowSum": lambda: _found(
        lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, (2,), (1,), "VALID"),
        _normal(68, (4,)),
        operators.WindowSum,
    ),
    "WindowChoice": lambda: operators.WindowChoice(
        (3,), (4,), "float64", jnp.array([1, -1, 3], jnp.int32)
    ),
    "ImaginaryPart": lambda: operators.ImaginaryPart((3,), (3,), "float64"),
    "Conjugate": lambda: operators.Conjugate((3,), (3,), "complex128"),
    "Fourier": lambda: operators.Fourier((4,), (4,), "complex128", jax.lax.FftType.FFT, (4,)),
    "Stacked": lambda: operators.Stacked.of(
        [_normal(69, (4, 3))], jax.tree_util.tree_structure(mj.Diagonal(jnp.ones(3))), 4
    ),
    "TriangularProduct": lambda: operators.TriangularProduct(
        (3, 2), (3, 3), "float64", _normal(70, (3, 2)), operators.Static(_TRIANGULAR)
    ),
    "TridiagonalProduct": lambda: operators.TridiagonalProduct(
        (4, 2), (4,), "float64", _normal(61, (4, 2))
    ),
    "CholeskyTangent": lambda: operators.CholeskyTangent(
        (3, 3),
        (3, 3),
        "float64",
        jnp.linalg.cholesky(_well_conditioned(71, 3) @ _well_conditioned(71, 3).T),
    ),
    "EighTangent": lambda: _found(
        lambda a: jnp.linalg.eigh(a)[1], _normal(72, (3, 3)), operators.EighTangent
    ),
    "QRTangent": lambda: _found(
        lambda a: jnp.linalg.qr(a)[0], _normal(73, (4, 3)), operators.QRTangent
    ),
    "SVDTangent": lambda: _found(
        lambda a: jnp.linalg.svd(a, full_matrices=False)[0],
        _normal(74, (4, 3)),
        operators.SVDTangent,
    ),
    "LUTangent": lambda: _found(
        lambda a: jax.lax.linalg.lu(a)[0], _well_conditioned(75, 3), operators.LUTangent
    ),
}
#: Square instances, well conditioned, for diagonal, trace, logdet and solve.
SQUARE = {
    "Identity": lambda: mj.Identity((2, 3), "float64"),
    "Diagonal": lambda: mj.Diagonal(jnp.array([2.0, -0.5, 3.0])),
    "Dense": lambda: mj.Dense(_well_conditioned(30, 4), 1),
    "Dense_stored_denominator": lambda: mj.Dense(_well_conditioned(31, 4), 1, stored="denominator"),
    "DiagonalPlusLowRank": CASES["DiagonalPlusLowRank"],
    "softmax": lambda: (
        mj.rule("softmax").structured(_normal(32, (5,))) + mj.Diagonal(jnp.full((5,), 0.5))
    ),
    "Kronecker": lambda: mj.Kronecker(_well_conditioned(33, 3), -_well_conditioned(34, 2)),
    "BlockDiagonal": lambda: mj.BlockDiagonal(
        jnp.stack([_well_conditioned(35, 3), -_well_conditioned(36, 3)])
    ),
    "WeightedGram": lambda: mj.WeightedGram(_normal(37, (6, 3)), _normal(38, (6,)) ** 2 + 0.5),
    "Banded": lambda: operators.Banded(
        jnp.stack([jnp.full((4,), 4.0), _normal(77, (4,)), _normal(78, (4,))]), (0, -1, 1)
    ),
    "Scaled": lambda: mj.Scaled(jnp.asarray(-2.0), mj.Dense(_well_conditioned(39, 3), 1)),
    "Sum": lambda: mj.Sum((mj.Identity((3,), "float64"), mj.Dense(0.2 * _normal(40, (3, 3)), 1))),
    "Composition": lambda: mj.Composition(
        mj.Diagonal(jnp.array([1.0, -2.0, 0.5])), mj.Dense(_well_conditioned(41, 3), 1)
    ),
    "Transposed": lambda: operators.Transposed(mj.Dense(_well_conditioned(42, 3), 1)),
    "Contraction_batched": lambda: operators.Contraction(
        (2, 3),
        (2, 3),
        "float64",
        jnp.stack([_well_conditioned(45, 3), -_well_conditioned(46, 3)]),
        ("ab", "acb", "ac"),
    ),
    "BlockMatrix": lambda: mj.BlockMatrix(
        (
            (mj.Diagonal(jnp.array([2.0, -1.5, 3.0])), mj.Dense(0.2 * _normal(47, (3, 2)), 1)),
            (mj.Dense(0.2 * _normal(48, (2, 3)), 1), mj.Dense(_well_conditioned(49, 2), 1)),
        )
    ),
    "LowRank_plus_Identity": lambda: mj.Sum(
        (mj.Identity((3,), "float64"), mj.LowRank(_normal(43, (3, 1)), _normal(44, (3, 1))))
    ),
}


def _matrix(op):
    """The numerator Jacobian as an (out size, in size) matrix."""
    dense = np.asarray(op.to_dense("numerator"))
    return dense.reshape(int(np.prod(op.out_shape)), int(np.prod(op.in_shape)))


def test_every_operator_type_has_a_case():
    modules = [m for name, m in sys.modules.items() if name.startswith("matcalc_jax.operators")]
    types = {
        obj
        for module in modules
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, mj.JacobianOperator)
    }
    covered = {type(make()) for make in CASES.values()}
    abstract = {mj.JacobianOperator, operators.ShapedOperator, operators.Map, operators.Wrapped}
    abstract |= {t for t in types if t.__name__.startswith("_")}  # a private common part
    assert types - abstract <= covered


def test_a_real_map_after_a_complex_one_is_complex_as_the_dense_product():
    """A real LowRank or Contraction composed after a complex map kept its real dtype and
    dropped the imaginary part (L Z gave Re(L Z); C (2 + 3i) I gave 2 C)."""
    Z = mj.Dense(jnp.array([[1j, 0.0], [0.0, 2.0]]), 1)
    L = mj.LowRank(jnp.array([[1.0], [2.0]]), jnp.array([[1.0], [1.0]]))
    M = jnp.array([[2.0, 1.0], [0.0, 3.0]])
    C = operators.Contraction((2,), (2,), "float64", M, ("b", "ab", "a"))
    scaled = mj.Identity((2,), "float64") * (2 + 3j)
    v = jnp.array([1.0, -2.0])
    LZ, cM = L.to_dense() @ Z.to_dense(), (2 + 3j) * M
    # (the second map starts from real tangents: its vm is real, JAX's pairing Re(u^T w))
    for product, expected, vm in ((L @ Z, LZ, v @ LZ), (C @ scaled, cM, jnp.real(v @ cM))):
        assert product.dtype == jnp.complex128
        np.testing.assert_allclose(product.to_dense(), expected, rtol=1e-15)
        np.testing.assert_allclose(product.mv(v), expected @ v, rtol=1e-15)
        np.testing.assert_allclose(product.vm(v), vm, rtol=1e-15)


def test_a_diagonal_plus_a_wider_identity_promotes_and_log_dets_are_real():
    d = mj.Diagonal(jnp.array([1e-9, 2.0], jnp.float32))
    for total in (d + mj.Identity((2,), "float64"), mj.Identity((2,), "float64") + d):
        assert total.dtype == jnp.float64  # as jnp: float32 + float64
    identity = mj.Identity((3,), "complex128")
    assert identity.logdet().dtype == jnp.linalg.slogdet(identity.to_dense())[1].dtype


def test_zero_promotes_a_wider_vector_as_a_dense_zero_matrix_does():
    zero = operators.Zero((2,), (3,), "float32")
    dense = mj.Dense(jnp.zeros((2, 3), jnp.float32), 1)
    for method, size in (("mv", 3), ("vm", 2)):
        v = jnp.ones(size, jnp.float64)
        expected = getattr(dense, method)(v)
        assert expected.dtype == jnp.float64
        result = getattr(zero, method)(v)
        assert result.dtype == expected.dtype
        chex.assert_trees_all_equal(result, expected)
        assert getattr(zero, method)(v.astype(jnp.float32)).dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(CASES))
def test_transpose_is_the_transpose_of_the_map(name):
    op = CASES[name]()
    t = op.T
    chex.assert_equal(t.in_shape, op.out_shape)
    chex.assert_equal(t.out_shape, op.in_shape)
    u = _normal(50, op.out_shape)
    v = _normal(51, op.in_shape)
    chex.assert_trees_all_close(t.mv(u), op.vm(u), rtol=1e-12, atol=0)
    chex.assert_trees_all_close(t.vm(v), op.mv(v), rtol=1e-12, atol=0)
    expected = swap_out_in(op.to_dense("numerator"), len(op.out_shape))
    if not op.complex_linear():  # no complex matrix stands for op (Im w): J^T e_i = vm(e_i)
        units = jnp.eye(math.prod(op.out_shape), dtype=op.dtype).reshape(-1, *op.out_shape)
        rows = jnp.stack([op.vm(e) for e in units])  # (out, *in)
        expected = jnp.moveaxis(rows.reshape(len(units), -1), 0, -1).reshape(t.to_dense().shape)
    chex.assert_trees_all_close(t.to_dense("numerator"), expected, rtol=1e-12, atol=0)
    chex.assert_trees_all_close(op.T.T.to_dense(), op.to_dense(), rtol=1e-12, atol=0)
    assert t.layout == op.layout  # the layout is an arrangement, not part of the map
    chex.assert_trees_all_close(jax.jit(lambda o: o.T.to_dense())(op), t.to_dense())


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_operator_s_dtype_is_what_its_products_return(name):
    """``dtype`` is the dtype of ``mv``'s result, also for a transpose: ``ImaginaryPart.T``
    maps real cotangents to complex ones, and said float64."""
    op = CASES[name]()
    for o in (op, op.T):
        v = jnp.ones(o.in_shape, op.dtype)
        assert jnp.dtype(o.dtype) == o.mv(v).dtype, (name, o is op)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_complex_vector_meets_a_real_operator_as_its_matrix(name):
    """A real matrix is complex-linear: J (a + ib) = J a + i J b, and so for vm; a
    ``LowRank`` or ``DiagonalPlusLowRank`` cast its mv to its own dtype and dropped the
    imaginary part (the transpose of softmax o (c J) had a real matrix)."""
    op = CASES[name]()
    if jnp.issubdtype(op.dtype, jnp.complexfloating) or not op.complex_linear():
        pytest.skip("a complex or only real-linear operator")
    for method, shape in ((op.mv, op.in_shape), (op.vm, op.out_shape)):
        a, b = _normal(53, shape), _normal(54, shape)
        expected = method(a) + 1j * method(b)
        chex.assert_trees_all_close(method(a + 1j * b), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_layout_only_arranges_to_dense(name):
    op = CASES[name]()
    denominator = op.with_layout("denominator")
    v = _normal(52, op.in_shape)
    np.testing.assert_array_equal(denominator.mv(v), op.mv(v))
    chex.assert_trees_all_close(
        denominator.to_dense(), swap_out_in(op.to_dense(), len(op.out_shape)), rtol=1e-15
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_scaling_sum_and_negation_are_the_dense_ones(name):
    op = CASES[name]()
    dense = _matrix(op)
    np.testing.assert_allclose(_matrix(2.5 * op), 2.5 * dense, rtol=1e-14)
    np.testing.assert_allclose(_matrix(-op), -dense, rtol=1e-14)
    np.testing.assert_allclose(_matrix(op + op), 2 * dense, rtol=1e-14)
    # of a map no complex matrix stands for (Im w), the transpose's matrix is not dense.T
    transposed = dense.T if op.complex_linear() else _matrix(op.T)
    np.testing.assert_allclose(_matrix((op * 3.0).T), 3.0 * transposed, rtol=1e-14)


@pytest.mark.parametrize("name", sorted(SQUARE))
def test_square_rules_match_the_dense_matrix(name):
    op = SQUARE[name]()
    dense = _matrix(op)
    np.testing.assert_allclose(np.ravel(op.diagonal()), np.diagonal(dense), rtol=1e-12)
    np.testing.assert_allclose(op.trace(), np.trace(dense), rtol=1e-12)
    np.testing.assert_allclose(op.logdet(), np.linalg.slogdet(dense)[1], rtol=1e-10)
    b = _normal(53, op.out_shape)
    x = op.solve(b)
    chex.assert_shape(x, op.in_shape)
    np.testing.assert_allclose(np.ravel(x), np.linalg.solve(dense, np.ravel(b)), rtol=1e-9)
    np.testing.assert_allclose(op.mv(x), b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(op.T.logdet(), op.logdet(), rtol=1e-12)


def test_structured_rules_never_form_the_dense_matrix():
    """log|det| and solve of the structured types run on their factors: the jaxpr holds no
    array of the dense matrix's size."""
    n = 64
    ops = {
        "Diagonal": mj.Diagonal(jnp.arange(1.0, n + 1)),
        "DiagonalPlusLowRank": mj.DiagonalPlusLowRank(
            jnp.arange(1.0, n + 1), jnp.ones((n, 1)) / n, jnp.ones((n, 1))
        ),
        "Kronecker": mj.Kronecker(_well_conditioned(60, 8), _well_conditioned(61, 8)),
    }
    for name, op in ops.items():
        size = int(np.prod(op.in_shape))
        for what in (lambda o: o.logdet(), lambda o: o.solve(jnp.ones(o.out_shape))):
            jaxpr = jax.make_jaxpr(what)(op)
            largest = max(
                (int(np.prod(v.aval.shape)) for e in jaxpr.eqns for v in e.outvars), default=0
            )
            assert largest < size * size, name


@pytest.mark.parametrize("zeros", [1, 2, 3])
def test_diagonal_plus_low_rank_with_zeros_on_its_diagonal(zeros):
    """diag(d) + U V^T with up to r zeros in d is invertible where D is not (relu's
    derivative plus a rank-r term): log|det| and solve as numpy's on the dense matrix, still
    without it; more than r zeros make the matrix singular: -inf and NaN."""
    n, r = 7, 2
    ku, kv = jax.random.split(key(70))
    d = jnp.arange(1.0, n + 1).at[jnp.array([1, 4, 5][:zeros])].set(0.0)
    if zeros < r:
        d = d.at[6].set(1e-20)  # tiny but normal: kept, Woodbury divides by it
    U, V = jax.random.normal(ku, (n, r), jnp.float64), jax.random.normal(kv, (n, r), jnp.float64)
    op = mj.DiagonalPlusLowRank(d, U, V)
    rhs = jnp.sin(jnp.arange(n, dtype=jnp.float64))
    logdet, solution = jax.jit(lambda o: (o.logdet(), o.solve(rhs)))(op)
    dense = np.asarray(op.to_dense())
    if zeros <= r:
        assert abs(float(logdet) - np.linalg.slogdet(dense)[1]) < 1e-12 * n
        assert relative_error(solution, np.linalg.solve(dense, rhs)) < 1e-12
    else:
        assert float(logdet) == -np.inf
        assert bool(jnp.all(jnp.isnan(solution)))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_diagonal_plus_low_rank_capacitance_condition(dtype):
    """I - 1 1^T / n is singular; its capacitance 1 - n / n rounds to +-eps or 0: past
    1 / (16 eps). I - 0.5 1 1^T / n has the capacitance 1 - 0.5 beside terms of size
    1 + 0.5: a condition 3."""
    n = 200
    ones = jnp.ones((n, 1), dtype)
    singular = mj.DiagonalPlusLowRank(jnp.ones(n, dtype), -ones / n, ones)
    eps = float(jnp.finfo(dtype).eps)
    assert float(singular.capacitance_condition()) > 1 / (16 * eps)
    regular = mj.DiagonalPlusLowRank(jnp.ones(n, dtype), -0.5 * ones / n, ones)
    np.testing.assert_allclose(float(regular.capacitance_condition()), 3.0, rtol=50 * eps)
    zero_row = mj.DiagonalPlusLowRank(jnp.array([0.0, 1.0], dtype), jnp.zeros((2, 1), dtype),
                                      jnp.ones((2, 1), dtype))  # fmt: skip
    assert float(zero_row.capacitance_condition()) == np.inf


@pytest.mark.parametrize("side", ["row", "column"])
def test_diagonal_plus_low_rank_with_a_zero_row_or_column_is_singular(side):
    """A zero in d whose row of U (or of V) is zero too is a zero row (column) of the
    matrix: singular exactly, -inf and NaN, as in the Hessian of sum(relu(z))^2 +
    sum(relu(z)^3) with a unit off. The shifted system was only nearly singular after
    rounding: log|det| -29 and a solution of 1e15."""
    d = jnp.array([0.0, 6.6, 4.2, 5.4])
    U = jnp.array([[0.0], [2.0], [2.0], [2.0]])
    V = jnp.array([[0.0], [2.2], [1.4], [1.8]])
    if side == "column":
        U, V = U.at[0, 0].set(1.5), V
    else:
        U, V = U, V.at[0, 0].set(1.5)
    op = mj.DiagonalPlusLowRank(d, U, V)
    assert np.linalg.slogdet(np.asarray(op.to_dense()))[1] == -np.inf
    logdet, solution = jax.jit(lambda o: (o.logdet(), o.solve(jnp.ones(4))))(op)
    assert float(logdet) == -np.inf and bool(jnp.all(jnp.isnan(solution)))
    f = lambda z: jnp.sum(jax.nn.relu(z)) ** 2 + jnp.sum(jax.nn.relu(z) ** 3)  # noqa: E731
    assert float(mj.hessian(f)(jnp.array([-1.0, 1.1, 0.7, 0.9])).logdet()) == -np.inf


SINGULAR_JACOBIANS = {
    # relu units off: a Diagonal with zeros, behind a dense layer (a Composition)
    "relu": lambda x: jax.nn.relu(x),
    # W of condition 3.2 (sin(arange(16)) alone has rank 2: the regular case below then
    # compared two equal, wrong solutions)
    "W relu(x)": lambda x: (
        (jnp.sin(jnp.arange(16.0)).reshape(4, 4) + 2 * jnp.eye(4)) @ jax.nn.relu(x)
    ),
}


@pytest.mark.parametrize("name", list(SINGULAR_JACOBIANS))
def test_a_singular_jacobian_solves_to_nan_everywhere(name):
    """J x = b has no solution (or not a unique one) where J is singular: x was b / d,
    finite in the entries of the units on and inf in the others ([-0.67, inf, -0.54, inf]
    for W relu(x)), as if it solved the system in part. NaN in every entry now, as
    DiagonalPlusLowRank's solve gives, eagerly and under jit; log|det J| is -inf."""
    f = SINGULAR_JACOBIANS[name]
    x, b = jnp.array([1.0, -2.0, 0.5, -0.1]), jnp.cos(jnp.arange(4.0))
    assert np.linalg.matrix_rank(np.asarray(jax.jacfwd(f)(x))) < 4
    for solve in (
        lambda x: mj.jacobian(f)(x).solve(b),
        jax.jit(lambda x: mj.jacobian(f)(x).solve(b)),
    ):
        assert bool(jnp.all(jnp.isnan(solve(x)))), solve(x)
    assert float(mj.jacobian(f)(x).logdet()) == -np.inf
    regular = jnp.array([1.0, 2.0, 0.5, 3.0])
    np.testing.assert_allclose(
        mj.jacobian(f)(regular).solve(b), np.linalg.solve(jax.jacfwd(f)(regular), b), rtol=1e-10
    )


#: Jacobians singular to working precision: the LU's smallest pivot rounds to 1e-16, not 0,
#: and ``jnp.linalg.solve`` returns a finite x of size 1e17 that does not solve J x = b.
_RANK_2 = jnp.asarray(
    np.random.default_rng(0).normal(size=(4, 2)) @ np.random.default_rng(1).normal(size=(2, 4))
)
NEARLY_SINGULAR_JACOBIANS = {
    "A x": lambda x: _RANK_2 @ x,
    "tanh(A x)": lambda x: jnp.tanh(_RANK_2 @ x),
    "A sin(x)": lambda x: _RANK_2 @ jnp.sin(x),
}


@pytest.mark.parametrize("name", list(NEARLY_SINGULAR_JACOBIANS))
def test_a_jacobian_singular_to_working_precision_does_not_solve_silently(name):
    """An eager ``J.solve(b)`` of a Jacobian singular to rounding returned that finite x
    (as ``jnp.linalg.solve`` does) where a Hessian's solve raised: it is now the same
    ``ValueError``, naming the operator; under ``jit`` it is still the factorization's x."""
    f = NEARLY_SINGULAR_JACOBIANS[name]
    x, b = jnp.linspace(0.1, 0.4, 4), jnp.array([1.0, 2.0, 3.5, 1.0])
    J = mj.jacobian(f)(x)
    dense = np.asarray(jax.jacfwd(f)(x))
    silent = np.linalg.solve(dense, b)
    assert np.all(np.isfinite(silent)) and np.linalg.norm(dense @ silent - b) > 1e-3 * 4
    with pytest.raises(ValueError, match=rf"matcalc_jax\.{type(J).__name__}\.solve: the "
                       r"operator is singular to working precision"):  # fmt: skip
        J.solve(b)
    traced = jax.jit(lambda J, b: J.solve(b))(J, b)
    assert traced.shape == (4,) and np.linalg.norm(dense @ np.asarray(traced) - b) > 1e-3
    regular = mj.jacobian(lambda x: f(x) + 2 * x)(x)  # J + 2 I: solved, unchanged
    np.testing.assert_allclose(regular.solve(b), np.linalg.solve(dense + 2 * np.eye(4), b),
                               rtol=1e-10)  # fmt: skip


def test_a_singular_block_solves_to_nan_in_each_of_its_entries():
    """The per-example Jacobian of a vmapped map (a BlockDiagonal) with one singular block:
    that block solved to [nan, -inf] (its LU's zero pivot); NaN in each of its entries now,
    eagerly and under jit. The other blocks, examples of their own (on other devices when
    the batch is sharded), keep their solutions."""
    g = lambda z: jnp.array([z[0] * z[1], z[1] ** 2])  # noqa: E731
    xs, b = jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.array([[1.0, 2.0], [3.0, 4.0]])
    regular = xs.at[1].set(jnp.array([0.5, 3.0]))
    expected = jax.vmap(lambda z, c: jnp.linalg.solve(jax.jacfwd(g)(z), c))(regular, b)
    J = mj.jacobian(jax.vmap(g))(xs)
    assert isinstance(J, mj.BlockDiagonal), type(J)
    for solution in (J.solve(b), jax.jit(lambda x: mj.jacobian(jax.vmap(g))(x).solve(b))(xs)):
        assert bool(jnp.all(jnp.isnan(solution[1]))), solution
        np.testing.assert_allclose(solution[0], expected[0], rtol=1e-12)
    np.testing.assert_allclose(mj.jacobian(jax.vmap(g))(regular).solve(b), expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_diagonal_plus_low_rank_with_a_badly_scaled_diagonal(dtype):
    """d = (1e20, 1, 2, 3) (float64) or (2.4e7, 1, 1.6, 2.7) (float32, the Hessian of
    sum(exp(x)) + sum(x)^2 / 2 at x_0 = 17): the small entries are not zeros and are kept
    (shifting them by max|d| rounded them away: log|det| 47.15 for 48.66)."""
    big = 1e20 if dtype == "float64" else float(np.exp(np.float32(17.0)))
    d = jnp.array([big, 1.0, 1.6, 2.7], dtype)
    U = jnp.ones((4, 1), dtype)
    V = jnp.array([[1.0], [0.5], [0.2], [2.0]], dtype)
    op = mj.DiagonalPlusLowRank(d, U, V)
    dense = np.diag(np.asarray(d, np.float64)) + np.asarray(U @ V.T, np.float64)
    rhs = np.array([1.0, 2.0, 3.0, 4.0])
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(op.logdet(), np.linalg.slogdet(dense)[1], rtol=tol)
    np.testing.assert_allclose(op.solve(rhs.astype(dtype)), np.linalg.solve(dense, rhs), rtol=tol)


@pytest.mark.parametrize(
    "d, U, V",
    [
        ([3.0, 3e-16], [[1.0], [0.5]], [[1.0], [1.0]]),  # just above eps * rho: was 2.5
        ([1.0, 1e-15], [[1.0], [1.0]], [[1.0], [-1.0]]),  # -0.875 for -1
        ([1.0, 1e-12], [[1.0], [1.0]], [[1.0], [-1.0]]),
        ([1.48e-15, 0.68, -0.91], np.eye(3) * 0.7 + 0.2, np.ones((3, 3)) * 0.4),
    ],
)
def test_diagonal_plus_low_rank_with_a_small_entry_in_a_well_conditioned_matrix(d, U, V):
    """Woodbury divides by d: a d_k small beside its row's low-rank part is shifted into
    the low-rank part whatever its size, not only below eps (cond < 20 here)."""
    op = mj.DiagonalPlusLowRank(jnp.array(d), jnp.array(U), jnp.array(V))
    dense = np.diag(d) + np.array(U) @ np.array(V).T
    assert np.linalg.cond(dense) < 20
    rhs = np.array([1.0, -2.0, 0.5][: len(d)])
    expected = np.linalg.solve(dense, rhs)
    solution = np.asarray(op.solve(jnp.array(rhs)))
    assert np.linalg.norm(solution - expected) <= 1e-13 * np.linalg.norm(expected)
    assert abs(float(op.logdet()) - np.linalg.slogdet(dense)[1]) <= 1e-13


def test_diagonal_plus_low_rank_to_dense_keeps_a_complex_or_wider_diagonal():
    op = mj.DiagonalPlusLowRank(jnp.array([1 + 2j, 2.0, 3.0]), jnp.ones((3, 1)), jnp.ones((3, 1)))
    assert op.to_dense().dtype == jnp.complex128 and op.to_dense()[0, 0] == 2 + 2j
    ones = jnp.ones((3, 1), jnp.float32)
    op = mj.DiagonalPlusLowRank(jnp.array([1 + 1e-9, 2.0, 3.0]), ones, ones)
    assert op.to_dense().dtype == jnp.float64
    np.testing.assert_allclose(op.to_dense()[0, 0] - 2, 1e-9, rtol=1e-6)


def test_the_jacobian_of_relu_plus_a_rank_one_term_solves():
    """mj.jacobian gives such an operator from ordinary code."""
    a, b, x = jnp.array([1.0, 0.5, 0.25]), jnp.array([1.0, 2.0, 3.0]), jnp.array([-1.0, 1, 2])
    J = mj.jacobian(lambda x: jax.nn.relu(x) + a * jnp.dot(b, x))(x)
    assert isinstance(J, mj.DiagonalPlusLowRank)
    dense = np.asarray(J.to_dense())
    assert abs(float(J.logdet()) - np.linalg.slogdet(dense)[1]) < 1e-14
    np.testing.assert_allclose(J.solve(jnp.ones(3)), np.linalg.solve(dense, np.ones(3)))


def test_a_complex_scale_survives_composition_and_a_wide_scale_promotes():
    """A type's ``scaled`` keeps its dtype: a complex scale of a real operator composed with
    another was cast to the real dtype (1j K @ K was 0), and a float64 scale of a float32
    LowRank was rounded to float32 (a Diagonal's was not)."""
    I2, d = jnp.eye(2), mj.Diagonal(jnp.array([1.0, 2.0]))
    low_rank = mj.LowRank(jnp.ones((2, 1)), jnp.array([[1.0], [3.0]]))
    pairs = [
        (1j * mj.Kronecker(I2, I2), mj.Kronecker(I2, I2)),
        (1j * d, mj.Diagonal(jnp.array([3.0, 4.0]))),
        (d, 1j * low_rank),
        (1j * low_rank, d),
        ((0.5 + 2j) * mj.DiagonalPlusLowRank(jnp.ones(2), jnp.ones((2, 1)), jnp.ones((2, 1))), d),
    ]
    for outer, inner in pairs:
        n = int(np.prod(inner.in_shape))
        expected = outer.to_dense().reshape(-1, n) @ inner.to_dense().reshape(n, n)
        actual = (outer @ inner).to_dense().reshape(-1, n)
        np.testing.assert_allclose(actual, expected, rtol=1e-15)
        assert np.iscomplexobj(actual)
    third = jnp.float64(1) / 3
    for op in (low_rank, mj.DiagonalPlusLowRank(jnp.ones(2), jnp.ones((2, 1)), jnp.ones((2, 1)))):
        narrow = jax.tree.map(lambda a: a.astype(jnp.float32), op)
        assert (
            (third * narrow).dtype
            == jnp.float64
            == (third * mj.Diagonal(jnp.ones(2, jnp.float32))).dtype
        )
        np.testing.assert_allclose((third * narrow).to_dense(), third * op.to_dense(), rtol=1e-7)
        assert (2.0 * narrow).dtype == jnp.float32  # a Python number keeps the dtype


@pytest.mark.parametrize("name", ["Diagonal", "Dense", "LowRank", "Kronecker"])
def test_an_array_scale_is_an_error(name):
    with pytest.raises(ValueError, match=rf"{name} \* c: c must be a scalar.*shape \(2,\)"):
        CASES[name]() * jnp.array([10.0, 100.0])


def test_non_square_operators_refuse_square_rules_by_name():
    op = CASES["Dense"]()
    for what in ("diagonal", "trace", "logdet"):
        with pytest.raises(ValueError, match=rf"{what}\(\) of a Dense needs a square operator"):
            getattr(op, what)()
    with pytest.raises(ValueError, match=r"solve\(\) of a Dense needs a square operator"):
        op.solve(jnp.ones(2))
    with pytest.raises(ValueError, match=r"Diagonal.solve: argument has shape \(2,\)"):
        mj.Diagonal(jnp.ones(3)).solve(jnp.ones(2))


def test_sums_and_compositions_keep_the_structure_their_types_register():
    d = mj.Diagonal(jnp.arange(1.0, 4.0))
    assert type(d + d) is mj.Diagonal
    assert type(2.0 * d) is mj.Diagonal
    assert type(d @ d) is mj.Diagonal
    assert type(mj.Identity((3,), "float64") @ d) is mj.Diagonal
    k = mj.Kronecker(jnp.ones((2, 3)), jnp.ones((4, 5)))
    assert type(k.T) is mj.Kronecker
    assert type(CASES["Kronecker_vector"]().T) is operators.Transposed
    dense = mj.Dense(jnp.ones((2, 3)), 1)
    assert dense.T.array is dense.array  # the transpose reads the same array, no copy


def test_a_new_type_brings_its_own_composition_rule():
    class Zero(mj.JacobianOperator):
        def __init__(self, n):
            self.n, self.layout = n, "numerator"

        out_shape = in_shape = property(lambda self: (self.n,))
        dtype = jnp.float64

    calls = []

    @operators.composition_rule(Zero, mj.JacobianOperator)
    def _zero_after_anything(outer, inner):
        calls.append(type(inner))
        return outer

    assert mj.compose(Zero(3), mj.Diagonal(jnp.ones(3))) is not None and calls == [mj.Diagonal]
    assert type(mj.compose(mj.Diagonal(jnp.ones(3)), mj.Diagonal(jnp.ones(3)))) is mj.Diagonal


def test_eager_products_keep_their_checks_and_take_lists():
    d = mj.Diagonal(jnp.arange(1.0, 4.0))
    np.testing.assert_array_equal(d.mv([1.0, 1.0, 1.0]), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"Diagonal\.mv: argument has shape \(2,\)"):
        d.mv(jnp.ones(2))
    with pytest.raises(ValueError, match="layout"):
        d.to_dense("sideways")


def _one_program_each(op, calls, expected):
    """The methods in ``calls`` that compiled more than one program, with their counts;
    each call's value is checked against ``expected`` (the same under ``jit``)."""
    too_many = {}
    for (method, call), value in zip(calls.items(), expected, strict=True):
        got = []
        count = lowerings_during(lambda: got.append(call()))  # noqa: B023 (runs at once)
        if count > 1:
            too_many[f"{type(op).__name__}.{method}"] = count
        chex.assert_trees_all_close(got[0], value, rtol=1e-13, atol=1e-15)
    return too_many


def test_an_eager_diagonal_plus_low_rank_solve_is_one_program():
    """``solve`` and ``capacitance_condition`` of a concrete diagonal plus low rank
    operator compiled each operation on its own (Woodbury's shifts, top_k, the r x r
    solve: 2.4 s for a new n); each is now one program, with the values under ``jit``,
    and a second call compiles nothing. (An eager solve also compiles the ``mv`` its
    check of the solution makes, a second program.)"""
    rng = np.random.default_rng(37)
    d, U, V = rng.uniform(1, 2, 37), rng.normal(size=(37, 3)), rng.normal(size=(37, 3))
    op = mj.DiagonalPlusLowRank(jnp.asarray(d), jnp.asarray(U), jnp.asarray(V))
    b = jax.device_put(rng.normal(size=37))
    expected = jax.jit(lambda o, b: (o.solve(b), o.capacitance_condition()))(op, b)
    calls = {"solve": lambda: op.solve(b), "capacitance_condition": op.capacitance_condition}
    op.mv(b)  # the check's product, compiled apart
    assert not _one_program_each(op, calls, expected)
    assert lowerings_during(lambda: op.solve(b)) == 0
    dense = d[:, None] * np.eye(37) + U @ V.T
    np.testing.assert_allclose(op.solve(b), np.linalg.solve(dense, b), rtol=1e-12)


def test_batch_axes_asks_a_shared_node_once(monkeypatch):
    """``batch_axes`` (asked by every composition and by the Jacobian's blocks) recursed
    into a shared node once per path: a recurrent net's Hessian reaches the Jacobian of an
    early step on a number of paths exponential in the steps (a flax LSTM of 3 steps: 3.7
    million calls, 88 of its 100 s). Each node keeps its answer: a graph of 10 levels,
    each reaching the level below on three edges (3^10 paths to the leaf), asks the leaf
    once per edge into it, 3 times."""
    asked = []
    leaf = mj.Diagonal(jnp.arange(1.0, 4.0))
    monkeypatch.setattr(
        mj.Diagonal, "batch_axes", lambda self: asked.append(1) or frozenset({(0, 0)})
    )
    node = leaf
    for _ in range(10):
        node = mj.Sum((mj.Composition(node, node), node))
    assert node.batch_axes() == frozenset({(0, 0)})
    assert len(asked) == 3


def test_an_eager_composition_with_a_low_rank_factor_is_one_program_per_side():
    """Composing a concrete low-rank operator with a composite one pulls its r columns
    back through the whole composite (``vm``), or pushes them forward (``mv``) through
    each of the composite's factors in turn as the composition regroups. Eagerly each such
    vmapped product compiled every operation on its own (and the finiteness check of the
    rows pulled back four more); it is one program per product, 1 and 3 here, with the
    factors of the dense products, and a second composition compiles nothing."""
    rng = np.random.default_rng(61)
    A, B = rng.normal(size=(6, 5)), rng.normal(size=(5, 4))
    d, P, Q, R = (rng.normal(size=shape) for shape in [(5,), (4, 2), (6, 2), (4, 2)])
    composite = mj.compose(mj.Dense(jnp.asarray(A), 1), mj.Diagonal(jnp.sin(jnp.asarray(d))))
    composite = mj.compose(composite, mj.Dense(jnp.asarray(B), 1))  # 6 x 4
    after, before = (mj.LowRank(jnp.asarray(P), jnp.asarray(F)) for F in (Q, R))
    dense = A @ np.diag(np.sin(d)) @ B

    for make, expected, programs in [
        (lambda: mj.compose(after, composite), P @ Q.T @ dense, 1),  # Q pulled back
        (lambda: mj.compose(composite, before), dense @ P @ R.T, 3),  # P pushed forward
    ]:
        made = []
        first = lowerings_during(lambda: made.append(jax.block_until_ready(make())))  # noqa: B023
        assert type(made[0]) is mj.LowRank
        np.testing.assert_allclose(made[0].to_dense(), expected, rtol=1e-12)
        assert first == programs
        assert lowerings_during(make) == 0  # the same structure and shapes: compiled


# Last in the file: it empties JAX's caches (once), which would make the tests after it
# compile again what they share with those before.
def test_an_eager_product_or_dense_matrix_is_one_program():
    """Called on concrete arrays, ``to_dense``, ``mv``, ``vm`` (and for square operators
    ``diagonal``, ``trace``, ``logdet``) compile one program each (a composite's eager
    operations would compile one by one), with the values the same methods give under
    ``jit``; a second call compiles nothing."""
    jax.clear_caches()
    rng = np.random.default_rng(54)  # host draws: nothing to compile again
    too_many = {}
    for name in sorted(CASES):
        op = CASES[name]()
        v, u = (jax.device_put(rng.normal(size=shape)) for shape in (op.in_shape, op.out_shape))
        expected = jax.jit(lambda o, v, u: (o.to_dense(), o.mv(v), o.vm(u)))(op, v, u)
        calls = {"to_dense": op.to_dense, "mv": lambda: op.mv(v), "vm": lambda: op.vm(u)}  # noqa: B023
        too_many |= _one_program_each(op, calls, expected)
        assert lowerings_during(op.to_dense) == 0, name  # the compiled program again
    for name in sorted(SQUARE):
        op = SQUARE[name]()
        expected = jax.jit(lambda o: (o.diagonal(), o.trace(), o.logdet()))(op)
        calls = {"diagonal": op.diagonal, "trace": op.trace, "logdet": op.logdet}
        too_many |= _one_program_each(op, calls, expected)
    assert not too_many, too_many


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: mj.Kronecker(jnp.ones(3), jnp.ones((2, 2))), r"Kronecker\(A, B\): A must be"),
        (lambda: mj.BlockDiagonal(jnp.ones((2, 2))), r"blocks must have shape \(N, n, m\)"),
        (lambda: mj.LowRank(jnp.ones((3, 1)), jnp.ones((3, 2))), r"the same rank axis"),
        (
            lambda: mj.Scaled(jnp.array([1.0, 2.0, 3.0]), mj.Dense(jnp.ones((3, 3)), 1)),
            r"Scaled\(scale, operator\): scale must be a number .* got shape \(3,\)",
        ),
        (
            lambda: mj.WeightedGram(jnp.ones((4, 2)), jnp.ones(3)),
            r"WeightedGram\(X, weights\): weights must be a number or of shape \(4,\)",
        ),
        (
            lambda: mj.WeightedGram(jnp.ones(4), jnp.ones(4)),
            r"WeightedGram\(X, weights\): X must be a matrix \(n, d\); got shape \(4,\)",
        ),
        (
            lambda: mj.DiagonalPlusLowRank(
                jnp.ones((2, 2)), jnp.ones((2, 2, 1)), jnp.ones((2, 2, 1))
            ),
            r"DiagonalPlusLowRank\(values, U, V\): values must be a vector",
        ),
        (
            lambda: mj.DiagonalPlusLowRank(jnp.ones(3), jnp.ones((3, 1)), jnp.ones((3, 2))),
            r"got shapes \(3,\), \(3, 1\) and \(3, 2\)",
        ),
    ],
    ids=[
        "Kronecker of a vector",
        "BlockDiagonal of a matrix",
        "LowRank of two ranks",
        "Scaled by a vector",
        "WeightedGram with too few weights",
        "WeightedGram of a vector",
        "DiagonalPlusLowRank of a matrix",
        "DiagonalPlusLowRank of two ranks",
    ],
)
def test_constructors_refuse_factors_of_the_wrong_rank(make, said):
    """They built operators of nonsense shapes (a Kronecker of a vector A) or failed deep
    inside einsum when used (a DiagonalPlusLowRank of 2-d values); a Scaled by a vector had
    an mv that scaled rows and a matrix that scaled columns. A batch of operators (jax.vmap
    returning one) still builds."""
    with pytest.raises(ValueError, match=said):
        make()
    batched = jax.vmap(lambda a: mj.Kronecker(a, a))(jnp.ones((3, 2, 2)))
    assert batched.A.shape == (3, 2, 2)
    assert jax.vmap(lambda b: mj.BlockDiagonal(b).trace())(jnp.ones((4, 2, 3, 3))).shape == (4,)
    scaled = jax.vmap(lambda c: mj.Scaled(c, mj.Dense(jnp.eye(2), 1)).trace())(jnp.arange(3.0))
    np.testing.assert_allclose(scaled, 2 * jnp.arange(3.0))
    low_rank = jax.vmap(lambda d: mj.DiagonalPlusLowRank(d, d[:, None], d[:, None]).trace())
    np.testing.assert_allclose(low_rank(jnp.ones((4, 3))), jnp.full(4, 6.0))


def test_a_weighted_gram_with_one_weight_is_that_weight_for_every_row():
    """``WeightedGram(A, 2)``, as the docs write the least-squares Hessian: its ``mv`` was
    right, but ``to_dense``, ``diagonal``, ``trace`` and ``logdet`` failed inside indexing or
    einsum."""
    A = _normal(0, (5, 3))
    expected = 2 * A.T @ A
    for weight in (2.0, jnp.array(2.0), 2):
        G = mj.WeightedGram(A, weight)
        assert G.weights.shape == (5,)
        np.testing.assert_allclose(G.to_dense(), expected, rtol=1e-6)
        np.testing.assert_allclose(G.mv(jnp.ones(3)), expected @ jnp.ones(3), rtol=1e-6)
        np.testing.assert_allclose(G.diagonal(), jnp.diag(expected), rtol=1e-6)
        np.testing.assert_allclose(G.trace(), jnp.trace(expected), rtol=1e-6)
        np.testing.assert_allclose(G.logdet(), jnp.linalg.slogdet(expected)[1], rtol=1e-6)


@pytest.mark.parametrize(
    "f",
    [jnp.tanh, jax.nn.softmax, lambda x: x[::-1], lambda x: jnp.tanh(x) + jnp.ones((3, 3)) @ x],
    ids=["Diagonal", "DiagonalPlusLowRank", "Reverse", "Sum"],
)
def test_a_complex_scale_of_a_real_jacobian_transposes_as_jax_does(f):
    """(c J).vm(u) for a real J is J^T Re(c u), real, as jax.vjp of v -> c J v at a real
    point (it was J^T (c u), complex); alone and composed."""
    x = jnp.array([0.1, -0.4, 0.7])
    u = jnp.array([1 + 2j, -1 + 0.5j, 0.3 - 1j])
    J, softmax = mj.jacobian(f)(x), mj.jacobian(jax.nn.softmax)(x)
    for op, apply in [
        (1j * J, lambda v: 1j * J.mv(v)),
        (J * (2 - 1j), lambda v: (2 - 1j) * J.mv(v)),
        (((1 + 2j) * J) @ softmax, lambda v: (1 + 2j) * J.mv(softmax.mv(v))),
        ((1 + 2j) * mj.Dense(J.to_dense(), 1), lambda v: (1 + 2j) * J.mv(v)),
    ]:
        expected = jax.vjp(apply, x)[1](u)[0]
        for actual in (op.vm(u), op.T.mv(u)):  # the transpose's mv was J^T (c u), complex
            assert actual.dtype == expected.dtype == jnp.float64
            np.testing.assert_allclose(actual, expected, atol=1e-15)
        np.testing.assert_allclose(op.T.to_dense(), op.to_dense().T, atol=1e-15)


_DENSIFIED = []


@operators.base.pytree(("array",), ("out_ndim", "layout", "stored"))
class _Counted(operators.Dense):
    """A dense operator that counts its densifications (when traced)."""

    def _numerator(self):
        _DENSIFIED.append(self)
        return super()._numerator()


def test_an_eager_to_dense_densifies_a_node_shared_by_many_paths_once():
    """jax.jit copies a node reached on several paths once per path (an operator is a tree
    to it); the eager to_dense passes the graph as it is, so X, reached on 2^8 paths of
    G <- (G X) + G, is densified once (an expm Hessian's 37 arrays arrived as 3425)."""
    A = 0.3 * _normal(0, (3, 3))
    X = _Counted(A, 1)
    G, expected = X, np.asarray(A)
    for _ in range(8):
        G = operators.Sum((operators.Composition(G, X), G))
        expected = expected @ np.asarray(A) + expected
    _DENSIFIED.clear()
    np.testing.assert_allclose(G.to_dense(), expected, rtol=1e-5, atol=1e-6)
    assert len(_DENSIFIED) == 1
    v = _normal(1, (3,))
    np.testing.assert_allclose(G.mv(v), expected @ v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_log_dets_and_solves_run_in_float32(dtype):
    """jaxlib's CPU LAPACK has no half-precision LU: logdet of tanh(x.astype(bfloat16))'s
    Jacobian raised NotImplementedError from inside it. Each square rule computes in
    float32 and rounds once, as the closed forms do."""
    x = jnp.array([0.5, -1.0, 2.0])
    rng = np.random.default_rng(3)
    ops = [
        mj.jacobian(lambda x: jnp.tanh(x.astype(dtype)) * 2)(x),
        mj.jacobian(lambda x: jnp.tanh(x.astype(dtype)).astype(jnp.float32))(x),
        mj.Dense(jnp.asarray(np.eye(3) * 2 + 0.3 * rng.standard_normal((3, 3)), dtype), 1),
        mj.DiagonalPlusLowRank(jnp.arange(1.0, 4.0, dtype=dtype), jnp.ones((3, 1), dtype),
                               jnp.full((3, 1), 0.5, dtype)),
        # V / d overflows in float16 (NaN), and 1e-4 is lost beside its shift of 10
        mj.DiagonalPlusLowRank(jnp.array([1e-4, 1.0], dtype), jnp.array([[0.0], [1.0]], dtype),
                               jnp.array([[10.0], [1.0]], dtype)),
        mj.Kronecker(jnp.asarray([[2.0, 0.5], [0.0, 1.0]], dtype), jnp.eye(2, dtype=dtype) * 3),
        mj.BlockDiagonal(jnp.asarray(np.eye(2) * 2 + 0.3 * rng.standard_normal((2, 2, 2)), dtype)),
    ]  # fmt: skip
    for op in ops:
        n = int(np.prod(op.in_shape))
        dense = np.asarray(op.to_dense(), np.float64).reshape(n, n)
        tol = mj.tolerance(dtype)  # the inputs are exact in dtype: one rounding at the end
        rhs = jnp.ones(op.out_shape, op.dtype)
        logdet, solution = op.logdet(), op.solve(rhs)
        assert abs(float(logdet) - np.linalg.slogdet(dense)[1]) < tol, type(op).__name__
        expected = np.linalg.solve(dense, np.ones(n))
        assert relative_error(np.asarray(solution, np.float64).ravel(), expected) < tol


def _doubled(levels):
    """X, then G <- G + G: the node X reached on 2^levels paths of a graph of levels + 1."""
    X = mj.Diagonal(jnp.arange(1.0, 4.0))
    G = X
    for _ in range(levels):
        G = operators.Sum((G, G))
    return G


def test_a_shared_graph_is_read_once_per_node_by_the_band_reader(monkeypatch):
    """band_of walked every path: the Hessian of a two-step RK4 loop (a few hundred nodes)
    took 170 s to simplify (13 million visits); now each node is read once."""
    banded_module = sys.modules[operators.Banded.__module__]
    calls = []
    band_of = banded_module.band_of
    monkeypatch.setattr(banded_module, "band_of", lambda *a: calls.append(1) or band_of(*a))
    band = banded_module.banded(_doubled(12))
    np.testing.assert_array_equal(band.to_dense(), 4096 * jnp.diag(jnp.arange(1.0, 4.0)))
    assert len(calls) < 40, len(calls)


def test_an_eager_call_reads_a_shared_graph_s_arrays_once(monkeypatch):
    """Whether an operator is concrete was read from its tree: 2^k leaves for a node on
    2^k paths (1.9 million for the RK4 Hessian, 2.4 s per eager to_dense)."""
    base = sys.modules[operators.Sum.__module__]
    seen = []
    is_concrete = base.is_concrete

    def counted(*trees):
        seen.append(len(jax.tree_util.tree_leaves(trees)))
        return is_concrete(*trees)

    monkeypatch.setattr(base, "is_concrete", counted)
    G = _doubled(12)
    np.testing.assert_array_equal(G.to_dense(), 4096 * jnp.diag(jnp.arange(1.0, 4.0)))
    np.testing.assert_array_equal(G.mv(jnp.ones(3)), 4096 * jnp.arange(1.0, 4.0))
    assert max(seen) <= 2, seen


def test_a_hessian_is_a_pytree_of_its_graph_s_arrays_each_once():
    """A Hessian flattened as a tree: a node shared by 2^12 paths gave 4096 leaves, and a
    Hessian returned from jax.jit came back with each copy its own array (the RK4 loop's:
    to_dense 24 s, 0.4 s before the jit). Now its leaves are the graph's arrays, each once,
    and jit, tree_map and unflatten rebuild it with its sharing."""
    H = mj.Hessian(_doubled(12), "f")
    leaves, structure = jax.tree_util.tree_flatten(H)
    assert len(leaves) == 1, len(leaves)
    expected = 4096 * jnp.diag(jnp.arange(1.0, 4.0))
    for H2 in (
        jax.jit(lambda H: H)(H),
        jax.tree_util.tree_map(lambda a: a * 2, H),
        jax.tree_util.tree_unflatten(structure, [jnp.ones(3)]),
    ):
        assert isinstance(H2, mj.Hessian) and H2.name == "f"
        assert len(operators.base._graph_of(H2)[1]) == 1  # still one node on every path
    np.testing.assert_array_equal(jax.jit(lambda H: H)(H).to_dense(), expected)
    np.testing.assert_array_equal(jax.tree_util.tree_map(lambda a: a * 2, H).mv(jnp.ones(3)),
                                  2 * expected @ jnp.ones(3))  # fmt: skip
    assert jax.tree_util.tree_structure(jax.jit(lambda H: H)(H)) == structure


_PUSHED = []


@operators.base.pytree(("array",), ("out_ndim", "layout", "stored"))
class _CountedMv(operators.Dense):
    """A dense operator that counts the tangents and cotangents pushed through it (when
    traced)."""

    def mv(self, tangent):
        _PUSHED.append(self)
        return super().mv(tangent)

    def vm(self, cotangent):
        _PUSHED.append(self)
        return super().vm(cotangent)


def test_to_dense_pushes_a_vector_through_a_shared_part_once():
    """A composition densifies by pushing its inner columns through the outer map's mv; a
    shared outer part (G <- (G + G) D) met the same vector on every path and was traced
    once per path: a flax LSTM's Hessian took 20 s at 2 steps, over 240 s at 3."""
    A = 0.5 * _normal(2, (3, 3))
    D = mj.Dense(0.5 * jnp.eye(3) + 0.1, 1)
    G, expected = _CountedMv(A, 1), np.asarray(A)
    for _ in range(10):
        G = operators.Composition(operators.Sum((G, G)), D)
        expected = 2 * expected @ np.asarray(D.to_dense())
    _PUSHED.clear()
    np.testing.assert_allclose(G.to_dense(), expected, rtol=1e-5)
    assert len(_PUSHED) <= 10, len(_PUSHED)


def test_mv_pushes_a_tangent_through_a_shared_part_once():
    """The same for mv itself, eager and under jit: the memo lived only inside to_dense,
    and mv walked every path (the Hessian of a two-step RK4 loop: H.mv over 200 s, now
    0.4 s). The outermost mv keeps it for the calls it makes."""
    G, expected = _CountedMv(jnp.eye(3) / 2, 1), np.eye(3) / 2
    for _ in range(12):
        G = operators.Sum((G, G))
        expected = 2 * expected
    v = jnp.arange(1.0, 4.0)
    for mv in (G.mv, jax.jit(lambda v: G.mv(v))):
        _PUSHED.clear()
        np.testing.assert_allclose(mv(v), expected @ v, rtol=1e-6)
        assert len(_PUSHED) == 1, len(_PUSHED)


def test_vm_pushes_the_summed_cotangents_through_a_shared_part_once():
    """In vm a shared inner part meets a different cotangent on every path (G <- A G + B G:
    A^T u and B^T u), so no memo of vectors helps: pushed path by path it took 2^k
    products (here 256) (a two-step RK4 Hessian's vm: minutes; a flax nnx MLP's: over 95 s). Reverse
    accumulation sums a node's cotangents first: each map once, eager and under jit."""
    A = mj.Dense(0.5 * _normal(3, (3, 3)), 1)
    B = mj.Dense(0.5 * _normal(4, (3, 3)), 1)
    base = _normal(5, (3, 3))
    G, expected = _CountedMv(base, 1), np.asarray(base)
    for _ in range(8):
        G = operators.Sum((operators.Composition(A, G), operators.Composition(B, G)))
        expected = (np.asarray(A.to_dense()) + np.asarray(B.to_dense())) @ expected
    u = jnp.arange(1.0, 4.0)
    for vm in (G.vm, jax.jit(lambda u: G.vm(u))):
        _PUSHED.clear()
        np.testing.assert_allclose(vm(u), u @ expected, rtol=1e-9)
        assert len(_PUSHED) == 1, len(_PUSHED)


def _shared_chain(depth):
    """G <- A G + B G: 2^depth paths over 3 depth + 1 nodes."""
    A, B = mj.Dense(0.5 * _normal(3, (3, 3)), 1), mj.Dense(0.5 * _normal(4, (3, 3)), 1)
    G = mj.Diagonal(jnp.arange(1.0, 4.0))
    for _ in range(depth):
        G = operators.Sum((operators.Composition(A, G), operators.Composition(B, G)))
    return G


def test_shared_carries_a_graph_through_jit_by_its_arrays_each_once():
    """As a tree, G <- A G + B G flattens to a leaf per path (2^20 here) and jax.jit
    compiles as many outputs (an RK4 step unrolled in a scan: over 2 minutes and 10 GB);
    ``Shared`` flattens it to its three arrays and rebuilds the sharing."""
    G = _shared_chain(20)
    leaves, _ = jax.tree_util.tree_flatten(operators.base.Shared([G, None]))
    assert len(leaves) == 3
    back = jax.jit(lambda s: s)(operators.base.Shared([G, None])).value
    assert back[1] is None and back[0].terms[0].inner is back[0].terms[1].inner
    u = jnp.arange(1.0, 4.0)
    np.testing.assert_allclose(back[0].vm(u), G.vm(u), rtol=1e-12)


def test_a_tree_signature_reads_a_shared_graph_once_and_ignores_sharing():
    """A loop's carried Jacobians keep their structure when their trees are equal: read
    over the graph (each node once), not over its 2^40 paths; a copy with nothing shared
    has the same signature, a changed shape another."""
    G = _shared_chain(40)
    signature = operators.base.tree_signature([G])
    assert len(signature[1]) <= 4 * 41
    small = _shared_chain(2)
    A, B = small.terms[0].outer, small.terms[1].outer
    inner = small.terms[0].inner
    copy = operators.Sum(
        (operators.Composition(A, inner), operators.Composition(B, _shared_chain(1)))
    )
    assert operators.base.tree_signature([copy]) == operators.base.tree_signature([small])
    wider = operators.Sum(
        (operators.Composition(A, inner), operators.Composition(B, mj.Diagonal(jnp.ones(3))))
    )
    assert operators.base.tree_signature([wider]) != operators.base.tree_signature([small])
