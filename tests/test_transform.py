"""matcalc_jax.jacobian: the structured Jacobian of a JAX program, against autodiff.

The contract (DESIGN 6): ``to_dense()`` equals ``jax.jacfwd``, ``mv`` / ``vm`` equal
``jax.jvp`` / ``jax.vjp``, ``diagonal`` / ``trace`` / ``logdet`` for square Jacobians,
``print(J)`` shows the structure, an unknown primitive is an error unless the caller opts
into the recorded autodiff fallback, and the transform never calls autodiff itself.
"""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.ad_checkpoint import checkpoint_name

import matcalc_jax as mj
from matcalc_jax import operators
from matcalc_jax.catalogue import corpus
from matcalc_jax.catalogue.corpus import STRUCTURE
from matcalc_jax.transform import UnsupportedPrimitiveError, supported_primitives

from .helpers import assert_jacobians_close, assert_transform_matches_autodiff, key

SIZE = 6


def _args(rule, dtype="float64", size=SIZE, seed=0):
    return rule.example(key(seed), jnp.dtype(dtype), size)


def _at(fn, args, wrt):
    return lambda x: fn(*args[:wrt], x, *args[wrt + 1 :])


# --------------------------------------------------------------- the catalogue proves it


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule", mj.rules(), ids=lambda r: r.id)
def test_transform_rediscovers_every_rule(rule, dtype):
    """jacobian(rule.fn) equals the hand-written closed form, under jit, and stores at most
    twice what the hand-written structured form stores."""
    args = _args(rule, dtype)
    both = jax.jit(lambda *a: (mj.jacobian(rule.fn, rule.wrt)(*a).to_dense(), rule.jacobian(*a)))
    assert_jacobians_close(*both(*args), dtype)
    derived = jax.eval_shape(mj.jacobian(rule.fn, rule.wrt), *args)  # storage: shapes only
    own = jax.eval_shape(rule.structured, *args)
    assert operators.storage(derived) <= 2 * operators.storage(own), (derived, own)


# -------------------------------------------------------------------- the corpus, 4 ways


@pytest.mark.parametrize("program", corpus.PROGRAMS, ids=lambda r: r.id)
def test_corpus_program_against_autodiff(program):
    args = _args(program)
    f = _at(program.fn, args, program.wrt)
    x = args[program.wrt]
    assert_transform_matches_autodiff(f, x)  # one compiled program: jacfwd, jvp, vjp
    J = mj.jacobian(program.fn, program.wrt)(*args)  # eager: a concrete predicate's branch
    assert type(J).__name__ == STRUCTURE[program.id], str(J)
    assert_jacobians_close(J.to_dense(), jax.jit(jax.jacrev(f))(x))


def test_a_program_case_runs_the_transform_once_and_shares_it_only_while_it_lives(monkeypatch):
    """A case's closed form (both layouts) reuses the operator of its structured form while
    the case holds it, so the transform runs once per case, not three times; other
    arguments, another precision, or an operator let go of, run it afresh."""
    from matcalc_jax.verification import harness

    calls = []
    real = corpus.jacobian

    def counted(fn, wrt):
        calls.append(fn)
        return real(fn, wrt)

    monkeypatch.setattr(corpus, "jacobian", counted)
    program = next(p for p in corpus.PROGRAMS if p.id == "layer_norm")
    args = _args(program)
    inputs = harness.draw_case(program, "float64", 5, key(0))
    jax.make_jaxpr(harness.case_function(program, "float64", 5))(inputs)
    assert len(calls) == 1

    calls.clear()
    op = program.structured(*args)
    dense = program.jacobian(*args, layout="denominator")
    assert len(calls) == 1
    np.testing.assert_array_equal(dense, op.with_layout("denominator").to_dense())
    program.jacobian(*[jnp.array(a) for a in args])  # copies: other objects
    with jax.default_matmul_precision("float32"):
        program.jacobian(*args)
    assert len(calls) == 3
    del op
    program.jacobian(*args)
    assert len(calls) == 4


def test_programs_are_in_verify():
    report = mj.verify(["nn_softmax", "layer_norm"], dtypes=["float64"], sizes=[5])
    assert report.passed
    assert {"jacfwd", "jacrev", "mv", "vm", "finite_difference"} <= {
        c.reference for c in report.checks
    }


def test_programs_in_half_precision_against_float64():
    """A bfloat16 program's structured Jacobian (computed in float32, rounded once) is
    within bfloat16's tolerance of float64 autodiff, its products too."""
    ids = ["layer_norm", "nn_softmax", "per_example_mlp", "sandwich_AXB"]
    report = mj.verify(ids, dtypes=["bfloat16"], sizes=[1, 6])
    assert report.passed, report.failures()
    assert {"jacfwd", "mv", "vm"} <= {c.reference for c in report.checks}


def test_verify_checks_the_transform_on_rules():
    report = mj.verify(["softmax"], dtypes=["float32"], sizes=[5])
    checks = {c.reference: c for c in report.checks}
    assert checks["transform"].passed and checks["transform_storage"].passed
    assert checks["transform_storage"].error == 1.0  # diag(s) - s s^T: 3n entries, both


# ------------------------------------------------------------------------- structure


def test_softmax_is_diagonal_plus_rank_one_however_written():
    x = jax.random.normal(key(3), (7,), jnp.float64)
    handmade = lambda x: jnp.exp(x) / jnp.sum(jnp.exp(x))  # noqa: E731
    for f in (jax.nn.softmax, handmade, mj.nn.softmax):
        J = mj.jacobian(f)(x)
        assert isinstance(J, mj.DiagonalPlusLowRank), str(J)
        assert operators.storage(J) == 3 * 7
        assert_jacobians_close(J.to_dense(), jax.jacfwd(f)(x))


def test_chain_of_diagonals_is_one_diagonal_and_identities_vanish():
    x = jnp.linspace(0.1, 2.0, 5)
    J = mj.jacobian(lambda x: jnp.exp(jnp.sin(2.0 * x)) + x)(x)
    assert isinstance(J, mj.Diagonal)
    assert isinstance(mj.jacobian(lambda x: x)(x), mj.Identity)
    assert isinstance(mj.jacobian(lambda x: jnp.zeros(3) * 0 + 1.0)(x), operators.Zero)


def test_sandwich_keeps_its_two_factors():
    """A X B by X stores A and B (its Kronecker form), never the s t x p q matrix."""
    A = jax.random.normal(key(4), (3, 4), jnp.float64)
    B = jax.random.normal(key(5), (5, 2), jnp.float64)
    X = jax.random.normal(key(6), (4, 5), jnp.float64)
    J = mj.jacobian(lambda X: A @ X @ B)(X)
    assert operators.storage(J) == A.size + B.size
    assert_jacobians_close(J.to_dense(), jax.jacfwd(lambda X: A @ X @ B)(X))
    square = lambda X: (2 * jnp.eye(4) + 0.1 * X) @ X  # noqa: E731  a product rule, dense
    assert_jacobians_close(mj.jacobian(square)(X[:, :4]).to_dense(), jax.jacfwd(square)(X[:, :4]))


def test_per_example_map_gives_blocks():
    W = jax.random.normal(key(7), (3, 3), jnp.float64)
    xs = jax.random.normal(key(8), (10, 3), jnp.float64)
    f = jax.vmap(lambda x: jnp.tanh(W @ jnp.tanh(W @ x)))
    J = mj.jacobian(f)(xs)
    assert isinstance(J, mj.BlockDiagonal) and J.blocks.shape == (10, 3, 3)
    assert_jacobians_close(J.to_dense(), jax.jacfwd(f)(xs))
    dense = np.asarray(jax.jacfwd(f)(xs)).reshape(30, 30)
    assert J.logdet() == pytest.approx(np.linalg.slogdet(dense)[1], rel=1e-10, abs=0)
    wide = jax.random.normal(key(12), (5, 3), jnp.float64)  # rectangular blocks, 3 -> 5
    g = jax.vmap(lambda x: jnp.sin(wide @ jnp.tanh(x)))
    K = mj.jacobian(g)(xs)
    assert isinstance(K, mj.BlockDiagonal) and K.blocks.shape == (10, 5, 3)
    assert_jacobians_close(K.to_dense(), jax.jacfwd(g)(xs))


def test_a_map_that_mixes_the_batch_is_not_block_diagonal():
    xs = jax.random.normal(key(9), (4, 3), jnp.float64)
    f = lambda xs: jnp.tanh(xs - jnp.mean(xs, axis=0))  # noqa: E731  batch normalization
    J = mj.jacobian(f)(xs)
    assert not isinstance(J, mj.BlockDiagonal)
    assert_jacobians_close(J.to_dense(), jax.jacfwd(f)(xs))


def test_print_shows_the_structure():
    W = jnp.ones((4, 4), jnp.float32)
    J = mj.jacobian(lambda W: jnp.tanh(W @ jnp.arange(4.0, dtype=jnp.float32)))(W)
    text = str(J)
    assert "Composition" in text and "Diagonal: (4,) <- (4,)" in text
    assert "Contraction" in text and "stores" in text and "float32" in text


# ------------------------------------------------------------------ square functionals


def test_flow_logdet_trace_diagonal_from_the_diagonal():
    program = mj.rule("elementwise_flow")
    x, scale, shift = _args(program, size=50)
    J = mj.jacobian(program.fn)(x, scale, shift)
    derivative = 1 + 0.5 * scale * (1 - jnp.tanh(scale * x + shift) ** 2)  # by hand
    np.testing.assert_allclose(J.diagonal(), derivative, rtol=1e-14)
    assert J.trace() == pytest.approx(float(jnp.sum(derivative)), rel=1e-14, abs=0)
    dense_logdet = np.linalg.slogdet(np.asarray(jax.jacfwd(program.fn)(x, scale, shift)))[1]
    assert J.logdet() == pytest.approx(dense_logdet, rel=1e-12, abs=0)


def test_a_million_entries_in_linear_memory():
    """At n = 10^6 a dense Jacobian has 10^12 entries; the transform's is a diagonal."""
    n = 1_000_000
    program = mj.rule("elementwise_flow")
    x, scale, shift = _args(program, "float32", size=n)

    @jax.jit
    def functionals(x, scale, shift):
        J = mj.jacobian(program.fn)(x, scale, shift)
        return J.diagonal(), J.trace(), J.logdet()

    diagonal, trace, logdet = functionals(x, scale, shift)
    expected = 1 + 0.5 * np.float64(scale) * (1 - np.tanh(np.float64(scale) * x + shift) ** 2)
    np.testing.assert_allclose(diagonal, expected, rtol=1e-5)
    assert float(trace) == pytest.approx(expected.sum(), rel=1e-5, abs=0)
    assert float(logdet) == pytest.approx(np.log(expected).sum(), rel=1e-4, abs=0)
    program_text = jax.make_jaxpr(functionals)(x, scale, shift)
    assert _largest(program_text.jaxpr) == n  # no intermediate beyond O(n)


def _largest(jaxpr):
    sizes = [0]
    for eqn in jaxpr.eqns:
        sizes += [int(np.prod(v.aval.shape)) for v in eqn.outvars]
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                sizes.append(_largest(inner))
    return max(sizes)


def test_softmax_logdet_by_the_determinant_lemma():
    x = jax.random.normal(key(10), (6,), jnp.float64)
    f = lambda x: jax.nn.softmax(x) + 0.5 * x  # noqa: E731  diag + low rank, invertible
    J = mj.jacobian(f)(x)
    assert isinstance(J, mj.DiagonalPlusLowRank)
    dense = np.asarray(jax.jacfwd(f)(x))
    assert J.logdet() == pytest.approx(np.linalg.slogdet(dense)[1], rel=1e-12, abs=0)
    assert J.trace() == pytest.approx(np.trace(dense), rel=1e-12, abs=0)


# ------------------------------------------------------------------- primitives, one by one

VECTOR = jnp.array([-1.5, -0.3, 0.2, 0.7, 1.9, 0.4], jnp.float64)
MATRIX = jnp.arange(12.0, dtype=jnp.float64).reshape(3, 4) / 7 - 0.5
UPPER = jnp.triu(MATRIX[:, :3]) + 2 * jnp.eye(3)
ZOO = {
    "unary": (lambda x: jnp.log1p(jnp.exp(x)) + jnp.expm1(x) * jnp.cos(x) - jnp.sqrt(x**2 + 1)),
    "trig": (lambda x: jnp.arctan(x) + jnp.arcsin(x / 2) + jnp.sinh(x) + jnp.arctanh(x / 3)),
    "special": (lambda x: lax.erf(x) + lax.erf_inv(x / 3) + lax.lgamma(x + 3) + jnp.cbrt(x)),
    "powers": (lambda x: x**3 + jnp.abs(x) ** 2.5 + lax.rsqrt(x**2 + 1) + x ** jnp.int32(2)),
    "pow_both": (lambda x: jnp.power(jnp.abs(x) + 1, x)),
    "atan2": (lambda x: jnp.arctan2(x, x[::-1] + 3)),
    "max_min_clip": (lambda x: jnp.maximum(x, x[::-1]) + jnp.clip(x, -0.5, 0.5)),
    "where": (lambda x: jnp.where(x > 0, x**2, -x)),
    "div": (lambda x: x / (x[::-1] ** 2 + 1) + 1 / (x + 3)),
    "reduce_max": (lambda x: jnp.max(x) * x),
    "cumsum": (lambda x: jnp.cumsum(x) + jnp.cumsum(x[::-1])),
    "concatenate_slice": (lambda x: jnp.concatenate([x[1:4], x[::2], jnp.sin(x)])),
    "pad": (lambda x: jnp.pad(x, (2, 1)) * 3),
    "gather": (lambda x: x[jnp.array([4, 0, 0, 2])] ** 2),
    "dynamic_slice": (lambda x: lax.dynamic_slice(x, (jnp.int32(1),), (3,)) * 2),
    "reshape": (lambda x: (x.reshape(2, 3) @ jnp.ones((3, 2))).reshape(-1)),
    "transpose_broadcast": (lambda x: (x[:, None] * x[None, :]).T.sum(axis=0)),
    "convert": (lambda x: jnp.sin(x.astype(jnp.float32)).astype(jnp.float64)),
    "outer_matrix": (lambda x: jnp.tanh(MATRIX @ x[:4]) @ MATRIX),
    "stop_gradient": (lambda x: x * lax.stop_gradient(x) + x),
    "sort_free_round": (lambda x: jnp.round(x) + jnp.floor(x) + x),
    "jit_inside": (lambda x: jax.jit(lambda y: jnp.tanh(y) * 2)(x)),
    "checkpoint": (lambda x: jax.checkpoint(lambda y: jnp.sin(y) ** 2)(x)),
    # remat keeping only the named activations, as transformer code writes it
    "checkpoint_name": (lambda x: jax.checkpoint(
        lambda y: jnp.tanh(MATRIX.T @ checkpoint_name(jnp.tanh(MATRIX @ y[:4]), "hidden")),
        policy=jax.checkpoint_policies.save_only_these_names("hidden"))(x)),
    "solve": (lambda x: jnp.linalg.solve(jnp.eye(6) * 3 + jnp.outer(x, x) / 9, x)),
    "triangular": (lambda x: jax.scipy.linalg.solve_triangular(UPPER, x[:3])),
    # an implicit diffusion step whose coefficients depend on the state, as PDE code writes it
    "tridiagonal": (lambda x: lax.linalg.tridiagonal_solve(
        -x**2 / 4, 2 + x**2, jnp.roll(-x**2 / 4, -1), x[:, None])[:, 0]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ZOO))
def test_primitive_rules_against_jacfwd(name):
    f = ZOO[name]
    J = mj.jacobian(f)(VECTOR)  # eager
    u = jnp.cos(jnp.arange(J.out_shape[0], dtype=jnp.float64))
    expected, vjp = jax.jit(lambda x, u: (jax.jacfwd(f)(x), jax.vjp(f, x)[1](u)[0]))(VECTOR, u)
    assert_jacobians_close(J.to_dense(), expected)
    assert_jacobians_close(J.vm(u), vjp)


ACTIVATIONS = {
    "jax.nn.relu": jax.nn.relu,
    "jax.nn.relu6": jax.nn.relu6,
    "jax.nn.silu": jax.nn.silu,
    "jax.nn.gelu": jax.nn.gelu,
    "jax.nn.softplus": jax.nn.softplus,
    "jax.nn.sigmoid": jax.nn.sigmoid,
    "jax.nn.log_sigmoid": jax.nn.log_sigmoid,
    "jax.nn.elu": jax.nn.elu,
    "jax.nn.leaky_relu": jax.nn.leaky_relu,
    "jax.nn.log_softmax": jax.nn.log_softmax,
    "jax.nn.logsumexp": lambda x: jax.nn.logsumexp(x) * x,
    "mj.nn.relu": mj.nn.relu,
    "mj.nn.gelu": mj.nn.gelu,
    "mj.nn.softplus": mj.nn.softplus,
    "mj.nn.log_sigmoid": mj.nn.log_sigmoid,
    "mj.nn.log_softmax": mj.nn.log_softmax,
    "mj.nn.hard_tanh": mj.nn.hard_tanh,
}
EDGES = jnp.array([0.0, -0.0, 1.0, -1.0, 6.0, -40.0, 40.0, 1e-8], jnp.float64)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_custom_derivatives_are_kept(name):
    """jax.nn's and matcalc_jax.nn's own derivatives, ties and tails included: the transform
    reads their JVP rules, so it agrees with jacfwd exactly where the primal formula would
    not (relu'(0) = 0 where max(x, 0) gives 1/2)."""
    f = ACTIVATIONS[name]
    assert_jacobians_close(mj.jacobian(f)(EDGES).to_dense(), jax.jacfwd(f)(EDGES))


def test_ties_split_as_jax_splits_them():
    zeros = jnp.zeros(3)
    relu_by_max = lambda x: jnp.maximum(x, 0.0)  # noqa: E731
    np.testing.assert_array_equal(mj.jacobian(relu_by_max)(zeros).diagonal(), 0.5)
    np.testing.assert_array_equal(mj.jacobian(jax.nn.relu)(zeros).diagonal(), 0.0)


# ------------------------------------------------------------------------- errors


def _reduce_by_logaddexp(x):  # a primitive without a rule: a reduce by a function of the user's
    return jnp.sin(lax.reduce(x, -jnp.inf, jnp.logaddexp, (0,)) * x)


def test_unknown_primitive_names_itself_and_its_place():
    with pytest.raises(UnsupportedPrimitiveError) as raised:
        mj.jacobian(_reduce_by_logaddexp)(VECTOR)
    message = str(raised.value)
    assert "'reduce'" in message and "test_transform.py" in message
    assert "_reduce_by_logaddexp" in message
    assert "made by jax/_src/lax/lax.py (reduce)" in message
    assert "supported_primitives()" in message and "fallback='autodiff'" in message
    assert "dot_general" not in message and len(message) < 500  # no list of every primitive


def test_fallback_is_opt_in_and_recorded():
    J = mj.jacobian(_reduce_by_logaddexp, fallback="autodiff")(VECTOR)
    assert_jacobians_close(J.to_dense(), jax.jacfwd(_reduce_by_logaddexp)(VECTOR))
    assert len(J.fallbacks) == 1 and "reduce" in J.fallbacks[0]
    assert "autodiff fallback" in str(J)
    assert mj.jacobian(jnp.sin)(VECTOR).fallbacks == ()


def test_the_fallback_differentiates_every_varying_operand_as_jax_does():
    """A reduce of two arrays that both vary: the fallback differentiated one operand at a
    time and held the other with JAX's symbolic zero, which JAX's own rule for it cannot
    take (a TypeError from inside jax.jvp), while jax.jacfwd of the program, where both
    vary, answers. Each varying operand now gets an explicit zero tangent; the initial
    values, which JAX's rule refuses any tangent for, stay constant."""

    def pair(x):
        sums = lax.reduce((x, 2 * x), (0.0, 1.0), lambda a, b: (a[0] + b[0], a[1] * b[1]), (0,))
        return jnp.sin(sums[0] * x) + sums[1]

    J = mj.jacobian(pair, fallback="autodiff")(VECTOR)
    assert len(J.fallbacks) == 2
    u = jnp.cos(jnp.arange(VECTOR.shape[0], dtype=jnp.float64))
    assert_jacobians_close(J.to_dense(), jax.jacfwd(pair)(VECTOR))
    assert_jacobians_close(J.vm(u), jax.vjp(pair, VECTOR)[1](u)[0])


def test_the_fallback_of_a_primitive_from_real_to_complex_values():
    """eig takes a real matrix to complex eigenvalues: the fallback's densify pushed its
    complex basis into jax.jvp with the real operand, and JAX refused the tangent's
    dtype from deep inside the operator."""

    def spectrum(x):
        return jnp.abs(jnp.linalg.eigvals(x.reshape(3, 3)))

    x = jnp.arange(9.0) ** 1.5 / 7 - 1.0
    J = mj.jacobian(spectrum, fallback="autodiff")(x)
    assert any("eig" in note for note in J.fallbacks)
    assert_jacobians_close(J.to_dense(), jax.jacfwd(spectrum)(x))
    t, u = jnp.cos(jnp.arange(9.0)), jnp.array([1.0, -2.0, 0.5])
    assert_jacobians_close(J.mv(t), jax.jvp(spectrum, (x,), (t,))[1])
    assert_jacobians_close(J.vm(u), jax.vjp(spectrum, x)[1](u)[0])


def _tiled(x):
    return jnp.sin(jnp.tile(x, 2)) * 3


def test_an_uncovered_case_of_a_primitive_goes_the_same_way(monkeypatch):
    """A case a rule does not cover (here a rule that declines, as rules do for the cases
    they leave out) is the error of a primitive without a rule, or, opted into, the
    recorded fallback."""
    from matcalc_jax.transform import registry
    from matcalc_jax.transform.interpreter import NoRule

    def declines(ctx, eqn, ins, ops):
        raise NoRule("with two repetitions, for this test")

    monkeypatch.setitem(registry.RULES, "tile", declines)
    with pytest.raises(UnsupportedPrimitiveError, match="'tile' with two repetitions"):
        mj.jacobian(_tiled)(VECTOR)
    J = mj.jacobian(_tiled, fallback="autodiff")(VECTOR)
    assert_jacobians_close(J.to_dense(), jax.jacfwd(_tiled)(VECTOR))
    assert any("tile" in note for note in J.fallbacks)


def test_a_product_scatter_of_repeating_indices_is_refused_as_jax_refuses_it():
    """``segment_prod`` of a differentiated array multiplies updates that land together:
    JAX's rule for ``scatter-mul`` needs unique indices, and so does the transform's (the
    operand's derivative alone is covered, tests/test_conformance.py)."""
    segments = jnp.array([0, 0, 1, 2, 1, 0])

    def product(x):
        return jax.ops.segment_prod(x[:6], segments, 3)

    x = jnp.linspace(0.5, 2.0, 6)
    with pytest.raises(NotImplementedError, match="unique_indices=True"):
        jax.jacfwd(product)(x)
    with pytest.raises(UnsupportedPrimitiveError, match="'scatter-mul' with respect to updates"):
        mj.jacobian(product)(x)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: mj.jacobian(jnp.sin, argnums=())(VECTOR), TypeError, "argnums"),
        (lambda: mj.jacobian(jnp.sin, argnums=True)(VECTOR), TypeError, "argnums"),
        (lambda: mj.jacobian(jnp.sin, argnums=2)(VECTOR), ValueError, "out of range"),
        (lambda: mj.jacobian(jnp.add, argnums=(0, -2))(VECTOR, VECTOR), ValueError, "repeats"),
        (lambda: mj.jacobian(jnp.sin, fallback="jvp"), ValueError, "fallback"),
        (lambda: mj.jacobian(jnp.sin)(jnp.arange(3)), TypeError, "floating"),
        (lambda: mj.jacobian(jnp.sin, has_aux=True)(VECTOR), TypeError, "pair"),
        (lambda: mj.jacobian(jnp.sin)("x"), TypeError, "expected an array"),
    ],
)
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- jit, pytrees, purity


def test_operator_passes_through_jit():
    W = jax.random.normal(key(11), (5, 5), jnp.float64)
    f = lambda x: jnp.tanh(W @ x)  # noqa: E731
    J = jax.jit(mj.jacobian(f))(VECTOR[:5])
    assert_jacobians_close(J.to_dense(), jax.jacfwd(f)(VECTOR[:5]))
    solve = jax.jit(mj.jacobian(ZOO["solve"]))(VECTOR)
    assert_jacobians_close(solve.to_dense(), jax.jacfwd(ZOO["solve"])(VECTOR))


def test_supported_primitives_are_listed():
    names = supported_primitives()
    assert {"dot_general", "tanh", "custom_jvp_call", "custom_linear_solve"} <= set(names)
    assert list(names) == sorted(names)


AUTODIFF = {"jacfwd", "jacrev", "grad", "hessian", "jvp", "vjp", "linearize", "value_and_grad"}


def test_the_transform_never_calls_autodiff():
    """Only the opt-in fallback (``Linearized``, ``LinearizedByRows``) may; nothing else in
    the transform, the operators, the closed forms or the catalogue names an autodiff
    function, but the rule record's ``jacfwd``/``jacrev`` (the design's contract; the
    second-order references live in ``verification.references``). The one allowance:
    ``hessian`` builds the program ``jax.grad(f)`` and interprets it (the Hessian is the
    Jacobian of the gradient); that ``grad`` alone is allowed, in ``hessian`` (its body
    ``_hessian``) alone."""
    package = pathlib.Path(mj.__file__).parent
    offenders = []
    audited = ("transform", "operators", "forms", "catalogue")  # the closed forms' record too
    for path in [path for part in audited for path in (package / part).glob("*.py")]:
        tree = ast.parse(path.read_text())
        allowed = set()
        for node in ast.walk(tree):
            # the opt-in autodiff fallback's maps
            if isinstance(node, ast.ClassDef) and node.name in {"Linearized", "LinearizedByRows"}:
                allowed |= {id(n) for n in ast.walk(node)}
            if (  # the record's autodiff twins of the design's contract
                path.name == "record.py"
                and isinstance(node, ast.FunctionDef)
                and node.name in {"jacfwd", "jacrev", "_chunked", "_autodiff"}
            ):
                allowed |= {id(n) for n in ast.walk(node)}
            # hessian's body (_hessian_at, which laplacian and gauss_newton's loss share)
            if isinstance(node, ast.FunctionDef) and node.name in {"hessian", "_hessian_at"}:
                allowed |= {
                    id(n)
                    for n in ast.walk(node)
                    if isinstance(n, ast.Attribute) and n.attr == "grad"
                }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in AUTODIFF
                and id(node) not in allowed
            ):
                offenders.append(f"{path.name}:{node.lineno} {node.attr}")
    assert not offenders, offenders


def test_the_docs_examples_run():
    """docs/transform.md's Python blocks run as written, and say what they show."""
    import re

    text = (pathlib.Path(mj.__file__).parents[1] / "docs" / "transform.md").read_text()
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        exec(compile(block, "docs/transform.md", "exec"), namespace)
    J, x, W = namespace["J"], namespace["x"], namespace["W"]
    f = lambda x: jax.nn.log_softmax(W @ x)  # noqa: E731
    assert_jacobians_close(J.to_dense(), jax.jacfwd(f)(x))
    assert [type(t).__name__ for t in J.children()] == ["Contraction", "LowRank"]
    assert namespace["blocks"].blocks.shape == (128, 5, 5)
    assert namespace["tree"]["params"]["layers_0"]["kernel"].in_shape == (4, 5)
    assert namespace["whole"].shape == (3, 47)
