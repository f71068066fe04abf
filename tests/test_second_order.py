"""``hessian``, ``laplacian`` and ``gauss_newton`` against JAX in float64: the dense matrix
against ``jax.hessian``, products against ``jvp`` of ``grad``, the structure each program
should show, edge points, ``jit``, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj
from matcalc_jax.operators import singular
from matcalc_jax.operators.banded import Banded
from matcalc_jax.transform.second_order import GaussNewton, Hessian

jax.config.update("jax_enable_x64", True)

KEY = jax.random.PRNGKey(7)
N = 12
X = jax.random.normal(jax.random.fold_in(KEY, 1), (20, N)) / np.sqrt(N)
LABELS = (jax.random.uniform(jax.random.fold_in(KEY, 2), (20,)) > 0.5).astype(jnp.float64)
COUNTS = jnp.round(jax.random.uniform(jax.random.fold_in(KEY, 3), (20,)) * 4)
A = jax.random.normal(jax.random.fold_in(KEY, 4), (N, N))
SPD = A @ A.T / N + jnp.eye(N)


def logistic(w):
    z = X @ w
    return jnp.sum(jnp.logaddexp(0.0, z) - LABELS * z)


def least_squares(w):
    return jnp.sum((X @ w - LABELS) ** 2)


def poisson(w):
    z = X @ w
    return jnp.sum(jnp.exp(z) - COUNTS * z)


def separable(x):
    return jnp.sum(jnp.sin(x) + x**4 / 4)


def huber(x):
    a = jnp.abs(x)
    return jnp.sum(jnp.where(a <= 1.0, 0.5 * x**2, a - 0.5))


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def smoothness(x):
    second = x[2:] - 2 * x[1:-1] + x[:-2]
    return jnp.sum(second**2) + jnp.sum(jnp.cosh(x))


def cross_entropy(z):
    return -jax.nn.log_softmax(z)[3]


def per_example(w):
    return jnp.sum(jax.vmap(lambda row: jnp.sum(jnp.tanh(row) ** 2) + jnp.prod(row))(w))


def barrier(x):
    return 0.5 * x @ SPD @ x - jnp.sum(jnp.log(x))


def neg_logdet(m):
    return -jnp.linalg.slogdet(m)[1]


def mlp_loss(params):
    h = jnp.tanh(X @ params["w1"] + params["b1"])
    out = h @ params["w2"]
    return jnp.mean((out - LABELS) ** 2)


SEGMENTS = jnp.arange(N) % 3


def graph_pooling(x):  # a graph network's max and min readout (scatter-max, scatter-min)
    pooled = jax.ops.segment_max(x * x[::-1], SEGMENTS, 3)
    return jnp.sum(jnp.tanh(pooled) ** 2) + jnp.sum(jax.ops.segment_min(jnp.sin(x), SEGMENTS, 3))


def _vector():
    return jax.random.normal(jax.random.fold_in(KEY, 5), (N,)) * 0.7


PROGRAMS = {
    "logistic": (logistic, _vector(), "WeightedGram"),
    "least_squares": (least_squares, _vector(), "WeightedGram"),
    "poisson": (poisson, _vector(), "WeightedGram"),
    "separable": (separable, _vector(), "Diagonal"),
    "huber": (huber, _vector() * 3, "Diagonal"),
    "rosenbrock": (rosenbrock, _vector(), "Banded"),
    "smoothness": (smoothness, _vector(), "Banded"),
    "cross_entropy": (cross_entropy, _vector(), "DiagonalPlusLowRank"),
    "per_example": (per_example, jax.random.normal(KEY, (5, 3)), "BlockDiagonal"),
    "barrier": (barrier, jnp.abs(_vector()) + 0.5, None),
    "graph_pooling": (graph_pooling, _vector(), None),
    "neg_logdet": (neg_logdet, jnp.eye(4) + 0.2 * jax.random.normal(KEY, (4, 4)), None),
}


def _tangent(x):
    return jax.random.normal(jax.random.fold_in(KEY, 9), x.shape)


def _hvp(f, x, v):
    return jax.jvp(jax.grad(f), (x,), (v,))[1]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_hessian_equals_jax(name):
    f, x, _ = PROGRAMS[name]
    H = mj.hessian(f)(x)  # eager, as a user's first try is
    v = _tangent(x)
    # JAX's side in one compiled program (its eager operations are not what is tested)
    expected, hvp = jax.jit(lambda x, v: (jax.hessian(f)(x), _hvp(f, x, v)))(x, v)
    np.testing.assert_allclose(H.to_dense(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(H.mv(v), hvp, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(H.vm(v), hvp, rtol=1e-10, atol=1e-10)
    n = x.size
    dense = np.asarray(expected).reshape(n, n)
    np.testing.assert_allclose(H.diagonal().reshape(-1), np.diag(dense), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(H.trace(), np.trace(dense), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_hessian_under_jit(name):
    f, x, _ = PROGRAMS[name]
    dense = jax.jit(lambda x: mj.hessian(f)(x).to_dense())(x)
    expected = jax.jit(jax.hessian(f))(x)
    np.testing.assert_allclose(dense, expected, rtol=1e-10, atol=1e-10)
    H = jax.jit(mj.hessian(f))(x)  # the operator passes through jit as a pytree
    assert isinstance(H, Hessian)
    np.testing.assert_allclose(H.trace(), np.trace(np.reshape(expected, (x.size, -1))))


@pytest.mark.parametrize(
    "name", sorted(k for k, (_, _, kind) in PROGRAMS.items() if kind is not None)
)
def test_hessian_structure(name):
    f, x, kind = PROGRAMS[name]
    H = mj.hessian(f)(x)
    assert type(H.operator).__name__ == kind, str(H)
    assert kind in str(H)
    if kind == "WeightedGram":  # the data and one weight a row
        assert mj.operators.storage(H) == X.size + X.shape[0]
    else:
        assert mj.operators.storage(H) < x.size**2


def test_glm_gram_stores_data_and_weights():
    H = mj.hessian(logistic)(_vector())
    gram = H.operator
    assert gram.X.shape == X.shape and gram.weights.shape == (X.shape[0],)
    s = jax.nn.sigmoid(X @ _vector())
    np.testing.assert_allclose(gram.weights, s * (1 - s), rtol=1e-12)


def test_chained_objectives_store_o_n():
    n = 200
    x = jnp.linspace(-1.0, 1.5, n)
    for f, offsets in [(rosenbrock, (-1, 0, 1)), (smoothness, (-2, -1, 0, 1, 2))]:
        H = mj.hessian(f)(x)
        assert isinstance(H.operator, Banded)
        assert H.operator.offsets == offsets
        assert mj.operators.storage(H) <= len(offsets) * n
        np.testing.assert_allclose(H.to_dense(), jax.hessian(f)(x), rtol=1e-10, atol=1e-9)


def test_the_transpose_of_a_hessian_that_is_not_symmetric():
    """A custom_vjp whose backward rule (u -> u cumsum(z)) is not its function's derivative:
    jax.hessian is lower triangular, and H.T is its transpose, not H."""

    @jax.custom_vjp
    def g(z):
        return jnp.sin(z)

    g.defvjp(lambda z: (jnp.sin(z), z), lambda z, u: (u * jnp.cumsum(z),))
    f = lambda x: jnp.sum(g(x))  # noqa: E731
    x = jnp.array([1.0, 2.0, 3.0])
    H, expected = mj.hessian(f)(x), jax.hessian(f)(x)
    assert not np.allclose(expected, expected.T)
    np.testing.assert_allclose(H.to_dense(), expected, rtol=1e-14)
    np.testing.assert_allclose(H.T.to_dense(), expected.T, rtol=1e-14)
    u = jnp.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(H.T.mv(u), u @ expected, rtol=1e-14)


def test_banded_transpose_and_vm():
    H = mj.hessian(rosenbrock)(_vector()).operator
    dense = H.to_dense()
    np.testing.assert_allclose(H.T.to_dense(), dense.T, rtol=1e-12)
    u = _tangent(_vector())
    np.testing.assert_allclose(H.vm(u), u @ dense, rtol=1e-12)


def test_regular_solve_and_logdet():
    x = jnp.abs(_vector()) + 0.5
    H = mj.hessian(barrier)(x)
    dense = np.asarray(jax.hessian(barrier)(x))
    b = _tangent(x)
    np.testing.assert_allclose(H.solve(b), np.linalg.solve(dense, b), rtol=1e-9)
    np.testing.assert_allclose(H.logdet(), np.linalg.slogdet(dense)[1], rtol=1e-10)
    Hs = mj.hessian(separable)(_vector())
    dense = np.asarray(jax.hessian(separable)(_vector()))
    np.testing.assert_allclose(Hs.logdet(), np.linalg.slogdet(dense)[1], rtol=1e-10)


def test_pytree_arguments_are_arranged_as_jax():
    params = {
        "w1": jax.random.normal(KEY, (N, 3)) * 0.5,
        "b1": jnp.zeros(3),
        "w2": jax.random.normal(jax.random.fold_in(KEY, 1), (3,)),
    }
    tree = mj.hessian(mlp_loss)(params)
    expected = jax.hessian(mlp_loss)(params)
    for outer in expected:
        for inner in expected[outer]:
            np.testing.assert_allclose(
                tree[outer][inner].to_dense(), expected[outer][inner], rtol=1e-9, atol=1e-12
            )
    H = mj.hessian(mlp_loss, ravel=True)(params)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    dense = jax.hessian(lambda p: mlp_loss(unravel(p)))(flat)
    np.testing.assert_allclose(H.to_dense(), dense, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(H.trace(), jnp.trace(dense), rtol=1e-9)


def test_tuple_argnums_and_has_aux():
    def f(a, b):
        return jnp.sum(jnp.sin(a) * b**2), a.sum()

    a, b = _vector(), _vector() + 1
    tree, aux = mj.hessian(f, argnums=(0, 1), has_aux=True)(a, b)
    expected = jax.hessian(lambda a, b: f(a, b)[0], argnums=(0, 1))(a, b)
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(tree[i][j].to_dense(), expected[i][j], rtol=1e-10)
    np.testing.assert_allclose(aux, a.sum())


@pytest.mark.parametrize(
    "f, x",
    [
        (lambda x: jnp.sum(jax.nn.relu(x) ** 2), jnp.array([-1.0, 0.0, 2.0])),
        (lambda x: jnp.sum(jnp.abs(x) ** 3), jnp.array([-1.0, 0.0, 2.0])),
        (huber, jnp.array([-1.0, 1.0, 0.0, 3.0])),  # the kinks of Huber at |x| = 1
        (logistic, jnp.full((N,), 60.0)),  # saturated logistic
        (lambda x: jnp.sum(jnp.where(x > 0, jnp.log1p(x**2), x**3)), jnp.array([-1.0, 0.0, 1.0])),
    ],
)
def test_edge_points_follow_jax(f, x):
    np.testing.assert_allclose(
        mj.hessian(f)(x).to_dense(), jax.hessian(f)(x), rtol=1e-9, atol=1e-17
    )


def test_nan_propagates():
    x = _vector().at[2].set(jnp.nan)
    H = mj.hessian(separable)(x)
    assert np.isnan(H.diagonal()[2]) and np.isnan(H.trace())
    assert np.isnan(H.mv(jnp.ones(N))[2])


def test_float32():
    x = _vector().astype(jnp.float32)
    H = mj.hessian(lambda w: logistic(w.astype(jnp.float64)).astype(jnp.float32))(x)
    assert H.dtype == jnp.float32
    f32 = lambda w: jnp.sum(jnp.logaddexp(0.0, X.astype(jnp.float32) @ w))  # noqa: E731
    H = mj.hessian(f32)(x)
    assert H.dtype == jnp.float32
    np.testing.assert_allclose(H.to_dense(), jax.hessian(f32)(x), rtol=2e-5, atol=2e-6)


# ------------------------------------------------------------------------ laplacian


def mlp(x, depth=2, width=16):
    h = x
    for k in range(depth):
        w = jax.random.normal(jax.random.fold_in(KEY, 100 + k), (width, h.shape[0]))
        h = jnp.tanh(w @ h / np.sqrt(h.shape[0]))
    return jnp.sum(h * jnp.linspace(-1.0, 1.0, width))


@pytest.mark.parametrize("name", ["separable", "rosenbrock", "logistic", "per_example"])
def test_laplacian_is_the_trace(name):
    f, x, _ = PROGRAMS[name]
    expected = jnp.trace(jax.hessian(f)(x).reshape(x.size, x.size))
    np.testing.assert_allclose(mj.laplacian(f)(x), expected, rtol=1e-10)


def test_laplacian_of_an_mlp():
    x = _vector()
    expected = jnp.trace(jax.hessian(mlp)(x))
    np.testing.assert_allclose(mj.laplacian(mlp)(x), expected, rtol=1e-10)
    np.testing.assert_allclose(jax.jit(mj.laplacian(mlp))(x), expected, rtol=1e-10)


# ---------------------------------------------------------------------- Gauss-Newton


def _model(w, inputs):
    return jnp.tanh(inputs @ w)


def _loss(y):
    return 0.5 * jnp.sum((y - LABELS) ** 2) + jnp.sum(jnp.log1p(y**2))


def test_gauss_newton_equals_jt_h_j():
    w = _vector()
    G = mj.gauss_newton(_model, _loss)(w, X)
    assert isinstance(G, GaussNewton)
    J = jax.jacfwd(_model)(w, X)
    H = jax.hessian(_loss)(_model(w, X))
    expected = J.T @ H @ J
    np.testing.assert_allclose(G.to_dense(), expected, rtol=1e-10, atol=1e-12)
    v = _tangent(w)
    y, jv = jax.jvp(lambda w: _model(w, X), (w,), (v,))
    hjv = jax.jvp(jax.grad(_loss), (y,), (jv,))[1]
    expected_mv = jax.vjp(lambda w: _model(w, X), w)[1](hjv)[0]
    np.testing.assert_allclose(G.mv(v), expected_mv, rtol=1e-10)
    np.testing.assert_allclose(G.diagonal(), jnp.diag(expected), rtol=1e-10)
    np.testing.assert_allclose(G.trace(), jnp.trace(expected), rtol=1e-10)
    np.testing.assert_allclose(jax.jit(mj.gauss_newton(_model, _loss))(w, X).mv(v), G.mv(v))


def test_gauss_newton_of_pytree_parameters():
    params = {"w": jax.random.normal(KEY, (N, 3)) * 0.5, "b": jnp.ones(3) * 0.1}

    def model(p, inputs):
        return jax.nn.log_softmax(inputs @ p["w"] + p["b"], axis=-1)

    targets = jax.nn.one_hot(jnp.arange(20) % 3, 3)

    def loss(logp):
        return -jnp.sum(targets * logp)

    G = mj.gauss_newton(model, loss)(params, X)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    J = jax.jacfwd(lambda p: model(unravel(p), X).reshape(-1))(flat)
    H = jax.hessian(lambda y: loss(y.reshape(20, 3)))(model(params, X).reshape(-1))
    expected = J.T @ H @ J
    np.testing.assert_allclose(G.to_dense(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(G.diagonal(), jnp.diag(expected), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------ bad input


def test_non_scalar_function_is_refused():
    with pytest.raises(TypeError, match=r"hessian\(<lambda>\).*expected a real scalar"):
        mj.hessian(lambda x: x**2)(jnp.ones(3))
    # a container of one scalar: named, with the way out (it was JAX's "Gradient only
    # defined for scalar-output functions" from inside jax.grad)
    for transform in (mj.hessian, mj.laplacian):
        with pytest.raises(TypeError, match=r"returns \{'loss': 'float.*\[\]'\}.*one leaf"):
            transform(lambda x: {"loss": jnp.sum(x**3)})(jnp.ones(3))


@pytest.mark.parametrize("x", [jnp.arange(3), jnp.ones(3, jnp.complex64)])
def test_integer_or_complex_argument_is_refused(x):
    with pytest.raises(TypeError, match=r"hessian\(separable\): argument 0"):
        mj.hessian(separable)(x)


def test_singular_solve_is_an_error_and_logdet_is_minus_inf():
    H = mj.hessian(lambda x: jnp.sum(x[:2] ** 2))(jnp.ones(3))
    assert np.isneginf(H.logdet())
    with pytest.raises(ValueError, match=r"hessian\(<lambda>\)\.solve: the Hessian is singular"):
        H.solve(jnp.ones(3))


def test_a_gauss_newton_matrix_of_fewer_outputs_than_parameters_is_singular():
    """J^T H J has rank at most m: with m = 2 outputs and n = 3 parameters log|det| is
    -inf and solve an error (a NaN under jit), as a singular Hessian's. The LU of the
    dense matrix rounded: a finite log|det| and a solution of 1e15 or NaN, no error."""
    model = lambda w: jnp.tanh(jnp.array([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]]) @ w)  # noqa: E731
    loss = lambda y: jnp.sum((y - 0.5) ** 2)  # noqa: E731
    w = jnp.array([0.1, -0.2, 0.3])
    G = mj.gauss_newton(model, loss)(w)
    assert np.isneginf(G.logdet())
    with pytest.raises(ValueError, match=r"gauss_newton\(\.\.\.\)\.solve: J\^T H J is singular"):
        G.solve(jnp.ones(3))
    solution = jax.jit(lambda w: mj.gauss_newton(model, loss)(w).solve(jnp.ones(3)))(w)
    assert bool(jnp.all(jnp.isnan(solution)))
    square = mj.gauss_newton(lambda w: jnp.tanh(w) * 2, loss)(w)  # m = n: the LU's answer
    expected = jnp.linalg.solve(square.to_dense(), jnp.ones(3))
    np.testing.assert_allclose(square.solve(jnp.ones(3)), expected, rtol=1e-12)


def test_gauss_newton_argnums_must_be_an_int():
    with pytest.raises(TypeError, match="gauss_newton: argnums"):
        mj.gauss_newton(_model, _loss, argnums=(0,))


def test_a_hessian_returned_from_jit_keeps_the_sharing_of_its_graph():
    """The Hessian of a two-step RK4 loop shares the gradient's nodes on 1.9 million paths:
    returned from jax.jit it came back as that many arrays (a MemoryError at five steps),
    and at one step its to_dense took 24 s, passing it into jit 52 s. Its leaves are now
    the graph's arrays, each once."""
    W1 = jnp.sin(jnp.arange(24.0)).reshape(8, 3) / 2
    W2 = jnp.cos(jnp.arange(24.0)).reshape(3, 8) / 2

    def rk4_twice(y, h=0.1):
        for _ in range(2):
            k1 = W2 @ jnp.tanh(W1 @ y)
            k2 = W2 @ jnp.tanh(W1 @ (y + h / 2 * k1))
            k3 = W2 @ jnp.tanh(W1 @ (y + h / 2 * k2))
            k4 = W2 @ jnp.tanh(W1 @ (y + h * k3))
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return jnp.sum(y**2)

    x = jnp.array([0.3, -0.2, 0.5])
    H = jax.jit(lambda x: mj.hessian(rk4_twice)(x))(x)
    leaves = jax.tree_util.tree_leaves(H)
    assert len(leaves) < 200 and len({id(leaf) for leaf in leaves}) == len(leaves)
    expected = jax.hessian(rk4_twice)(x)
    np.testing.assert_allclose(H.to_dense(), expected, rtol=1e-12, atol=1e-14)
    v = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(jax.jit(lambda H, v: H.mv(v))(H, v), expected @ v, rtol=1e-12)


def test_a_solve_singular_to_working_precision_is_an_error():
    """Softmax cross-entropy's Hessian diag(p) - p p^T is singular (ones in its null
    space), but its LU rounded to a finite log|det| (-37.7) and a finite x of size 1e16
    with G x - b = [3.6, -3.5, -12.3] for b = ones: returned without an error. The solve
    now bounds the condition number from below and refuses past 1 / (16 eps) (or finds
    log|det| = -inf, as the Gauss-Newton matrix's LU does); a regularized one solves."""
    c, labels, w = (
        jnp.array([1.0, 2.0, 3.0]),
        jnp.array([0.0, 1.0, 0.0]),
        jnp.array([0.1, 0.2, 0.3]),
    )
    cross_entropy = lambda y: -jnp.sum(labels * jax.nn.log_softmax(y))  # noqa: E731
    G = mj.gauss_newton(lambda w: w * c, cross_entropy)(w)
    with pytest.raises(ValueError, match=r"J\^T H J is singular (\(log\|det G\| = -inf|to work)"):
        G.solve(jnp.ones(3))
    H = mj.hessian(lambda w: cross_entropy(w * c))(w)
    with pytest.raises(
        ValueError, match=r"the Hessian is singular (\(log\|det H\| = -inf|to work)"
    ):
        H.solve(jnp.ones(3))
    f = lambda w: cross_entropy(w * c) + 0.1 * jnp.sum(w**2)  # noqa: E731
    x = mj.hessian(f)(w).solve(jnp.ones(3))
    np.testing.assert_allclose(jax.hessian(f)(w) @ x, jnp.ones(3), rtol=1e-12)


def test_a_singular_solve_the_condition_bound_misses_is_an_error():
    """A shift-invariant loss (the third moment of standardized x): its Hessian has the
    ones in its null space, singular values [60.6, ..., 0.46, 7e-15]. The Woodbury solve
    returned 1.4e11 in every entry, with ||H x - b|| / ||b|| = 0.1, and no error: the
    condition bound reached 7.9e12, below 1 / (16 eps). A step of iterative refinement
    changes that x by all of its norm: an error now. Where the Hessian is not singular the
    same solve still answers (a diagonal entry 1e-13 of the others: cond 1e13). (The
    bound from a probe solved too now reaches 1.3e15 first.) A solve that returns a wrong
    x of a well-conditioned matrix is caught by the refinement step alone."""
    moment = lambda x: jnp.sum(((x - x.mean()) / jnp.sqrt(x.var() + 1e-5)) ** 3)  # noqa: E731
    x = jnp.abs(jax.random.normal(jax.random.key(3), (6,))) + 0.5
    b = jnp.cos(jnp.arange(6.0))
    H = mj.hessian(moment)(x)
    with pytest.raises(ValueError, match=r"the Hessian is singular to working precision"):
        H.solve(b)
    A = Hessian(mj.jacobian(lambda x: jnp.array([[2.0, 1.0], [1.0, 3.0]]) @ x)(jnp.zeros(2)))
    wrong = lambda rhs: 3 * A.solve(rhs)  # noqa: E731  (condition 2.6; x three times too large)
    with pytest.raises(ValueError, match=r"a step of iterative refinement changes the solution"):
        singular.check_solution("f", "A", "A", A, b[:2], wrong(b[:2]), A.solve)
    singular.check_solution("f", "A", "A", A, b[:2], A.solve(b[:2]), A.solve)
    weights = jnp.array([1.0, 1.0, 1.0, 1.0, 1.0, 1e-13])
    f = lambda x: jnp.sum(jnp.cosh(x) * weights) + jnp.sum(x) ** 2  # noqa: E731
    solution = mj.hessian(f)(x).solve(b)
    np.testing.assert_allclose(jax.hessian(f)(x) @ solution, b, rtol=1e-9, atol=1e-12)


def test_a_singular_solve_of_a_right_hand_side_in_the_range_is_an_error():
    """sum tanh(A x)^2 with A of 3 rows and 5 columns: a Hessian of rank 3. For b = H 1 the
    solve returned [56.2, -14.8, -11.8, -14.5, -0.5], which solves H x = b to 1e-15 but is
    one of a plane of solutions (1 is another), with no error: the checks saw only b, in
    the range. A fixed probe, solved too, has a part along the null space: an error now,
    whatever b is. A Hessian of full rank with the same b still answers."""
    A = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)))
    x = jnp.linspace(0.1, 0.5, 5)
    H = mj.hessian(lambda x: jnp.sum(jnp.tanh(A @ x) ** 2))(x)
    for b in (H.mv(jnp.ones(5)), A[0], jnp.ones(5)):
        with pytest.raises(ValueError, match=r"the Hessian is singular to working precision"):
            H.solve(b)
    f = lambda x: jnp.sum(jnp.tanh(A @ x) ** 2) + 0.5 * jnp.sum(x**2)  # noqa: E731
    b = H.mv(jnp.ones(5))
    np.testing.assert_allclose(jax.hessian(f)(x) @ mj.hessian(f)(x).solve(b), b, rtol=1e-12)


@pytest.mark.parametrize(("dtype", "largest"), [("float32", 1e6), ("float16", 1000.0)])
def test_a_diagonal_hessian_past_the_condition_bound_is_solved_exactly(dtype, largest):
    """diag(1, 1e6) in float32 has a condition number past 1 / (16 eps) but x_i = b_i / d_i
    is right to the last digit: it was refused for every b. A zero on the diagonal is
    still the error."""
    d = jnp.array([1.0, largest, 3.0], dtype)
    x, b = jnp.ones(3, dtype), jnp.array([1.0, 2.0, -3.0], dtype)
    with jax.enable_x64(False):
        H = mj.hessian(lambda x: 0.5 * jnp.sum(d * x * x))(x)
        assert isinstance(H.operator, mj.Diagonal)
        np.testing.assert_array_equal(H.solve(b), b / d)
        singular = mj.hessian(lambda x: 0.5 * jnp.sum(d.at[1].set(0) * x * x))(x)
        with pytest.raises(ValueError, match=r"the Hessian is singular"):
            singular.solve(b)


def _conditioned(rng, n, condition):
    """An (n, n) matrix with singular values spaced evenly in log from 1 to condition."""
    left, _ = np.linalg.qr(rng.standard_normal((n, n)))
    right, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return left @ np.diag(np.geomspace(1.0, condition, n)) @ right


def test_a_kronecker_hessian_is_judged_by_its_factors():
    """0.5 |A X B|_F^2 has the Hessian (A^T A) (x) (B B^T), solved by a solve with each
    factor: the digits of x depend on cond(A^T A) + cond(B B^T), not on their product, the
    whole Hessian's condition number. With cond(A) = cond(B) = 100 in float32 (factors of
    condition 1e4, the Hessian 1e8, past 1 / (16 eps)) the solve was refused, though x is
    right to 1e-4. A diagonal factor counts as condition 1 (its solve is entrywise). A
    factor past the bound is still the error, and so is a singular one."""
    rng = np.random.default_rng(5)
    X, b = (jnp.asarray(rng.standard_normal((6, 5)), jnp.float32) for _ in range(2))

    def hessian(A, B):
        A, B = jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)
        H = mj.hessian(lambda X: 0.5 * jnp.sum((A @ X @ B) ** 2))(X)
        assert isinstance(H.solve_structure(), mj.Kronecker)
        return H

    with jax.enable_x64(False):
        scaling = np.diag([1e3, 1.0, 1e-3, 2.0, 3.0])  # diagonal: solved entrywise
        for H in (
            hessian(_conditioned(rng, 6, 100.0), _conditioned(rng, 5, 100.0)),
            hessian(_conditioned(rng, 6, 10.0), scaling),
        ):
            structure = H.solve_structure()
            left, right = (np.asarray(f, np.float64) for f in (structure.A, structure.B))
            assert np.linalg.cond(np.kron(left, right.T)) > 1 / (16 * np.finfo(np.float32).eps)
            # The exact x of the factors held (the float32 dense matrix is no reference:
            # its rounding alone moves x by cond(H) eps).
            expected = np.linalg.solve(left, np.asarray(b, np.float64)) @ np.linalg.inv(right)
            solution = np.asarray(H.solve(b), np.float64)
            assert np.linalg.norm(solution - expected) / np.linalg.norm(expected) < 1e-4
        for A in (_conditioned(rng, 6, 1e4), np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 0.0])):
            with pytest.raises(ValueError, match=r"the Hessian is singular"):
                hessian(A, _conditioned(rng, 5, 2.0)).solve(b)


@pytest.mark.parametrize("axis", [0, 1])
def test_a_per_example_least_squares_hessian_and_its_gauss_newton_are_checked_by_block(axis):
    """0.5 |W_b x_b|^2 summed over a vmapped batch (W_1 = 1000 W_0, condition 2.8e6, each
    block 2.8): its Hessian is a composition, not a BlockDiagonal, and it and the
    Gauss-Newton matrix of the same model were refused in float32, though solved to 3e-8.
    Their batch axis (either axis of x) now bounds them block by block; a singular W_0 is
    still the error."""
    W = np.array([[1.0, 0.3], [0.2, 1.0]])
    S = np.array([[1.0, 1 / 3], [1 / 3, 1 / 9]])  # singular in exact arithmetic
    x0, b = jnp.ones((2, 2), jnp.float32), jnp.cos(jnp.arange(4.0, dtype=jnp.float32))

    def model(first):
        Ws = jnp.asarray(np.stack([first, 1000 * W]), jnp.float32)
        return lambda x: jax.vmap(lambda xb, Wb: Wb @ xb, in_axes=(axis, 0))(x, Ws)

    def half_square(y):
        return 0.5 * jnp.sum(y**2)

    with jax.enable_x64(False):
        for make in (
            lambda m: mj.hessian(lambda x: half_square(m(x)))(x0),
            lambda m: mj.gauss_newton(m, half_square)(x0),
        ):
            H = make(model(W))
            dense = np.asarray(H.to_dense(), np.float64).reshape(4, 4)
            expected = np.linalg.solve(dense, np.asarray(b, np.float64))
            solution = np.asarray(H.solve(b.reshape(2, 2)), np.float64).ravel()
            assert np.linalg.norm(solution - expected) / np.linalg.norm(expected) < 1e-6
            with pytest.raises(ValueError, match=r"is singular"):
                make(model(S)).solve(b.reshape(2, 2))


def test_a_half_precision_hessian_whose_log_det_overflows_is_solved():
    """0.01 I at n = 20000 in float16 has log|det| = -92103, -inf in float16: solve took
    that for a zero pivot and refused a condition-1 Hessian (and a block-diagonal one of
    condition-3 blocks). A zero on the diagonal is still the error."""
    x, b = jnp.ones(20000, jnp.float16), jnp.ones(20000, jnp.float16)
    H = mj.hessian(lambda x: 0.005 * jnp.sum(x**2))(x)
    assert bool(jnp.isneginf(H.logdet()))
    np.testing.assert_allclose(np.asarray(H.solve(b), np.float64), 100.0, rtol=1e-3)
    A = jnp.array([[0.02, 0.01], [0.01, 0.02]], jnp.float16)
    g = lambda x: jnp.sum(jax.vmap(lambda q: 0.5 * q @ (A @ q))(x))  # noqa: E731
    G = mj.hessian(g)(jnp.ones((10000, 2), jnp.float16))
    expected = np.linalg.solve(np.asarray(A, np.float64), np.ones(2))
    solution = np.asarray(G.solve(jnp.ones((10000, 2), jnp.float16)), np.float64)
    np.testing.assert_allclose(solution, np.broadcast_to(expected, (10000, 2)), rtol=2e-3)
    singular = mj.hessian(lambda x: 0.005 * jnp.sum(x[1:] ** 2))(x)
    with pytest.raises(ValueError, match=r"the Hessian is singular"):
        singular.solve(b)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_block_diagonal_hessian_is_checked_block_by_block(dtype):
    """Blocks of condition 3 scaled by 1, 1e3 and 1e6 (condition 3e6 together, past
    float32's 1 / (16 eps); 30 and 900 in float16) were refused, though each block is solved
    on its own to 3e-8: the bound is now the largest of the blocks' own. A block singular in
    exact arithmetic ([[1, 1/3], [1/3, 1/9]], a rounding away from singular) beside two
    large ones is still refused, for b in its range too."""
    large = (1e3, 1e6) if dtype == "float32" else (30.0, 900.0)
    A, S = np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([[1.0, 1 / 3], [1 / 3, 1 / 9]])
    X = jnp.linspace(0.1, 1.0, 6, dtype=dtype).reshape(3, 2)
    b = jnp.cos(jnp.arange(6, dtype=dtype)).reshape(3, 2)

    def energy(blocks):
        blocks = jnp.asarray(blocks, dtype)
        return lambda P: jnp.sum(jax.vmap(lambda q, M: 0.5 * q @ M @ q)(P, blocks))

    with jax.enable_x64(False):
        f = energy(np.stack([A, large[0] * A, large[1] * A]))
        H = mj.hessian(f)(X)
        assert isinstance(H.operator, mj.BlockDiagonal)
        dense = np.asarray(jax.hessian(f)(X), np.float64).reshape(6, 6)
        expected = np.linalg.solve(dense, np.asarray(b, np.float64).ravel())
        error = np.linalg.norm(np.asarray(H.solve(b), np.float64).ravel() - expected)
        assert error / np.linalg.norm(expected) < 10 * float(jnp.finfo(dtype).eps)
        G = mj.hessian(energy(np.stack([S, large[0] * A, large[1] * A])))(X)
        for rhs in (b, G.mv(b)):
            with pytest.raises(ValueError, match=r"the Hessian is singular"):
                G.solve(rhs)


@pytest.mark.parametrize("n", [50, 200])
def test_a_diagonal_plus_low_rank_hessian_singular_after_rounding_is_an_error(n):
    """0.5 |x|^2 - sum(x)^2 / (2 n): H = I - 1 1^T / n, singular along 1. Woodbury's
    capacitance 1 - n / n rounded to -eps, not 0, and solve returned a finite x for b in
    the range and out of it (the probe's bound reached 4.7e13, under 1 / (16 eps)); summed
    with each addition's error carried, it is 0. With (1 - 1e-15) sum(x)^2 it is 1e-15,
    which the capacitance's condition refuses. The same Hessian with 0.9 sum(x)^2 is
    solved."""
    x = jnp.linspace(0.1, 1.0, n)
    for c, said in ((1.0, "singular"), (1 - 1e-15, "Woodbury's identity has a condition")):
        H = mj.hessian(lambda x: 0.5 * jnp.sum(x**2) - 0.5 * c * jnp.sum(x) ** 2 / n)(x)  # noqa: B023
        assert isinstance(H.operator, mj.DiagonalPlusLowRank)
        for b in (jnp.ones(n), x - jnp.mean(x)):
            with pytest.raises(ValueError, match=said):
                H.solve(b)
    f = lambda x: 0.5 * jnp.sum(x**2) - 0.45 * jnp.sum(x) ** 2 / n  # noqa: E731
    b = jnp.cos(jnp.arange(n))
    expected = jnp.linalg.solve(jax.hessian(f)(x), b)
    np.testing.assert_allclose(mj.hessian(f)(x).solve(b), expected, rtol=1e-12)


@pytest.mark.parametrize("n", [1000, 3000])
def test_a_float32_diagonal_plus_low_rank_hessian_singular_in_exact_arithmetic_is_an_error(n):
    """I - 1 1^T / n in float32 for n >= 1000 was solved for b in its range: a matmul's sum
    of n products put 9e-6 of rounding in Woodbury's capacitance (a condition of 2.2e5,
    under 1 / (16 eps)), where the stored factors' own is at most 6e-8. Summed with the
    error of each addition carried, it is. The same rounding made I - 0.999 1 1^T / n
    (condition 1e3) solved 9e-3 off; now within cond eps."""
    with jax.enable_x64(False):
        x = jnp.linspace(0.1, 1.0, n, dtype=jnp.float32)
        H = mj.hessian(lambda p: 0.5 * jnp.sum(p**2) - 0.5 * jnp.sum(p) ** 2 / n)(x)
        assert isinstance(H.operator, mj.DiagonalPlusLowRank)
        for b in (x - jnp.mean(x), jnp.ones(n, jnp.float32)):
            with pytest.raises(ValueError, match=r"the Hessian is singular"):
                H.solve(b)
        f = lambda p: 0.5 * jnp.sum(p**2) - 0.4995 * jnp.sum(p) ** 2 / n  # noqa: E731
        b = jnp.cos(jnp.arange(n, dtype=jnp.float32))
        expected = np.linalg.solve(np.asarray(jax.hessian(f)(x), np.float64), b)
        solution = np.asarray(mj.hessian(f)(x).solve(b), np.float64)
    assert np.linalg.norm(solution - expected) / np.linalg.norm(expected) < 1e-4


def test_the_singularity_check_is_of_the_hessian_itself_not_of_a_rescaled_one():
    """Jacobi's scaling S H S, tried for badly scaled Hessians, refused H = [[d, 1, 0],
    [1, d, 0], [0, 0, 1]] at d = 1e-7 (condition 1; 4.9e6 after scaling) and solved a
    rank-5 Hessian 2 A^T A with columns scaled 10^-2..10^4 for a b in its range (its
    scaled bound fell to 7.9e13). Unscaled, the first is solved and the second refused."""
    d = 1e-7
    f = lambda z: z[0] * z[1] + 0.5 * d * (z[0] ** 2 + z[1] ** 2) + 0.5 * z[2] ** 2  # noqa: E731
    with jax.enable_x64(False):
        H = mj.hessian(f)(jnp.zeros(3, jnp.float32))
        b = jnp.array([1.0, 2.0, 3.0], jnp.float32)
        expected = np.linalg.solve(np.asarray(jax.hessian(f)(jnp.zeros(3)), np.float64), b)
        np.testing.assert_allclose(H.solve(b), expected, rtol=1e-6)
    B = jnp.array(
        [[-0.7, -0.2, 1.7, 0.7, -1.6, 0.0], [-0.6, 0.1, -1.6, 0.2, 0.2, 1.6],
         [0.3, 0.5, -1.5, 2.3, -1.9, 1.1], [-0.3, -0.9, -0.7, -0.7, 0.4, -0.1],
         [1.5, -1.8, 0.0, -0.9, 0.8, -2.1]]
    )  # fmt: skip
    A = B * 10.0 ** jnp.array([0.0, 1, 4, 1, -2, 3])
    H = mj.hessian(lambda x: jnp.sum((A @ x) ** 2))(jnp.zeros(6))
    with pytest.raises(ValueError, match=r"the Hessian is singular to working precision"):
        H.solve(H.mv(jnp.ones(6)))


def test_a_large_well_conditioned_diagonal_plus_low_rank_hessian_is_solved():
    """logsumexp(x) + |x|^2 / 2 + sum(x)^2 at n = 2000 in float32 (condition 4e3) has a
    capacitance condition of 1.3e4: a limit divided by sqrt(n) refused it."""
    n = 2000
    f = lambda x: jax.nn.logsumexp(x) + 0.5 * jnp.sum(x**2) + jnp.sum(x) ** 2  # noqa: E731
    with jax.enable_x64(False):
        x, b = jnp.linspace(-1.0, 1.0, n), jnp.cos(jnp.arange(n) * 1.0)
        expected = np.linalg.solve(np.asarray(jax.hessian(f)(x), np.float64), b)
        solution = np.asarray(mj.hessian(f)(x).solve(b), np.float64)
    assert np.linalg.norm(solution - expected) / np.linalg.norm(expected) < 1e-5


def test_a_float32_solve_of_a_large_right_hand_side_is_not_taken_for_singular():
    """The singularity checks' norms squared the entries in float32: a right-hand side of
    1e28 overflowed, the refinement step's size was inf and a Hessian of condition 2.6 was
    "singular"; they are now taken in float64, scaled by the largest entry."""
    A = np.array([[3.0, 1.0], [1.0, 2.0]], np.float32)
    with jax.enable_x64(False):
        H = mj.hessian(lambda x: 0.5 * x @ (jnp.asarray(A) @ x))(jnp.zeros(2, jnp.float32))
        for scale in (1.0, 1e24, 1e28, 1e36):
            b = np.array([1.0, -2.0], np.float32) * np.float32(scale)
            solution = H.solve(jnp.asarray(b))
            np.testing.assert_allclose(solution, np.linalg.solve(A, b), rtol=1e-5)


FIELDS = {
    "sin(x) |x|^2": lambda x: jnp.sin(x) * jnp.sum(x**2),
    "tanh(W x)": lambda x: jnp.tanh(jnp.linspace(-1.0, 1.0, 12).reshape(4, 3) @ x),
    "an outer product": lambda x: jnp.outer(jnp.tanh(x), x),
    "a flax MLP's 2 outputs": None,
}


@pytest.mark.parametrize("name", list(FIELDS))
def test_laplacian_of_a_field_is_each_outputs(name):
    """A vector field's Laplacian (a PINN's velocity) was refused ("expected a real
    scalar"): now each output's, the trace of jax.hessian's block for it, eagerly and
    under jit, in the output's shape."""
    f, x = FIELDS[name], jnp.array([0.3, -0.7, 1.2])
    if f is None:
        nn = pytest.importorskip("flax.linen")
        model = nn.Sequential([nn.Dense(8, param_dtype=jnp.float64), nn.tanh, nn.Dense(2)])
        params = model.init(jax.random.key(0), x)
        f = lambda x: model.apply(params, x)  # noqa: E731
    expected = jnp.trace(jax.hessian(f)(x), axis1=-2, axis2=-1)
    for jit in (lambda f: f, jax.jit):
        got = jit(mj.laplacian(f))(x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)


def test_laplacian_and_gauss_newton_errors_name_themselves_and_the_function_at_fault():
    """They build on hessian, whose errors named matcalc_jax.hessian(<lambda>) and "f" (a
    call the user never made); an integer model output was reported as the loss's
    "argument 0" with advice about argnums."""
    w = jnp.ones(3)
    square = lambda y: y**2  # noqa: E731
    rounded = lambda w: jnp.round(w).astype(int)  # noqa: E731
    cases = (
        (lambda: mj.laplacian(lambda x: {"y": x**3})(w), r"laplacian\(<lambda>\): f returns"),
        (
            lambda: mj.laplacian(lambda x: jnp.sum(x**3))(jnp.arange(3)),
            r"laplacian\(<lambda>\): argument 0 has dtype int",
        ),
        (
            lambda: mj.gauss_newton(lambda w: w * 2, square)(w),
            r"gauss_newton\(<lambda>\): loss returns float64\[3\]",
        ),
        (
            lambda: mj.gauss_newton(rounded, lambda y: jnp.sum(y**2.0))(w),
            r"gauss_newton\(<lambda>\): model returns \['int",
        ),
    )
    for call, message in cases:
        with pytest.raises(TypeError, match=message):
            call()
