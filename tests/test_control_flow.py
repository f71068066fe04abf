"""matcalc_jax.jacobian through control flow: cond / switch, scan (fori_loop with static
bounds, lax.map), while_loop (fori_loop with traced bounds), eager and under jit, against
jax.jacfwd / jvp / vjp in float64, with the structure each keeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import matcalc_jax as mj
from matcalc_jax.catalogue.corpus import rk4  # ten RK4 steps of an elementwise field
from matcalc_jax.operators.stacked import Stacked

from .helpers import assert_jacobians_close, assert_transform_matches_autodiff

X = jnp.array([0.3, -1.2, 2.0, 0.1, 0.7, -0.5])
W = jnp.sin(jnp.arange(36.0).reshape(6, 6)) / 3


def gru(x):
    """A GRU cell over a sequence of three 2-vectors; the final state and the outputs."""

    def cell(h, xt):
        z = jax.nn.sigmoid(W[:3, :3] @ h + W[:3, 3:5] @ xt)
        candidate = jnp.tanh(W[3:, :3] @ h + W[3:, 4:] @ xt)
        h = (1 - z) * h + z * candidate
        return h, 2 * h

    h, ys = lax.scan(cell, jnp.zeros(3), x.reshape(3, 2))
    return jnp.concatenate([h, ys.ravel()])


def newton_sqrt(x):
    """sqrt(1 + x^2) by Newton's iteration in a while_loop (eight steps)."""

    def body(state):
        y, i = state
        return 0.5 * (y + (1 + x**2) / y), i + 1

    return lax.while_loop(lambda s: s[1] < 8, body, (jnp.ones_like(x), 0))[0]


def clip_by_norm(x):
    """A gradient clipped to norm 1 under lax.cond (optax writes it with where)."""
    norm = jnp.linalg.norm(x)
    return lax.cond(norm > 1.0, lambda g: g / jnp.linalg.norm(g), lambda g: g, x)


PROGRAMS = {
    "RK4 fori_loop": (rk4, "Diagonal"),
    "GRU scan": (gru, None),
    "lax.map": (lambda x: lax.map(lambda r: jnp.sin(r) * r, x.reshape(3, 2)).ravel(), None),
    "reverse scan": (
        lambda x: lax.scan(
            lambda c, a: (c * a + jnp.sin(c), c), x[:2], x.reshape(3, 2), reverse=True
        )[1].ravel(),
        None,
    ),
    "dense chain in a loop": (
        lambda x: lax.fori_loop(0, 5, lambda i, y: jnp.tanh(W @ y), x), "Dense"
    ),
    "cond, clipped": (clip_by_norm, "DiagonalPlusLowRank"),
    "switch": (lambda x: lax.switch(1, [jnp.sin, jnp.cos, jnp.tanh], x), "Diagonal"),
    "while, Newton": (newton_sqrt, "Diagonal"),
    "fori_loop, traced bound": (
        lambda x: lax.fori_loop(0, 3 + (x[0] > 0), lambda i, y: y * jnp.cos(y), x),
        "Diagonal",
    ),
    # Horner's scheme: y * x + c gains a low-rank column each step (same structure, a
    # wider factor): carried dense
    "scan, growing rank (polyval)": (lambda x: jnp.polyval(x[:3], x), None),
    "while, growing rank": (
        lambda x: lax.while_loop(
            lambda s: s[1] < 3,
            lambda s: (s[0] * jnp.arange(6.0) + x[1], s[1] + 1),
            (x[0] * jnp.ones(6), 0),
        )[0],
        None,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_control_flow_against_autodiff(name):
    f, structure = PROGRAMS[name]
    reverse_mode = "while" not in name and "traced" not in name  # jax.vjp refuses while
    if reverse_mode:
        assert_transform_matches_autodiff(f, X)  # compiled: a traced predicate is a Select
        J = mj.jacobian(f)(X)  # eager: the branch a concrete predicate takes
    else:
        J = mj.jacobian(f)(X)
        dense = jax.jacfwd(f)(X)
        assert_jacobians_close(J.to_dense(), dense)
        u = jnp.cos(jnp.arange(dense.shape[0]) + 0.5)
        assert_jacobians_close(J.vm(u), u @ dense)  # jax.vjp refuses a while_loop
    if structure is not None:
        assert type(J).__name__ == structure, str(J)
    jitted = jax.jit(mj.jacobian(f))(X)
    assert_jacobians_close(jitted.to_dense(), jax.jacfwd(f)(X))


def test_the_hessian_of_a_polynomial_evaluated_by_horner_s_scheme():
    f = lambda x: jnp.sum(jnp.polyval(x[:3], x))  # noqa: E731
    assert_jacobians_close(mj.hessian(f)(X).to_dense(), jax.hessian(f)(X))


def _nested_switches(levels):
    def f(M):
        for _ in range(levels):
            i = jnp.clip(jnp.sum(jnp.abs(M)).astype(jnp.int32), 0, 4)
            M = lax.switch(i, [lambda X, c=c: (X @ X) * (0.1 + c) for c in range(5)], M)
        return M

    return f


def test_nested_switches_under_jit_densify_each_shared_jacobian_once():
    """Under jit every branch of a traced switch starts from the same Jacobian: the lazy
    graph shares it, and to_dense densifies it once, not once per path (5 branches, X @ X:
    the program grew tenfold per level; an expm Hessian took minutes to lower)."""
    M = 0.1 * jax.random.normal(jax.random.key(0), (3, 3))
    sizes = []
    for levels in (2, 3):
        f = _nested_switches(levels)
        jaxpr = jax.make_jaxpr(lambda M, f=f: mj.jacobian(f)(M).to_dense())(M)
        sizes.append(len(jaxpr.eqns))
        dense = jax.jit(lambda M, f=f: mj.jacobian(f)(M).to_dense())(M)
        assert_jacobians_close(dense, jax.jacfwd(f)(M))
    assert sizes[1] < 3 * sizes[0], sizes  # linear in the levels, not 10x per level


def test_cond_under_jit_selects_the_branch_jax_takes():
    """A traced predicate: every branch's Jacobian, selected row by row; a NaN in the
    branch not taken stays out (jnp.sqrt of negative entries)."""
    f = lambda x: lax.cond(x[0] > 0, jnp.sqrt, lambda y: y * 2, x)  # noqa: E731
    for x in (jnp.array([-1.0, -4.0, 2.0]), jnp.array([1.0, 4.0, 9.0])):
        J = jax.jit(mj.jacobian(f))(x)
        np.testing.assert_array_equal(J.to_dense(), jax.jacfwd(f)(x))


CONDS_WITH_A_NAN_BRANCH = {
    # the branch taken is W @ z, a dense row each; arcsin'(2) is NaN in the one not taken
    "cond": lambda x: lax.cond(x[0] > 0, lambda z: W[:3, :3] @ z, jnp.arcsin, x),
    "switch": lambda x: lax.switch(
        (x[0] > 0).astype(jnp.int32) + (x[1] > 10).astype(jnp.int32),
        [jnp.log, lambda z: W[:3, :3] @ z, jnp.arcsin],
        x,
    ),
    # elementwise branches: their diagonals are selected
    "cond of diagonals": lambda x: lax.cond(x[0] > 0, jnp.sin, jnp.arcsin, x),
}


@pytest.mark.parametrize("name", CONDS_WITH_A_NAN_BRANCH)
def test_vm_of_a_traced_cond_pulls_back_through_the_branch_taken(name):
    """Under jit the Jacobian of a cond is every branch's, selected; JAX's vjp of a cond
    runs the branch taken alone, so a NaN derivative in another (arcsin at 2) never reaches
    u^T J. vm masked the cotangent before each branch (0 times NaN: all NaN where
    jax.vjp gives [4.4, ...]), while to_dense and mv were right."""
    f = CONDS_WITH_A_NAN_BRANCH[name]
    x, u = jnp.array([2.0, 3.0, 0.5]), jnp.array([1.0, -2.0, 0.5])
    expected = jax.vjp(f, x)[1](u)[0]
    assert np.all(np.isfinite(expected))
    J = jax.jit(mj.jacobian(f))(x)
    np.testing.assert_allclose(J.vm(u), expected, rtol=1e-13)
    np.testing.assert_allclose(jax.jit(lambda x: mj.jacobian(f)(x).vm(u))(x), expected, rtol=1e-13)
    np.testing.assert_allclose(u @ J.to_dense().reshape(3, 3), expected, rtol=1e-13)
    np.testing.assert_allclose(J.T.mv(u), expected, rtol=1e-13)


def test_a_scans_stacked_outputs_keep_their_structure():
    f = lambda x: lax.scan(lambda c, a: (c, jnp.sin(a) * c), 2.0, x)[1]  # noqa: E731
    J = mj.jacobian(f)(X)
    assert isinstance(J, Stacked) and "6 steps of" in str(J)
    assert_jacobians_close(J.to_dense(), jax.jacfwd(f)(X))


def test_a_scan_over_a_long_sequence_is_one_loop():
    """1000 steps: the Jacobian is carried through one lax.scan, not unrolled."""
    f = lambda x: lax.fori_loop(0, 1000, lambda i, y: y + 1e-3 * jnp.sin(y), x)  # noqa: E731
    program = jax.make_jaxpr(lambda x: mj.jacobian(f)(x).diagonal())(X)
    assert sum(eqn.primitive.name == "scan" for eqn in program.jaxpr.eqns) == 1
    assert_jacobians_close(mj.jacobian(f)(X).diagonal(), jnp.diagonal(jax.jacfwd(f)(X)))


def lstm_outputs(xs):
    """An LSTM cell scanned from a zero state (flax's nn.scan of an LSTMCell): its outputs."""
    Wx = jnp.sin(jnp.arange(48.0)).reshape(4, 12) / 2
    Wh = jnp.cos(jnp.arange(36.0)).reshape(3, 12) / 2

    def cell(carry, x):
        h, c = carry
        z = x @ Wx + h @ Wh
        i, f, g = jax.nn.sigmoid(z[:3]), jax.nn.sigmoid(z[3:6]), jnp.tanh(z[6:9])
        c = f * c + i * g
        return (jax.nn.sigmoid(z[9:]) * jnp.tanh(c), c), jax.nn.sigmoid(z[9:]) * jnp.tanh(c)

    return lax.scan(cell, (jnp.zeros(3), jnp.zeros(3)), xs)[1]


def test_a_scan_s_jacobian_needs_no_cpu_backend(monkeypatch):
    """In a process on a GPU alone (``JAX_PLATFORMS=cuda``, as ``verify --platform gpu``)
    JAX has no CPU backend; JAX's scan puts a NumPy operand it forwards to an output there.
    The transform's loop over the steps hands it none: simulated by a CPU backend that is
    not there."""
    from jax._src import xla_bridge

    present = xla_bridge.local_devices

    def without_cpu(*args, backend=None, **kwargs):
        if backend == "cpu":
            raise RuntimeError("Unknown backend cpu. Available backends are ['cuda']")
        return present(*args, backend=backend, **kwargs)

    monkeypatch.setattr(xla_bridge, "local_devices", without_cpu)
    xs = jnp.sin(jnp.arange(40.0)).reshape(10, 4)
    assert_jacobians_close(mj.jacobian(lstm_outputs)(xs).to_dense(), jax.jacfwd(lstm_outputs)(xs))


def test_a_loop_that_goes_dense_carries_dense_jacobians_from_its_first_step():
    """The state starts constant and its Jacobian grows a new structure each step, so the
    loop carries dense Jacobians. Which way a loop settles is found by tracing its first
    steps; it ran them unrolled (each step compiled eagerly) and densified the carry after
    them, outside the loop: a Sum of unrolled rows and the loop's, and the Hessian of a
    flax LSTM took 3x as long to build. Now it is one loop of dense Jacobians."""
    xs = jnp.sin(jnp.arange(20.0)).reshape(5, 4)
    J = mj.jacobian(lstm_outputs)(xs)
    assert isinstance(J, Stacked) and "5 steps of" in str(J)
    assert_transform_matches_autodiff(lstm_outputs, xs)


def test_a_stacked_jacobian_asked_for_its_step_under_jit_stays_concrete():
    """A Stacked operator keeps its first step for the graph walks that ask it; one
    returned from jit (rebuilt, nothing kept) and first asked under a trace kept that
    trace's tracer, and its children() raised UnexpectedTracerError afterwards."""

    def f(x):
        body = lambda c, xi: (jnp.tanh(c * xi + x[:2]),) * 2  # noqa: E731
        return lax.scan(body, jnp.zeros(2), x.reshape(3, 2))[1]

    x = jnp.linspace(0.1, 0.6, 6)
    J = jax.jit(mj.jacobian(f))(x)
    assert isinstance(J, Stacked)
    u = jnp.ones((3, 2))
    jax.jit(lambda u: J.with_layout("denominator").vm(u))(u)
    step = J.children()[0]
    assert all(not isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(step))
    assert_jacobians_close(step.to_dense(), jax.jacfwd(f)(x)[0, :, :])


def test_the_hessian_of_an_rk4_step_in_a_scan():
    """A scan of one RK4 step with a stacked output: the step's Jacobians share the earlier
    stages, and unrolled under jax.jit as a tree they flattened to a leaf per path (over 2
    minutes and 10 GB, where jax.hessian takes 2 s); their graph goes through jit and the
    loop's structure checks each node once."""
    A = jnp.array([[0.0, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.2, 0.0, -0.5]])

    def field(y):
        return A @ y + 0.1 * jnp.sin(y) * y[::-1] + 0.05 * y**3

    def step(y, h=0.1):
        k1 = field(y)
        k2 = field(y + h / 2 * k1)
        k3 = field(y + h / 2 * k2)
        k4 = field(y + h * k3)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    def f(y):
        body = lambda c, t: (step(c) * (1 + 0.01 * t), jnp.sum(c**2))  # noqa: E731
        c, ys = lax.scan(body, y, jnp.arange(1.0))
        return jnp.sum(ys) + jnp.sum(c)

    y = jnp.array([0.5, -0.3, 0.8])
    assert_jacobians_close(mj.hessian(f)(y).to_dense(), jax.hessian(f)(y))


def _newton_steps_per_example(x):
    """A while_loop whose trip count depends on the example (2 or 3 steps)."""
    body = lambda s: (jnp.sin(s[0]) + s[0], s[1] + 1)  # noqa: E731
    return lax.while_loop(lambda s: s[1] < 2 + (s[0][0] > 0), body, (x, 0))[0]


def test_a_while_loop_under_vmap_stopping_per_example_agrees_with_jax():
    """Under jax.vmap a while_loop's condition is one per example (JAX runs until every
    example is done, each keeping its own carry after its last step). The transform's loop
    took it for the one condition of the loop and failed inside lax.while_loop ("cond_fun
    must return a boolean scalar"); the carried Jacobians are now selected per example as
    the carry is. A fori_loop of a per-example count is the same loop."""
    X = jnp.array([[0.5, 1.0], [-0.5, 2.0], [0.3, -1.0]])
    counts = jnp.array([1, 3, 2])
    fori = lambda x, n: lax.fori_loop(0, n, lambda i, c: jnp.tanh(c) * 1.5 + 0.1 * x, x)  # noqa: E731
    programs = {
        "while_loop": jax.vmap(_newton_steps_per_example),
        "fori_loop": lambda X: jax.vmap(fori)(X, counts),
    }
    v = jnp.cos(jnp.arange(6.0)).reshape(3, 2)
    for f in programs.values():
        expected = jax.jacfwd(f)(X)
        for wrap in (lambda g: g, jax.jit):
            J = wrap(mj.jacobian(f))(X)
            np.testing.assert_allclose(J.to_dense(), expected, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(J.mv(v), jax.jvp(f, (X,), (v,))[1], rtol=1e-13)
    per_example = jax.vmap(mj.jacobian(_newton_steps_per_example))(X)
    dense = jax.vmap(lambda J: J.to_dense())(per_example)
    expected = jax.vmap(jax.jacfwd(_newton_steps_per_example))(X)
    np.testing.assert_allclose(dense, expected, rtol=1e-13)
