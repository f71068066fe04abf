"""matcalc_jax.jacobian is never silently wrong: each test pins a way the transform once
disagreed with JAX without a word (a regression test named for its finding), or a choice
where it deliberately differs, documented in docs/transform.md ("Where the transform and
JAX differ").

References in float64: ``jax.jacfwd`` / ``jax.jvp`` (or ``jax.jacrev`` / ``jax.vjp`` where
JAX defines the derivative in reverse mode only, as for ``custom_vjp``).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.experimental.ode import odeint
from jax.flatten_util import ravel_pytree

import matcalc_jax as mj
from matcalc_jax import operators
from matcalc_jax.transform import UnsupportedPrimitiveError, interpreter, registry
from matcalc_jax.verification.tolerance import tolerance

from .helpers import TRIGAMMA, assert_jacobians_close, assert_transform_matches_autodiff, trigamma

X = jnp.linspace(-1.3, 1.7, 6)
H = jnp.exp(-jnp.arange(4.0)) * (1.0 + 0.5j)
C = jnp.array([1j, 2.0, -1j, 0.5 + 0.5j, -1.0, 0.25j])
M = jnp.eye(6) + 0.3j * jnp.outer(jnp.arange(6.0), jnp.ones(6)) + 0.1


# ----------------------------------------------------------- 1. complex intermediates

COMPLEX_PROGRAMS = {
    "real(exp(i x))": lambda x: jnp.real(jnp.exp(1j * x)),
    "periodogram |rfft x|^2": lambda x: jnp.abs(jnp.fft.rfft(x)) ** 2,
    "Fourier layer irfft(rfft(x) H)": lambda x: jnp.fft.irfft(jnp.fft.rfft(x) * H, 6),
    "angle(x + i)": lambda x: jnp.angle(x + 1j),
    "imag and conj": lambda x: jnp.imag(jnp.conj(jnp.exp(1j * x)) * (2.0 - 1.0j)),
    "complex matrix": lambda x: jnp.abs((jnp.eye(6) + 0.3j) @ lax.complex(x, x**2)),
    "fft2 magnitude": lambda x: jnp.abs(jnp.fft.fft2(x.reshape(2, 3) * (1.0 + 1.0j))).ravel(),
    "ifft of a filtered fft": lambda x: jnp.real(jnp.fft.ifft(jnp.fft.fft(x) * jnp.arange(6))),
    "odd-length round trip": lambda x: jnp.fft.irfft(jnp.fft.rfft(x[:5]) * H[:3], 5),
    "rfft2 and irfft2": lambda x: jnp.fft.irfft2(jnp.fft.rfft2(x.reshape(2, 3)) * 1j).ravel(),
    "complex output": lambda x: jnp.fft.rfft(x * x),
    "abs of a complex zero": lambda x: jnp.abs(lax.complex(x * 0, x * 0)),
    # a complex reduction to a scalar kept only the real part of the row (sum(c x): Re c)
    "sum(c x)": lambda x: jnp.sum(C * x),
    "imag(sum(i x))": lambda x: jnp.imag(jnp.sum(1j * x)),
    "fidelity |<psi, exp(i x)>|^2": lambda x: jnp.abs(jnp.vdot(C, jnp.exp(1j * x))) ** 2,
    "abs(fft(x)[1])": lambda x: jnp.abs(jnp.fft.fft(x)[1]),
    "angle(mean(c x))": lambda x: jnp.angle(jnp.mean(C * x)),
    "dot(x, exp(i x))": lambda x: jnp.dot(x, jnp.exp(1j * x)),
    "trace(outer(c, x))": lambda x: jnp.trace(jnp.outer(C, x)),
    # vm was complex (C^T u) for a real map through a complex intermediate
    "real(C x), C complex": lambda x: jnp.real(M @ x),
    "real(C X C^T)": lambda x: jnp.real(M[:3, :3] @ x[:3, None] * x[3:] @ M[:3, :3].T).ravel(),
    "scan with a complex carry": lambda x: jnp.real(
        lax.scan(lambda c, t: (c * jnp.exp(1j * t), c), 1.0 + 0.5j, x)[1]
    ),
    "abs of a complex scan's carry": lambda x: jnp.abs(
        lax.scan(lambda c, t: (c * jnp.exp(1j * t) + t, None), 1.0 + 0j, x)[0]
    ),
}


@pytest.mark.parametrize("name", list(COMPLEX_PROGRAMS))
def test_complex_intermediates_are_differentiated(name):
    """Finding 1: a complex intermediate once counted as a constant (J was Zero)."""
    J = assert_transform_matches_autodiff(COMPLEX_PROGRAMS[name], X)
    assert not isinstance(J, operators.Zero)


@pytest.mark.parametrize(
    "f",
    [
        lambda x: jnp.abs(jnp.sum(C * x)) ** 2,
        lambda x: jnp.abs(jnp.vdot(C, jnp.exp(1j * x))) ** 2,
        lambda x: jnp.real(jnp.sum(jnp.fft.fft(x) * C)) * jnp.sum(x),
    ],
    ids=["|sum(c x)|^2", "fidelity", "real(sum(fft(x) c)) sum(x)"],
)
def test_hessians_through_a_complex_reduction(f):
    H = jax.jit(lambda x: mj.hessian(f)(x).to_dense())(X)
    assert_jacobians_close(H, jax.hessian(f)(X))


_Z = jnp.array([[1 + 2j, 0.5], [0.3j, 2 - 1j]])


@pytest.mark.parametrize(
    "transform, f, x",
    [
        (mj.hessian, lambda x: jnp.real(jnp.sum((_Z @ x) ** 2)), jnp.array([0.3, -0.4])),
        (
            mj.hessian,
            lambda x: jnp.imag(jnp.sum((x + 1j * x[::-1]) ** 3)),
            jnp.array([0.3, -0.4, 1.2]),
        ),
        (mj.jacobian, lambda x: jnp.abs(_Z @ x) ** 2, jnp.array([0.3, -0.4])),
    ],
    ids=["real(sum((Z x)^2))", "imag(sum((x + i rev(x))^3))", "|Z x|^2"],
)
def test_solve_and_logdet_through_complex_values_are_the_real_matrix_s(transform, f, x):
    """A real square map through complex values has factors square as arrays but not as
    real maps: det and solve do not split over them (they gave 4.57 for 3.75, -inf and a
    false "singular", complex "solutions")."""
    op = transform(f)(x)
    matrix = (jax.hessian if transform is mj.hessian else jax.jacfwd)(f)(x)
    b = jnp.arange(1.0, 1.0 + x.size)
    np.testing.assert_allclose(op.logdet(), jnp.linalg.slogdet(matrix)[1], rtol=1e-12)
    solution = op.solve(b)
    assert solution.dtype == jnp.float64
    np.testing.assert_allclose(solution, jnp.linalg.solve(matrix, b), rtol=1e-11)


def test_a_dft_is_stored_as_a_transform_not_a_matrix():
    n = 512
    x = jnp.cos(jnp.arange(n) / 7.0)
    J = mj.jacobian(lambda x: jnp.abs(jnp.fft.rfft(x)) ** 2)(x)
    assert "Fourier RFFT over (512,)" in str(J)
    assert operators.storage(J) < 4 * n  # the spectrum's weights, not n x n entries
    u = jnp.sin(jnp.arange(n // 2 + 1.0))
    assert_jacobians_close(J.vm(u), jax.vjp(lambda x: jnp.abs(jnp.fft.rfft(x)) ** 2, x)[1](u)[0])


def _complex_solve(x):
    matrix = jnp.eye(6) * (2.0 + 1.0j) + 0.1
    return jnp.real(jnp.linalg.solve(matrix, x.astype(jnp.complex128)))


def test_a_complex_primitive_without_a_rule_is_an_error_or_the_listed_fallback():
    with pytest.raises(UnsupportedPrimitiveError, match="on complex values"):
        mj.jacobian(_complex_solve)(X)
    J = mj.jacobian(_complex_solve, fallback="autodiff")(X)
    assert_jacobians_close(J.to_dense(), jax.jacfwd(_complex_solve)(X))
    assert J.fallbacks and all("on complex" not in note for note in J.fallbacks)


def test_a_complex_argument_is_refused_clearly():
    with pytest.raises(TypeError, match="complex argument"):
        mj.jacobian(jnp.sin)(X + 1j)


# ----------------------------------------------------------------------- 2. custom_vjp


@jax.custom_vjp
def reverse_gradient(x):
    return x


reverse_gradient.defvjp(lambda x: (x, None), lambda _, g: (-g,))


@jax.custom_vjp
def clip_gradient(x):  # JAX's own docs' example: bwd is not linear in g
    return 3.0 * x


clip_gradient.defvjp(lambda x: (3.0 * x, None), lambda _, g: (jnp.clip(g, -1.5, 1.5),))


@jax.custom_vjp
def straight_through_round(x):
    return jnp.round(x)


straight_through_round.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))


@jax.custom_vjp
def scaled_pair(x, y):
    return x * y, jnp.sin(x)


def _pair_fwd(x, y):
    return (x * y, jnp.sin(x)), (x, y, jnp.cos(x))


def _pair_bwd(res, cts):
    x, y, cos_x = res
    g, h = cts
    return (g * y + h * cos_x, g * x)


scaled_pair.defvjp(_pair_fwd, _pair_bwd)


@jax.custom_vjp
def first_weight(x, w):
    return x * w[0]


def _first_weight_fwd(x, w):
    return x * w[0], w


def _first_weight_bwd(w, u):  # indexes a constant of the program with a traced index
    return u * w[jnp.argmax(u) * 0], jnp.zeros_like(w)


first_weight.defvjp(_first_weight_fwd, _first_weight_bwd)


CUSTOM_VJP = {
    "gradient reversal": lambda x: reverse_gradient(jnp.tanh(x)),
    "bwd indexing a constant": lambda x: first_weight(x, jnp.array([2.0, 3.0])),
    "odeint": lambda x: odeint(lambda y, t, k: -y * k, x, jnp.array([0.0, 0.5]), x[::-1])[-1],
    "clip_gradient": clip_gradient,
    "straight-through round": lambda x: straight_through_round(2.0 * x) * x,
    "two inputs, two outputs": lambda x: sum(scaled_pair(x, x[::-1] ** 2)),
}


@pytest.mark.parametrize("name", list(CUSTOM_VJP))
def test_custom_vjp_is_the_transpose_of_its_backward_rule(name):
    """Finding 2: the primal was differentiated instead of bwd."""
    assert_transform_matches_autodiff(CUSTOM_VJP[name], X, forward=False)


def test_gradient_reversal_keeps_its_structure():
    J = mj.jacobian(reverse_gradient)(X)
    np.testing.assert_array_equal(J.vm(jnp.ones(6)), -jnp.ones(6))
    assert operators.storage(J) <= 1, str(J)


def test_a_backward_rule_that_is_not_linear_follows_jax_call_by_call():
    """clip_gradient's bwd clips the cotangent: J.vm(u) is bwd(u), as jax.vjp; the matrix
    is jax.jacrev's (the unit cotangents, unclipped)."""
    J = mj.jacobian(clip_gradient)(X)
    assert "not linear in its cotangent" in str(J)
    u = jnp.linspace(-4.0, 4.0, 6)
    np.testing.assert_array_equal(J.vm(u), jnp.clip(u, -1.5, 1.5))
    np.testing.assert_array_equal(J.to_dense(), jnp.eye(6))


@jax.custom_vjp
def clip_by_global_norm(a, b):  # optax's clip, on the backward pass: mixes the cotangents
    return a, b


def _global_norm_bwd(_, g):
    scale = jnp.minimum(1.0, 1.0 / jnp.sqrt(jnp.sum(g[0] ** 2) + jnp.sum(g[1] ** 2)))
    return g[0] * scale, g[1] * scale


clip_by_global_norm.defvjp(lambda a, b: ((a, b), None), _global_norm_bwd)


@jax.custom_vjp
def bilinear(a, b):  # bwd linear in each output's cotangent, not in both at once
    return a, b


bilinear.defvjp(lambda a, b: ((a, b), None), lambda _, g: (g[0] * jnp.sum(g[1]), g[1]))


def _stacked(pair, outer=lambda a, b: jnp.concatenate([3.0 * a, b])):
    return lambda x: outer(*pair(2.0 * x[:3], x[3:]))


_A = jnp.asarray(np.random.default_rng(7).normal(size=(6, 6)))
CLIPPED_INSIDE = {
    "2 clip(x)": lambda x: 2.0 * clip_gradient(x),
    "A clip(x)": lambda x: _A @ clip_gradient(x),
    "clip(A x) 3": lambda x: clip_gradient(_A @ x) * 3.0,
    "sin(clip(x))": lambda x: jnp.sin(clip_gradient(x)),
    "a tree of outputs": lambda x: {"a": 2.0 * clip_gradient(x), "b": jnp.sin(x)},
    # a scale, a second call, a reduction or a running sum beside the rule: the rules that
    # merge maps and move scales moved them across it (clip(3 x) had clip(e_i), 1/3 of
    # jax.jacrev's rows; 4 sum(clip(x)) had 4 clip(1))
    "clip(3 x)": lambda x: clip_gradient(3.0 * x),
    "clip(x / 4)": lambda x: clip_gradient(x / 4.0),
    "4 sum(clip(x))": lambda x: 4.0 * jnp.sum(clip_gradient(x)),
    "clip(x) + clip(2 x)": lambda x: clip_gradient(x) + clip_gradient(2.0 * x),
    "sum(clip(x)) ones(2)": lambda x: jnp.sum(clip_gradient(x)) * jnp.ones(2),
    "clip(x) . clip(x)": lambda x: jnp.dot(clip_gradient(x), clip_gradient(x)),
    "clip(2 cumsum(x))": lambda x: clip_gradient(2.0 * jnp.cumsum(x)),
    # a rule of several outputs that mixes their cotangents: one bwd call takes them all
    # (called once per output, each with the other's cotangent 0, the norm was each one's)
    "clip by global norm": _stacked(clip_by_global_norm),
    "clip by global norm, a b": _stacked(clip_by_global_norm, lambda a, b: a * jnp.sin(b)),
    "clip by global norm, float32 a": lambda x: jnp.concatenate(
        [
            y.astype(x.dtype)
            for y in clip_by_global_norm((2.0 * x[:3]).astype(jnp.float32), jnp.sin(x[3:]))
        ]
    ),
    "bilinear rule": _stacked(bilinear),
}


@pytest.mark.parametrize("name", list(CLIPPED_INSIDE))
def test_a_backward_rule_not_linear_inside_a_program_gives_jacrev_s_matrix(name):
    """Such a rule does not compose as a matrix: (2 clip)'s rows are clip(2 e_i), what
    jax.jacrev computes, not 2 clip(e_i) (the product of the two local matrices, a silent
    factor 4/3 here before). The matrix, mv, trace and the chunked matrix are jacrev's,
    vm is jax.vjp's, under jit too."""
    f = CLIPPED_INSIDE[name]
    J, expected = mj.jacobian(f)(X), jax.jacrev(f)(X)
    t = jnp.linspace(-4.0, 4.0, 6)
    if isinstance(J, dict):  # each output leaf: its rows with the other leaf's cotangent 0
        for leaf in J:
            np.testing.assert_allclose(J[leaf].to_dense(), expected[leaf], rtol=1e-12)
        return
    jitted = jax.jit(lambda x: mj.jacobian(f)(x).to_dense())(X)
    for dense in (J.to_dense(), J.to_dense(chunk_size=4), jitted):
        np.testing.assert_allclose(dense, expected, rtol=1e-12, atol=1e-15)
    shape = jnp.shape(f(X))
    rtol = tolerance("float32" if "float32" in name else "float64")
    for scale in (0.3, 1.0, 4.0):  # cotangents clipped nowhere, somewhere, everywhere
        u = scale * jnp.cos(jnp.arange(1.0, 1.0 + math.prod(shape))).reshape(shape)
        returned = jax.jit(mj.jacobian(f))(X)  # its graph's sharing kept through jit
        for vm in (J.vm, jax.jit(lambda u: mj.jacobian(f)(X).vm(u)), returned.vm):
            # jax.vjp passes on bwd's float64 cotangent of a float32 input; the transform rounds it
            np.testing.assert_allclose(vm(u), jax.vjp(f, X)[1](u)[0], rtol=rtol, atol=1e-15)
    matrix = expected.reshape(math.prod(shape), 6)
    np.testing.assert_allclose(J.mv(t), (matrix @ t).reshape(shape), rtol=1e-12, atol=1e-14)
    if shape == (6,):
        np.testing.assert_allclose(J.trace(), jnp.trace(expected), rtol=1e-12)


@jax.custom_vjp
def _inject(x):  # a penalty's gradient added in the backward rule: affine in g
    return x


_inject.defvjp(lambda x: (x, x), lambda x, g: (g + 0.1 * x,))


def test_a_backward_rule_affine_in_its_cotangent_is_not_taken_for_linear():
    """bwd(g) = g + 0.1 x passed the check that each equation is linear in g (an add is),
    and the Jacobian was the identity: to_dense, vm and grad silently without the 0.1 x.
    A constant added in that is not 0 makes it a Pullback, as JAX calls it; under jit,
    where the constant is traced, one not known to be 0 (made from a literal 0) does."""
    x, u = jnp.array([0.3, -1.2, 0.5]), jnp.array([1.0, 2.0, 3.0])
    h = lambda x: jnp.sum(_inject(x) ** 2)  # noqa: E731
    for jit in (lambda f: f, jax.jit):
        vm = jit(lambda x, u: mj.jacobian(_inject)(x).vm(u))(x, u)
        np.testing.assert_allclose(vm, jax.vjp(_inject, x)[1](u)[0], rtol=1e-12)
        dense = jit(lambda x: mj.jacobian(_inject)(x).to_dense())(x)
        np.testing.assert_allclose(dense, jax.jacrev(_inject)(x), rtol=1e-12)
        grad = jit(lambda x: mj.jacobian(h)(x).vm(jnp.array(1.0)))(x)
        np.testing.assert_allclose(grad, jax.grad(h)(x), rtol=1e-12)


NOT_LINEAR_BACKWARD_RULES = {
    # a part that does not depend on g: bwd(0) is not 0 (the part was taken for 0)
    "0.1 x": lambda x, g: 0.1 * x,
    "a constant branch": lambda x, g: lax.cond(
        jnp.sum(x) > 0, lambda g: jnp.full_like(g, 0.5), lambda g: g, g
    ),
    # derivative 0 but a value that is not: taken for the 0 map
    "sign(g)": lambda x, g: jnp.sign(g),
    "round(4 g) / 4": lambda x, g: jnp.round(4.0 * g) / 4.0,
    "stop_gradient(g)": lambda x, g: lax.stop_gradient(g),
    # a branch, an order, an index or a step count read from g (fixed at g = 0 before)
    "where(g > 0, g, 0)": lambda x, g: jnp.where(g > 0, g, 0.0),
    "sort(g)": lambda x, g: jnp.sort(g),
    "cond(sum(g) > 1)": lambda x, g: lax.cond(jnp.sum(g) > 1, lambda g: 0.5 * g, lambda g: g, g),
    "while sum(g) > 1": lambda x, g: lax.while_loop(lambda c: jnp.sum(c) > 1, lambda c: c / 2, g),
    "g at argmax": lambda x, g: jnp.zeros_like(g).at[jnp.argmax(g)].set(g[jnp.argmax(g)]),
    "through integers": lambda x, g: (g * 100).astype(jnp.int32).astype(g.dtype) / 100,
    "reduce_precision": lambda x, g: lax.reduce_precision(1.2345678 * g, 5, 10),
    # a constant added in by a sort beside g or a gather's fill value (0 under jit before)
    "a constant sorted beside g": lambda x, g: (lambda _, gs, cs: gs + cs)(
        *lax.sort((jnp.array([3.0, 1.0, 2.0]), g, jnp.array([1.0, 2.0, 3.0])), num_keys=1)
    ),
    "a gather's fill value": lambda x, g: g.at[jnp.array([0, 5, 1])].get(
        mode="fill", fill_value=5.0
    ),
}


@pytest.mark.parametrize("name", list(NOT_LINEAR_BACKWARD_RULES))
def test_a_backward_rule_not_linear_in_its_values_is_followed_as_jax_calls_it(name):
    """Each rule below passed the check that every equation is linear (or constant) in g,
    read once at g = 0, and was taken for a matrix: Zero for sign(g) and 0.1 x, the
    identity for cond(sum(g) > 1), the sort of 0 for sort(g). Now each is a Pullback:
    vm is jax.vjp's, the matrix jax.jacrev's, eagerly and under jit."""
    backward = NOT_LINEAR_BACKWARD_RULES[name]

    @jax.custom_vjp
    def f(x):
        return x

    f.defvjp(lambda x: (x, x), lambda x, g: (backward(x, g),))
    x, u = jnp.array([0.3, -1.2, 2.0]), jnp.array([1.0, -2.0, 3.0])
    for jit in (lambda f: f, jax.jit):
        vm = jit(lambda x, u: mj.jacobian(f)(x).vm(u))(x, u)
        np.testing.assert_allclose(vm, jax.vjp(f, x)[1](u)[0], rtol=1e-12)
        dense = jit(lambda x: mj.jacobian(f)(x).to_dense())(x)
        np.testing.assert_allclose(dense, jax.jacrev(f)(x), rtol=1e-12)


COMPLEX_COTANGENT_RULES = {
    "imag(g)": jnp.imag,
    "real(g) + imag(g)": lambda g: jnp.real(g) + jnp.imag(g),
    "real(conj(g) (1 + i))": lambda g: jnp.real(jnp.conj(g) * (1 + 1j)),
}


@pytest.mark.parametrize("name", list(COMPLEX_COTANGENT_RULES))
def test_a_backward_rule_linear_over_the_reals_only_is_followed_as_jax_calls_it(name):
    """real, imag and conj of a complex cotangent are linear over the reals, not over the
    complex numbers: seeded with a complex identity, imag(g) was taken for 0 (vm 0 where
    jax.vjp has Im u), conj for the identity. Such a rule is a Pullback."""
    backward = COMPLEX_COTANGENT_RULES[name]

    @jax.custom_vjp
    def f(x):
        return x * (1 - 1j)

    f.defvjp(lambda x: (f(x), None), lambda _, g: (backward(g),))
    x, u = jnp.array([0.5, -1.0, 2.0]), jnp.array([1 + 2j, -1 + 0.5j, 3j])
    for jit in (lambda f: f, jax.jit):
        vm = jit(lambda x, u: mj.jacobian(f)(x).vm(u))(x, u)
        np.testing.assert_allclose(vm, jax.vjp(f, x)[1](u)[0], rtol=1e-12)


_C = 1 + 0.5j
_CM = jnp.array([[1.0 + 0.5j, -0.3j, 0.2, 0.0], [0.1, 2.0 - 1j, 0.4j, -0.5],
                 [0.0, 0.3, 1.5 + 0.2j, 0.7j], [-0.2j, 0.0, 0.6, 1.0 - 0.4j]])  # fmt: skip

#: Backward rules of a real cotangent through complex values, with a map linear over the
#: reals only on the way (a real or imaginary part, a conjugate, an inverse real DFT).
REAL_LINEAR_BACKWARD_RULES = {
    "imag of c g": lambda g: jnp.imag(g * _C),
    "imag of a filter": lambda g: jnp.imag(jnp.fft.ifft(jnp.fft.fft(g) * _C)),
    "irfft of rfft": lambda g: jnp.fft.irfft(jnp.fft.rfft(g), n=4),
    "irfft of a filter": lambda g: jnp.fft.irfft(jnp.fft.rfft(g) * _C, n=4),
    "irfft of a slice": lambda g: jnp.fft.irfft(g[:3] * _C, n=4),
    "hfft": lambda g: jnp.fft.hfft(g * _C, n=6)[:4],
    "real of a reversed spectrum": lambda g: jnp.real(jnp.fft.fft(g) * _C)[::-1],
    "real of c fft plus g": lambda g: jnp.real(_C * jnp.fft.fft(g)) * 2 + g,
    "real of a padded half spectrum": lambda g: jnp.real(
        jnp.fft.ifft(jnp.pad(jnp.fft.rfft(g) * _C, (0, 1)))
    ),
    "real of a conjugate": lambda g: jnp.real(jnp.conj(jnp.fft.fft(g) * _C) * _CM[0]),
    "real of a complex matrix": lambda g: jnp.real(_CM @ (_C * g)),
}


@pytest.mark.parametrize("name", list(REAL_LINEAR_BACKWARD_RULES))
def test_a_backward_rule_through_complex_values_is_jax_s(name):
    """A custom_vjp whose backward rule takes a real cotangent through complex values and
    back: the matrix, diagonal and trace (and for most, mv and vm) were silently wrong. A
    complex scale was moved across the transpose of a map from real tangents (Re(X^T c u)
    is not c Re(X^T u)), and the imaginary part or inverse real DFT of such a value was
    composed as a complex matrix, which no such map has (it is now a rule without one)."""
    backward = REAL_LINEAR_BACKWARD_RULES[name]
    g = jax.custom_vjp(lambda x: x * 1.0)
    g.defvjp(lambda x: (x * 1.0, None), lambda r, ct: (backward(ct),))
    f = lambda x: jnp.sin(g(x)) * 2  # noqa: E731
    x, u = jnp.array([0.5, 1.5, -2.5, 3.5]), jnp.array([1.0, 2.0, -1.0, 0.5])
    expected = jax.jacrev(f)(x)
    for jit in (lambda f: f, jax.jit):
        J = jit(mj.jacobian(f))(x)
        np.testing.assert_allclose(J.to_dense(), expected, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(J.vm(u), jax.vjp(f, x)[1](u)[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(J.mv(u), expected @ u, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(J.diagonal(), jnp.diag(expected), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(J.trace(), jnp.trace(expected), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("last", [False, True], ids=["inside", "last"])
@pytest.mark.parametrize("name", list(REAL_LINEAR_BACKWARD_RULES))
def test_the_transpose_of_a_jacobian_through_complex_values_is_jax_s(name, last):
    """The same maps in a forward program: ``J.transpose()`` is ``jax.jacfwd``'s matrix
    transposed, in its matrix, products and diagonal (a complex scale is not moved across
    the transpose of a map from real tangents). With the map last, its transpose comes
    first in ``J^T``: the matrix of ``imag(c sin(x))^T`` was 0 (the transpose of a map
    with no complex matrix was read from that map's matrix on real tangents)."""
    h = REAL_LINEAR_BACKWARD_RULES[name]
    f = (lambda x: h(jnp.sin(x) * 2)) if last else (lambda x: jnp.sin(h(x)) * 2)
    x, v = jnp.array([0.5, 1.5, -2.5, 3.5]), jnp.array([1.0, 2.0, -1.0, 0.5])
    expected = jax.jacfwd(f)(x).T
    T = mj.jacobian(f)(x).transpose()
    np.testing.assert_allclose(T.to_dense(), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(T.mv(v), expected @ v, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(T.vm(v), v @ expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(T.diagonal(), jnp.diag(expected), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(REAL_LINEAR_BACKWARD_RULES))
def test_the_transpose_through_complex_values_is_a_real_map(name):
    """``J.T`` of a real program through complex values is a real map: its dtype said
    complex128, so ``-J.T`` scaled by a complex -1 and returned a complex matrix and
    products (of the right values)."""
    h = REAL_LINEAR_BACKWARD_RULES[name]
    f = lambda x: h(jnp.sin(x) * 2)  # noqa: E731
    x, u = jnp.array([0.5, 1.5, -2.5, 3.5]), jnp.array([1.0, 2.0, -1.0, 0.5])
    expected = -jax.jacfwd(f)(x).T
    T = mj.jacobian(f)(x).T
    assert T.dtype == jnp.float64
    for result, reference in (((-T).to_dense(), expected), ((-T).mv(u), expected @ u)):
        assert result.dtype == jnp.float64
        np.testing.assert_allclose(result, reference, rtol=1e-12, atol=1e-14)


LINEAR_RULES_IN_A_LOOP = {
    "a fori_loop": lambda r, g: lax.fori_loop(0, 3, lambda i, a: 0.5 * a, g),
    "a scan over g": lambda r, g: lax.scan(lambda c, gi: (c + gi, c + gi), 0.0, g)[1],
    "pad": lambda r, g: jnp.pad(g[1:], (1, 0)),
    "fft and back": lambda r, g: jnp.fft.ifft(jnp.fft.fft(g)).real,
    "a scatter into zeros": lambda r, g: jnp.zeros(4).at[jnp.argsort(r)].add(g),
    "a cond on the residual": lambda r, g: lax.cond(r[0] > 0, lambda c: c, lambda c: -c, g),
    "a solve": lambda r, g: jnp.linalg.solve(2 * jnp.eye(4) + jnp.outer(r, r), g),
    # linear primitives the first zero proof did not list (refused in a loop's body)
    "split and back": lambda r, g: jnp.concatenate(jnp.split(g * jnp.cos(r), 2)),
    "tile": lambda r, g: jnp.tile(g[:2], 2),
    "unstack and stack": lambda r, g: jnp.stack(jnp.unstack(g)[::-1]),
    "a pytree unravelled": lambda r, g: ravel_pytree(ravel_pytree({"a": r[:1], "b": r[1:]})[1](g))[
        0
    ],
    "a window sum": lambda r, g: lax.reduce_window(g, 0.0, lax.add, (2,), (1,), "SAME"),
}


@pytest.mark.parametrize("name", list(LINEAR_RULES_IN_A_LOOP))
def test_a_linear_backward_rule_in_a_loop_body_stays_a_matrix(name):
    """In a loop's body the residuals are traced even when called eagerly: a bwd(0) not
    known to be 0 made these linear rules Pullbacks, and the loop was refused. Their
    programs prove bwd(0) = 0 (transform/zeros.py): each stays a matrix."""
    backward = LINEAR_RULES_IN_A_LOOP[name]
    g = jax.custom_vjp(jnp.tanh)
    g.defvjp(lambda x: (jnp.tanh(x), x), lambda r, ct: (backward(r, ct),))
    f = lambda x: lax.scan(lambda c, _: (g(0.5 * c), None), x, None, length=3)[0]  # noqa: E731
    x = jnp.array([0.3, -0.7, 1.2, 0.1])
    for jit in (lambda f: f, jax.jit):
        dense = jit(lambda x: mj.jacobian(f)(x).to_dense())(x)
        np.testing.assert_allclose(dense, jax.jacrev(f)(x), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", list(LINEAR_RULES_IN_A_LOOP))
def test_a_linear_backward_rule_with_a_traced_zero_stays_a_matrix_under_jit(name):
    """Under jit, bwd(0) of these rules is traced (a loop's, a cond's, a solve's output):
    it was not known to be 0, and the rule was a Pullback (right, without structure). Their
    program proves it 0: the Jacobian composes as a matrix and is jax.jacrev's."""
    backward = LINEAR_RULES_IN_A_LOOP[name]
    g = jax.custom_vjp(jnp.tanh)
    g.defvjp(lambda x: (jnp.tanh(x), x), lambda r, ct: (backward(r, ct),))
    x, matrices = jnp.array([0.3, -0.7, 1.2, 0.1]), []

    def dense(x):
        J = mj.jacobian(g)(x)
        matrices.append(J.composes_as_matrix())
        return J.to_dense()

    np.testing.assert_allclose(jax.jit(dense)(x), jax.jacrev(g)(x), rtol=1e-12, atol=1e-15)
    assert matrices == [True]


_SPD = jnp.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])

BACKWARD_RULES_WITH_A_HIDDEN_CONSTANT = {
    # two Richardson steps warm-started at the residual: the solver adds to the rhs
    "a warm-started custom_linear_solve": lambda r, g: lax.custom_linear_solve(
        lambda v: _SPD @ v,
        g,
        solve=lambda mv, b: lax.fori_loop(0, 2, lambda i, z: z + 0.2 * (b - mv(z)), r),
        symmetric=True,
    ),
    # XLA's integer 0 // 0 is -1
    "an integer quotient of 0": lambda r, g: (
        g * jnp.cos(r) + lax.div(jnp.zeros(3, jnp.int32), r.astype(jnp.int32)).astype(g.dtype)
    ),
}


@pytest.mark.parametrize("name", list(BACKWARD_RULES_WITH_A_HIDDEN_CONSTANT))
def test_a_constant_a_backward_rule_hides_is_not_proven_0(name):
    """The proof took a custom_linear_solve of a 0 rhs for 0 (its solver was not read) and
    an integer 0 // r for 0: under jit the rule was a matrix without its constant (row 1
    [0, 2, 0] where jax.jacrev has [0.022, 1.800, 0.438]), and in a scan wrong in every
    entry. Eagerly its value was not read once proven. Now: a Pullback, or the loop is
    refused."""
    backward = BACKWARD_RULES_WITH_A_HIDDEN_CONSTANT[name]
    s = jax.custom_vjp(jnp.sin)
    s.defvjp(lambda x: (jnp.sin(x), x), lambda r, g: (backward(r, g),))
    f = lambda x: jnp.concatenate([s(x)[:1], 2 * x[1:]])  # noqa: E731
    looped = lambda x: lax.scan(lambda c, _: (s(c), None), x, None, length=2)[0]  # noqa: E731
    x = jnp.array([0.3, -0.7, 1.2])
    for jit in (lambda f: f, jax.jit):
        dense = jit(lambda x: mj.jacobian(f)(x).to_dense())(x)
        np.testing.assert_allclose(dense, jax.jacrev(f)(x), rtol=1e-12)
        with pytest.raises(UnsupportedPrimitiveError, match="custom_vjp whose backward rule"):
            jit(lambda x: mj.jacobian(looped)(x).to_dense())(x)


INFINITE_BACKWARD_RULES = {
    # g / (2 sqrt(x)) at x = 0: 0 / 0 at g = 0 is the matrix's own 0 inf, not a constant
    "g / (2 r) at r = 0": (lambda r, g: g / (2 * r), jnp.sqrt),
    "g log|r| at r = 0": (lambda r, g: g * jnp.log(jnp.abs(r)), jnp.sin),
}


@pytest.mark.parametrize("name", list(INFINITE_BACKWARD_RULES))
def test_an_infinite_entry_of_a_backward_rule_stays_infinite_under_jit_and_in_loops(name):
    """bwd(0) is NaN there (0 inf), but as a term of the rule's matrix, not a constant it
    adds: JAX's diagonal is inf. The NaN guard turned it into NaN under jit and in a loop
    (eagerly it was inf). The structural zeros stay 0 (the documented convention)."""
    backward, forward = INFINITE_BACKWARD_RULES[name]
    s = jax.custom_vjp(forward)
    s.defvjp(lambda x: (forward(x), forward(x) if forward is jnp.sqrt else x),
             lambda r, g: (backward(r, g),))  # fmt: skip
    looped = lambda x: lax.fori_loop(0, 1, lambda i, c: s(c), x)  # noqa: E731
    x = jnp.array([0.0, 4.0])
    for f in (s, looped):
        expected = np.diag(np.asarray(jax.jacrev(f)(x)))
        for jit in (lambda f: f, jax.jit):
            diagonal = np.diag(np.asarray(jit(lambda x, f=f: mj.jacobian(f)(x).to_dense())(x)))
            np.testing.assert_array_equal(np.isinf(diagonal), np.isinf(expected))
            np.testing.assert_allclose(diagonal, expected, rtol=1e-12)


def test_a_nan_constant_of_a_backward_rule_is_nan_in_its_columns():
    """bwd = g cos(r) + 0 log(r): at r = 0 or r < 0 its constant is NaN, and so are
    jax.jacrev's columns there. Proven 0 under jit and in a loop (0 times anything), the
    NaN was dropped: row 1 [0, 0.765, 0] where JAX has [nan, nan, 0]. Now B is followed by
    a diagonal that is NaN where bwd(0) is: NaN on the diagonal entry of those columns
    (the transform's convention, docs/transform.md), every finite entry JAX's."""
    s = jax.custom_vjp(jnp.sin)
    s.defvjp(lambda x: (jnp.sin(x), x), lambda r, g: (g * jnp.cos(r) + 0.0 * jnp.log(r),))
    looped = lambda x: lax.scan(lambda c, _: (s(c), None), x, None, length=1)[0]  # noqa: E731
    x = jnp.array([0.0, -0.7, 1.2])
    for f in (s, looped):
        expected = np.asarray(jax.jacrev(f)(x))
        dense_of = lambda x, f=f: mj.jacobian(f)(x).to_dense()  # noqa: E731
        for jit in (lambda f: f, jax.jit):
            dense = np.asarray(jit(dense_of)(x))
            finite = np.isfinite(expected)
            np.testing.assert_allclose(dense[finite], expected[finite], rtol=1e-12)
            np.testing.assert_array_equal(np.isnan(dense).any(0), np.isnan(expected).any(0))
            assert np.isnan(expected).any(0).tolist() == [True, True, False]


_sine = jax.custom_vjp(jnp.sin)
_sine.defvjp(lambda x: (jnp.sin(x), x), lambda r, g: (g * jnp.cos(r) + 0.1 * r,))


def _affine_beside_a_carry(x):  # the rule on one carry; the other never goes through it
    (a, b), _ = lax.scan(lambda c, _: ((_sine(c[0]), c[1]), None), (x, x), None, length=2)
    return jnp.concatenate([a[:1], 2 * b[1:]])


AFFINE_RULES_IN_A_LOOP = {
    "the rule's own rows": lambda x: lax.scan(
        lambda c, _: (_inject(0.5 * c), None), x, None, length=2
    )[0],
    "rows beside it": _affine_beside_a_carry,
}


@pytest.mark.parametrize("name", list(AFFINE_RULES_IN_A_LOOP))
def test_an_affine_backward_rule_in_a_loop_body_is_refused(name):
    """g + 0.1 x in a scan's body cannot be told from a linear rule by values while the
    loop is traced. It was kept as its matrix with a runtime check, NaN through it, but
    JAX calls the rule at every step, also for a cotangent reaching the other carry: the
    diagonal of "rows beside it" was [nan, 2.0] where jax.jacrev has [0.972, 1.881]. Its
    bwd(0) is not proven 0 from its program: the loop is refused, eagerly and under jit,
    and fallback='autodiff' follows it as jax.jacrev."""
    f, x = AFFINE_RULES_IN_A_LOOP[name], jnp.array([0.3, -0.7])
    for jit in (lambda f: f, jax.jit):
        with pytest.raises(UnsupportedPrimitiveError, match="custom_vjp whose backward rule"):
            jit(lambda x: mj.jacobian(f)(x).to_dense())(x)
        dense = jit(lambda x: mj.jacobian(f, fallback="autodiff")(x).to_dense())(x)
        np.testing.assert_allclose(dense, jax.jacrev(f)(x), rtol=1e-12)


@jax.custom_vjp
def _through_float32(x):
    return x


_through_float32.defvjp(
    lambda x: (x, None), lambda _, g: ((1.2345678 * g).astype(jnp.float32).astype(g.dtype),)
)


def test_a_backward_rule_through_a_narrower_float_is_the_map_it_rounds():
    """Documented: a cast of the cotangent to float32 and back is taken as the linear map
    it rounds (a scale and two casts). The scale is kept before the narrowing cast, as the
    rule applies it, so vm is jax.vjp's to the last digit (it was rounded past the cast,
    1e-8 off); the matrix is the scale unrounded, jax.jacrev's to float32's rounding."""
    x, u = jnp.array([0.3, -1.2, 2.0]), jnp.array([0.1, 0.2, 0.3])
    J = mj.jacobian(_through_float32)(x)
    np.testing.assert_array_equal(J.vm(u), jax.vjp(_through_float32, x)[1](u)[0])
    dense, rows = J.to_dense(), jax.jacrev(_through_float32)(x)
    np.testing.assert_allclose(dense, rows, rtol=tolerance("float32"))
    assert not np.allclose(dense, rows, rtol=tolerance("float64"), atol=0)


@jax.custom_vjp
def _masked(x):  # a linear rule whose zeros are a where's: traced under jit
    return 2.0 * x


_masked.defvjp(
    lambda x: (2.0 * x, x), lambda x, g: (jnp.where(x > 0, 2.0 * g, 0.0) + jnp.zeros_like(x),)
)


def test_a_linear_backward_rule_with_the_zeros_of_a_where_stays_a_matrix_under_jit():
    """Zeros made from a literal 0 (a where's, zeros_like) are known to be 0 under jit:
    the rule is linear there too, a structured matrix and not a Pullback."""
    x = jnp.array([0.3, -1.2, 0.5])
    kinds = []

    def dense(x):
        J = mj.jacobian(_masked)(x)
        kinds.append(type(J))
        return J.to_dense()

    np.testing.assert_allclose(jax.jit(dense)(x), jax.jacrev(_masked)(x), rtol=1e-12)
    assert kinds == [operators.Diagonal]


LOOPS_WITH_A_PULLBACK = {
    "in its body": (
        lambda x: lax.scan(lambda c, v: (clip_gradient(c * v), c), 1.0, x)[1],
        "in its body or in an input it reads",
    ),
    "in what it carries": (
        lambda x: lax.fori_loop(0, 3, lambda i, c: 2.0 * c, clip_gradient(x)),
        "in what it carries in",
    ),
}


@pytest.mark.parametrize("name", list(LOOPS_WITH_A_PULLBACK))
def test_a_backward_rule_not_linear_in_a_loop_is_refused(name):
    """Carried from step to step, such a map would be stacked or densified as a matrix,
    which it is not (clip(c x_t) in a scan had half of jax.vjp's first entry): the loop is
    refused, as a primitive without a rule, saying where the rule is."""
    f, where = LOOPS_WITH_A_PULLBACK[name]
    with pytest.raises(UnsupportedPrimitiveError, match="'scan' with a custom_vjp whose") as e:
        mj.jacobian(f)(X)
    assert where in str(e.value)


def _scan_both(x):  # the final carry and the stacked outputs, both through the rule
    carry, ys = lax.scan(lambda c, v: (clip_gradient(c * v), c + v), 0.5, x)
    return carry * ys


FALLBACK_ON_LOOPS_WITH_A_PULLBACK = {
    "3 scan(clip(c v))": lambda x: (
        3.0 * lax.scan(lambda c, v: (c, clip_gradient(c * v)), 1.0, x)[1]
    ),
    "carry times outputs": _scan_both,
    "global norm in a loop": lambda x: lax.fori_loop(
        0, 2, lambda i, ab: clip_by_global_norm(2.0 * ab[0], ab[1] + ab[0]), (x[:3], x[3:])
    )[1],
}


@pytest.mark.parametrize("name", list(FALLBACK_ON_LOOPS_WITH_A_PULLBACK))
def test_the_fallback_follows_a_loop_with_a_backward_rule_inside_by_jax_vjp(name):
    """fallback="autodiff" on such a loop raised JAX's "can't apply forward-mode autodiff
    (jvp) to a custom_vjp function" from to_dense. The loop's local map is jax.vjp of the
    loop, all its outputs' cotangents in one call (its rule may mix them), jacrev's rows."""
    f = FALLBACK_ON_LOOPS_WITH_A_PULLBACK[name]
    J = mj.jacobian(f, fallback="autodiff")(X)
    assert any("custom_vjp inside" in note for note in J.fallbacks)
    np.testing.assert_allclose(J.to_dense(), jax.jacrev(f)(X), rtol=1e-12, atol=1e-15)
    shape = jnp.shape(f(X))
    for scale in (0.3, 1.0, 4.0):
        u = scale * jnp.cos(jnp.arange(1.0, 1.0 + math.prod(shape))).reshape(shape)
        for vm in (J.vm, jax.jit(lambda u: mj.jacobian(f, fallback="autodiff")(X).vm(u))):
            np.testing.assert_allclose(vm(u), jax.vjp(f, X)[1](u)[0], rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------ 3. where selects, 4. abs


def test_safe_where_selects_instead_of_multiplying_a_nan():
    """Finding 3: jnp.where(x > 0, sqrt(x), 0) had NaN where jacfwd and jvp give 0."""
    f = lambda x: jnp.where(x > 0, jnp.sqrt(x), 0.0)  # noqa: E731
    x = jnp.array([-1.0, 0.0, 1.0])
    J = mj.jacobian(f)(x)
    np.testing.assert_array_equal(J.to_dense(), jax.jacfwd(f)(x))
    np.testing.assert_array_equal(J.mv(jnp.ones(3)), jax.jvp(f, (x,), (jnp.ones(3),))[1])
    assert isinstance(J, operators.Diagonal)


def test_where_vm_is_the_rows_of_the_matrix_where_jax_vjp_is_nan():
    """A deliberate difference: jax.vjp multiplies sqrt'(-1) = NaN by the 0 of the mask
    (its well-known NaN gradient through where); J.vm is u times the one matrix J is."""
    f = lambda x: jnp.where(x > 0, x * jnp.log(x), 0.0)  # noqa: E731
    x = jnp.array([-1.0, 0.0, 2.0])
    J = mj.jacobian(f)(x)
    u = jnp.ones(3)
    assert np.isnan(jax.vjp(f, x)[1](u)[0][:2]).all()
    np.testing.assert_array_equal(J.vm(u), u @ J.to_dense())
    np.testing.assert_array_equal(J.to_dense(), jax.jacfwd(f)(x))


def test_where_after_a_shared_map_keeps_jax_rows():
    """where(y > 0, y, 0) with y = W sqrt(x): the rows of y's Jacobian are NaN; JAX's jvp
    gives 0 in the rows the constant branch takes, and so does J."""
    W = jnp.arange(12.0).reshape(4, 3) - 5.0
    f = lambda x: jnp.where(W @ jnp.sqrt(x) > 0, W @ jnp.sqrt(x), 0.0)  # noqa: E731
    x = jnp.array([0.0, 1.0, 4.0])
    J = mj.jacobian(f)(x)
    v = jnp.array([0.0, 1.0, 1.0])
    np.testing.assert_array_equal(J.mv(v), jax.jvp(f, (x,), (v,))[1])


def _pairwise_energy(X):
    D = jnp.sqrt(jnp.sum((X[:, None] - X[None]) ** 2, -1))  # sqrt'(0) = inf on the diagonal
    i, j = jnp.triu_indices(3, 1)
    return jnp.sum(1.0 / D[i, j])


def _safe_normalize(x):
    n = jnp.linalg.norm(x)
    return jnp.where(n > 0, x / n, 0.0)


_AT = jnp.array([0.0, 1.0, 2.0])
#: A selection after a factor with an infinite derivative: JAX's jvp selects the infinite
#: entries away, its vjp multiplies them by a cotangent's 0.
SELECTED_AWAY = {
    "pairwise energy": (_pairwise_energy, jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])),
    "sqrt then index": (lambda x: jnp.sqrt(x)[1], _AT),
    "product then index": (lambda x: (jnp.sqrt(x) * jnp.sum(x))[1], _AT),
    "safe normalize at 0": (lambda x: jnp.sum(_safe_normalize(x)), jnp.zeros(3)),
    "where then index": (lambda x: jnp.where(x > 0, jnp.log(x) * jnp.mean(x), 0.0)[0], _AT),
    "relu of log": (lambda x: jnp.sum(jax.nn.relu(jnp.log(x) * x[2])), _AT),
    "dropped scatter": (
        lambda x: jnp.sum(x.at[jnp.array([10])].add(jnp.log(x[:1]) * x[1], mode="drop")),
        _AT,
    ),
    "fill gather": (
        lambda x: jnp.sum((jnp.log(x) * x[2]).at[jnp.array([5, 1])].get(mode="fill")),
        _AT,
    ),
    "sort then index": (lambda x: jnp.sort(jnp.log(x) * x[2])[-1], _AT),
    "overwritten": (lambda x: jnp.sum((jnp.log(x) * jnp.sum(x)).at[0].set(5.0)), _AT),
    "det of rank n - 2": (jnp.linalg.det, jnp.diag(jnp.array([1.0, 2.0, 0.0, 0.0]))),
    "det of zeros": (jnp.linalg.det, jnp.zeros((4, 4))),
}


@pytest.mark.parametrize("name", list(SELECTED_AWAY))
def test_a_row_through_a_selection_is_jacfwd_s_not_nan(name):
    """A row u^T B is first pulled back (B^T u, jax.vjp's NaN where u's 0 meets an infinite
    entry of B) and its non-finite entries recomputed forward (u^T B e_j, as jax.jvp)."""
    f, x = SELECTED_AWAY[name]
    v = jnp.ones_like(x).at[(0,) * x.ndim].set(0.0)
    expected = jax.jacfwd(f)(x)
    assert np.isfinite(expected).all()
    for J in (mj.jacobian(f)(x), jax.jit(mj.jacobian(f))(x)):
        np.testing.assert_allclose(J.to_dense(), expected, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(J.mv(v), jax.jvp(f, (x,), (v,))[1], rtol=1e-12)


def test_the_eager_forward_pass_is_one_program_compiled_once():
    """Eager, the forward recomputation is one compiled program per operator structure:
    a second point (another NaN) reuses it (each call compiled its own, 0.2 s)."""
    from matcalc_jax.operators.low_rank import _forward_rows_program

    f = lambda x: jnp.sum(jnp.sqrt(x) * x[::-1])  # noqa: E731
    x = jnp.linspace(0.5, 2.0, 20)
    mj.jacobian(f)(x.at[3].set(jnp.nan)).to_dense()
    compiled = _forward_rows_program._cache_size()
    row = mj.jacobian(f)(x.at[7].set(jnp.nan)).to_dense()
    assert _forward_rows_program._cache_size() == compiled
    nan = np.zeros(20, bool)
    nan[[7, 12]] = True  # x_7 and its mirror; a NaN stays on its entries
    np.testing.assert_array_equal(np.isnan(row), nan)


def test_a_row_non_finite_forward_too_stays_non_finite():
    """c^T sqrt(x) with c_0 = 0 at x_0 = 0: 0 * inf forward as well, NaN (not 0) in column
    0; the other columns keep their diagonal entries (a NaN stays on its entry)."""
    c = jnp.array([0.0, 1.0, 1.0])
    row = mj.jacobian(lambda x: c @ jnp.sqrt(x))(jnp.array([0.0, 1.0, 4.0])).to_dense()
    assert np.isnan(row[0])
    np.testing.assert_allclose(row[1:], [0.5, 0.25], rtol=1e-15)


@pytest.mark.parametrize(
    "running", [jnp.cumsum, jnp.cumprod, lax.cummax, lambda y: lax.cummin(y, reverse=True)]
)
def test_a_running_reduction_after_an_infinite_derivative_keeps_its_structural_zeros(running):
    """sqrt'(0) = inf merged into a running reduction's triangle stays 0 outside the prefix
    (it was 0 * inf = NaN up the column); where jax.jacfwd is finite, equal."""
    f = lambda x: running(jnp.sqrt(x))  # noqa: E731
    x = jnp.array([1.0, 2.0, 4.0, 0.0])
    dense, expected = mj.jacobian(f)(x).to_dense(), jax.jacfwd(f)(x)
    finite = np.isfinite(expected)  # column 3 above the diagonal among them: 0
    np.testing.assert_allclose(dense[finite], expected[finite], rtol=1e-15)


def test_a_running_reduction_keeps_the_products_jax_forms_inside_its_prefix():
    """Only the entries outside the prefix are structural: a product that underflowed to 0
    times sqrt'(0) = inf is NaN (jax.jacfwd: inf), never the 0 of a structural entry."""
    f = lambda x: lax.cumprod(jnp.sqrt(x))  # noqa: E731
    dense = mj.jacobian(f)(jnp.array([1e-300, 1e-300, 1e-300, 0.0])).to_dense()
    assert not np.isfinite(dense[3, 3])
    assert (dense[:3, 3] == 0).all()  # outputs 0-2 do not read x_3


ROUNDED = {  # 1.1 rounds to 1.0 with 2 mantissa bits: a tangent 1.1 v is not 1.1 round(v)
    "sum(rp(1.1 p))^2": lambda p: jnp.sum(lax.reduce_precision(1.1 * p, 5, 2)) ** 2,
    "softmax(rp(1.1 p))": lambda p: jax.nn.softmax(lax.reduce_precision(1.1 * p, 5, 2)),
    "rp(1.1 p) sum(p)": lambda p: lax.reduce_precision(1.1 * p, 5, 2) * jnp.sum(p),
    "W rp(1.1 p)": lambda p: jnp.arange(12.0).reshape(3, 4) @ lax.reduce_precision(1.1 * p, 5, 2),
}


@pytest.mark.parametrize("name", list(ROUNDED))
def test_a_rounding_of_the_tangent_is_never_folded_into_a_neighbours_factors(name):
    """round(U V^T v) is neither U round(V^T v) nor round(U) V^T v: a sum after a rounding
    was a LowRank whose mv gave 4.4 where jax.jvp gives 4.0 (and to_dense jax.jacrev's
    matrix, not jax.jacfwd's)."""
    f = ROUNDED[name]
    p, v = jnp.array([0.3, 1.2, -0.7, 2.1]), jnp.array([0.31, -1.1, 0.7, 0.2])
    J = mj.jacobian(f)(p)
    y, jvp = jax.jvp(f, (p,), (v,))
    u = jnp.full(y.shape, 0.77)
    np.testing.assert_allclose(J.to_dense(), jax.jacfwd(f)(p), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(J.mv(v), jvp, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(J.vm(u), jax.vjp(f, p)[1](u)[0], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("loop", ["scan", "fori_loop"])
def test_a_loop_that_rounds_its_tangent_is_refused(loop):
    """Carried from step to step, a rounding would be densified as the matrix it is not
    (mv 0.16 off jax.jvp): the loop is refused with the error of a primitive without a rule."""
    step = lambda c: jnp.tanh(lax.reduce_precision(1.3 * c, 5, 2))  # noqa: E731
    if loop == "scan":
        f = lambda p: lax.scan(lambda c, _: (step(c), None), p, None, length=3)[0]  # noqa: E731
    else:
        f = lambda p: lax.fori_loop(0, 3, lambda i, c: step(c), p)  # noqa: E731
    with pytest.raises(UnsupportedPrimitiveError, match="reduce_precision"):
        mj.jacobian(f)(jnp.array([0.3, 1.2, -0.7, 2.1]))


CHUNKED = {  # (program, argument dtype): to_dense(chunk_size) read rows from vm
    "float32 through float64": (
        lambda p: jnp.sin(p.astype(jnp.float64) * 1.1).astype(jnp.float32)[:2],
        jnp.float32,
    ),  # float64 rows, 1.2e-8 off jax.jacfwd's float32
    "float64 through float32": (lambda p: jnp.sin(p.astype(jnp.float32))[:3], jnp.float64),
    "a real DFT": (lambda p: jnp.fft.rfft(p)[:2], jnp.float32),  # a real part: 0.95 off
    "conj": (lambda p: jnp.conj(p * (1 + 2j))[:2], jnp.float64),  # float64, 2.0 off
    "a cast to fewer digits": (  # rows rounded where jax.jacfwd rounds columns: 2.3e-4
        lambda p: jnp.sin(p).astype(jnp.float16).astype(jnp.float32)[:2],
        jnp.float32,
    ),
    "a rounding": (  # jax.jacrev's rows, 0.1 off jax.jacfwd's
        lambda p: jnp.sum(lax.reduce_precision(1.1 * p, 5, 2)) * jnp.ones(2),
        jnp.float64,
    ),
}


@pytest.mark.parametrize("name", list(CHUNKED))
def test_a_chunked_matrix_is_jacfwd_s_in_value_and_dtype(name):
    """With fewer outputs than inputs to_dense(chunk_size) builds rows with vm: only where
    they are the rows of the matrix mv applies, rounded once to the map's dtype."""
    f, dtype = CHUNKED[name]
    p = jnp.linspace(0.1, 1.7, 5).astype(dtype)
    J, expected = mj.jacobian(f)(p), jax.jacfwd(f)(p)
    for dense in (J.to_dense(), J.to_dense(chunk_size=2)):
        assert dense.dtype == expected.dtype
        np.testing.assert_array_equal(dense, expected)


_W = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)  # float64
MIXED = {  # (program, argument dtype, cotangent scale): a cast folded into a structure
    "float64 W @ float32 p": (lambda p: _W @ p, jnp.float32, 1.0),  # vm was float64
    "sum(p.astype(float64))": (lambda p: jnp.sum(p.astype(jnp.float64)), jnp.float32, 1.0),
    "bfloat16 dot into float32": (
        lambda p: jnp.dot(_W.astype(jnp.bfloat16), p, preferred_element_type=jnp.float32),
        jnp.bfloat16,
        1.0,
    ),  # vm was float32
    "a float16 sum of a float32 argument": (  # vm was inf: V = 1e4 rounded to float16
        lambda p: jnp.sum((p * 1e4).astype(jnp.float16)),
        jnp.float32,
        10.0,
    ),
    "a cast inside lax.map's body": (  # float32 outside the loop: vm was float64
        lambda p: lax.map(
            lambda r: jnp.sum(jnp.sin(r.astype(jnp.float64)) * _W[0, :2]).astype(jnp.float32) * r,
            p.reshape(2, 2),
        ).ravel(),
        jnp.float32,
        1.0,
    ),
    "a float16 low-rank output": (
        lambda p: (jnp.sum(jnp.sin(p)) * jnp.cos(p)).astype(jnp.float16),
        jnp.float32,
        1.0,
    ),
}


@pytest.mark.parametrize("name", list(MIXED))
def test_a_cast_folded_into_a_structure_keeps_jax_s_dtypes(name):
    """jax.jvp's tangent has the output's dtype, jax.vjp's cotangent the argument's and
    jax.jacfwd's matrix the output's: so do mv, vm and to_dense, in value too (the wider
    structure rounded once at the end)."""
    f, dtype, scale = MIXED[name]
    p = jnp.linspace(0.1, 1.7, 4).astype(dtype)
    v = jnp.linspace(0.3, -1.1, 4).astype(dtype)
    J, y = mj.jacobian(f)(p), f(p)
    u = jnp.full(y.shape, scale * 0.7, y.dtype)
    pairs = [
        (J.mv(v), jax.jvp(f, (p,), (v,))[1]),
        (J.vm(u), jax.vjp(f, p)[1](u)[0]),
        (J.to_dense(), jax.jacfwd(f)(p)),
    ]
    for got, expected in pairs:
        assert got.dtype == expected.dtype
        rtol = tolerance(expected.dtype)
        np.testing.assert_allclose(
            np.asarray(got, np.float64), np.asarray(expected, np.float64), rtol=rtol
        )


HALF_LOW_RANK = {  # a float32 sum inside: the low-rank factor pulled back is float32
    "softmax": lambda p: mj.jacobian(jax.nn.softmax)(p),
    "p + sum(p)": lambda p: mj.jacobian(lambda p: p + jnp.sum(p))(p),
    "p sum(p)": lambda p: mj.jacobian(lambda p: p * jnp.sum(p))(p),
    "hessian(logsumexp)": lambda p: mj.hessian(jax.nn.logsumexp)(p),
}
HALF_REFERENCE = {
    "softmax": lambda p: jax.jacfwd(jax.nn.softmax)(p),
    "p + sum(p)": lambda p: jax.jacfwd(lambda p: p + jnp.sum(p))(p),
    "p sum(p)": lambda p: jax.jacfwd(lambda p: p * jnp.sum(p))(p),
    "hessian(logsumexp)": lambda p: jax.hessian(jax.nn.logsumexp)(p),
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(HALF_LOW_RANK))
def test_a_half_precision_diagonal_plus_low_rank_keeps_the_output_s_dtype(name, dtype):
    """Its V pulled back through a float32 sum is float32: the operator's dtype was then
    float32 and every such program (softmax in float16) a RuleOutputError."""
    p = jnp.linspace(0.1, 1.0, 6, dtype=dtype)
    J, expected = HALF_LOW_RANK[name](p), HALF_REFERENCE[name](p)
    assert J.dtype == expected.dtype and J.to_dense().dtype == expected.dtype
    v = jnp.linspace(-1.0, 1.0, 6, dtype=dtype)
    assert J.mv(v).dtype == expected.dtype
    assert J.diagonal().dtype == J.trace().dtype == expected.dtype  # were float32
    dense = np.asarray(J.to_dense(), np.float64)
    np.testing.assert_allclose(dense, np.asarray(expected, np.float64), atol=tolerance(dtype))


FLOAT8 = {
    "a round trip": lambda p: (1.1 * p).astype(jnp.float8_e5m2).astype(jnp.float32),
    "a float8 output": lambda p: p.astype(jnp.float8_e4m3fn),
    "a sum of a round trip": lambda p: jnp.sum(p.astype(jnp.float8_e4m3fn).astype(jnp.float32)),
}


@pytest.mark.parametrize("name", list(FLOAT8))
def test_a_float8_cast_is_differentiated_as_jax_differentiates_it(name):
    """JAX promotes a float8 type with no other: the cast's transpose asked it to and
    raised a TypePromotionError from inside the transform."""
    f, x = FLOAT8[name], jnp.array([1.0, 2.0, 3.0], jnp.float32)
    dense, expected = mj.jacobian(f)(x).to_dense(), jax.jacfwd(f)(x)
    assert dense.dtype == expected.dtype
    np.testing.assert_array_equal(np.asarray(dense, np.float64), np.asarray(expected, np.float64))


def test_a_scale_before_a_cast_to_fewer_digits_stays_before_it():
    """(3.3 p).astype(bfloat16): the scale was moved past the cast and stored in bfloat16
    (3.296875), vm 9.5e-4 off jax.vjp's 3.3 and mv rounded twice."""
    f = lambda p: (3.3 * p).astype(jnp.bfloat16)  # noqa: E731
    x = jnp.linspace(-2.0, 2.0, 64, dtype=jnp.float32)
    J, u = mj.jacobian(f)(x), jnp.ones(64, jnp.bfloat16)
    for got, expected in ((J.vm(u), jax.vjp(f, x)[1](u)[0]), (J.mv(x), jax.jvp(f, (x,), (x,))[1])):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(expected, np.float64))


def test_a_round_trip_through_fewer_digits_folded_into_a_factor_differs_by_its_rounding():
    """Documented: sum(w p.astype(bfloat16).astype(float32)) is a LowRank whose row is w
    rounded to bfloat16 (the cast taken as the linear map it rounds, folded into the
    sum's factor), where jax.jacfwd rounds each unit tangent and keeps w: the two differ by
    bfloat16's rounding (at most 2^-8 relative), never more. lax.reduce_precision with
    bfloat16's bits is followed exactly."""
    w = jnp.array([0.1234567, 1.7654321, -0.3333333], jnp.float32)
    x = jnp.array([0.3, -1.2, 0.7], jnp.float32)
    f = lambda p: jnp.sum(w * p.astype(jnp.bfloat16).astype(jnp.float32))  # noqa: E731
    dense, expected = mj.jacobian(f)(x).to_dense(), jax.jacfwd(f)(x)
    assert not np.array_equal(dense, expected)
    np.testing.assert_allclose(dense, expected, rtol=2.0**-8)
    g = lambda p: jnp.sum(w * lax.reduce_precision(p, 8, 7))  # noqa: E731
    np.testing.assert_array_equal(mj.jacobian(g)(x).to_dense(), jax.jacfwd(g)(x))


def test_the_transpose_of_a_map_to_a_narrower_type_is_jacrev_s_rows():
    """Documented: J.to_dense() of a float32 argument's float16 output is float16, as
    jax.jacfwd's; J.T.to_dense() is the transposed map's, float32 and not rounded to
    float16, as jax.jacrev's rows."""
    W = jnp.array([[0.1234567, 1.7654321, -0.3333333], [2.5, -0.75, 0.125]], jnp.float32)
    f = lambda p: (W @ p).astype(jnp.float16)  # noqa: E731
    x = jnp.array([0.3, -1.2, 0.7], jnp.float32)
    J = mj.jacobian(f)(x)
    forward, rows = jax.jacfwd(f)(x), jax.jacrev(f)(x)
    assert J.to_dense().dtype == forward.dtype == jnp.float16
    np.testing.assert_array_equal(J.to_dense(), forward)
    assert J.T.to_dense().dtype == rows.dtype == jnp.float32
    np.testing.assert_array_equal(J.T.to_dense(), rows.T)


def test_logdet_and_solve_through_a_rounding_are_its_matrix_s():
    f = lambda x: lax.reduce_precision(x * 3.1, 5, 10) * 2.0  # noqa: E731
    x = jnp.array([0.3, -0.7, 1.2])
    J = mj.jacobian(f)(x)
    matrix = jax.jacfwd(f)(x)
    np.testing.assert_allclose(J.logdet(), jnp.linalg.slogdet(matrix)[1], rtol=1e-14)
    np.testing.assert_allclose(J.solve(jnp.ones(3)), jnp.linalg.solve(matrix, jnp.ones(3)))


def test_a_stored_product_with_an_infinite_derivative_is_nan_never_a_wrong_number():
    """Documented: a Hessian's J^T J term stores the product of sqrt'(0) = inf with the 0
    of an unused x_0: NaN in row 0, where jax.hessian has 0; the other rows agree."""
    f = lambda x: jnp.sum(jnp.sqrt(x)[1:]) ** 2  # noqa: E731
    x = jnp.array([1.0, 2.0, 4.0, 0.0])
    dense, expected = mj.hessian(f)(x).to_dense(), jax.hessian(f)(x)
    assert np.isnan(dense[0, 3]) and expected[0, 3] == 0
    finite = np.isfinite(expected[1:])
    np.testing.assert_allclose(dense[1:][finite], expected[1:][finite], rtol=1e-14)


def test_a_low_rank_vm_through_a_nan_is_nan_in_every_entry():
    """Documented: sin(x[:4]) x_5 at x_2 = inf is a LowRank U V^T with V = e_5 stored as
    numbers: vm through U's NaN is V times NaN, NaN everywhere (also for a cotangent 0 at
    entry 2), where jax.vjp has NaN only at 2 and 5 (its broadcast's zeros are
    structural). Never a wrong finite number; at a finite point the two agree."""
    f = lambda x: jnp.sin(x[:4]) * x[5]  # noqa: E731
    x = jnp.array([0.5, 1.0, jnp.inf, 2.0, 3.0, 0.25])
    for u in (jnp.array([1.0, 0.0, 1.0, 0.0]), jnp.array([1.0, 2.0, 0.0, -1.0])):
        assert np.isnan(mj.jacobian(f)(x).vm(u)).all()
        expected = jax.vjp(f, x)[1](u)[0]
        assert np.isnan(expected).sum() == 2 and np.isnan(expected[jnp.array([2, 5])]).all()
    x = x.at[2].set(1.5)
    np.testing.assert_allclose(mj.jacobian(f)(x).vm(u), jax.vjp(f, x)[1](u)[0], rtol=1e-14)


def test_a_product_with_an_infinite_entry_has_the_exact_derivative_at_that_entry():
    """Documented: prod's derivative is the product of the other entries, formed without a
    division; at prod([0, inf, 1]) that is 0 for the infinite entry, where jax.jacfwd
    multiplies its tangent's 0 by inf (NaN). The other entries are non-finite, as in
    jax.jacfwd; mv is jax.jvp's NaN."""
    x = jnp.array([0.0, jnp.inf, 1.0])
    J = mj.jacobian(jnp.prod)(x)
    dense, expected = np.asarray(J.to_dense()), jax.jacfwd(jnp.prod)(x)
    assert dense[1] == 0 and np.isnan(expected).all()
    assert not np.isfinite(dense[[0, 2]]).any()
    assert np.isnan(J.mv(jnp.array([0.0, 1.0, 0.0])))


def test_a_product_over_an_empty_axis_is_one_with_no_derivative():
    """The stick-breaking idiom's first weight, prod(1 - v[:0]) = 1: the rule for the
    product of the other entries crashed on an empty axis (cannot reshape (1,) into (0,))."""

    def stick_breaking(v):
        return jnp.stack([v[k] * jnp.prod(1 - v[:k]) for k in range(v.shape[0])])

    assert_transform_matches_autodiff(stick_breaking, jnp.array([0.3, 0.5, 0.2]))
    A = jnp.arange(6.0).reshape(3, 2)
    assert_transform_matches_autodiff(lambda a: jnp.prod(a[:, :0], axis=1) * a[:, 0], A)
    assert_transform_matches_autodiff(lambda a: jnp.prod(a[:0], axis=0) + a[0], A)


def test_an_empty_maximum_has_no_derivative_where_jax_divides_zero_by_zero():
    """Documented: max(x[:0], initial=0) has no entries to depend on: derivative 0.
    JAX's jvp of reduce_max divides by the count of maximizers, 0 / 0: NaN everywhere."""
    f = lambda x: jnp.max(x[:0], initial=0.0) + x  # noqa: E731
    x = jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(mj.jacobian(f)(x).to_dense(), jnp.eye(3))
    assert np.isnan(jax.jacfwd(f)(x)).all()


def test_a_complex_log_at_zero_is_nan_in_every_direction():
    """Documented: the derivative 1/z of a complex log, multiplied by the tangent, is NaN
    + NaN i at z = 0 in every direction; JAX divides the tangent by z (inf for a real
    one, NaN for an imaginary one). Non-finite in the same entries, finite away from 0;
    1 / z is NaN in both."""
    log = lambda x: jnp.log(lax.complex(x[0], x[1]))  # noqa: E731
    dense, expected = mj.jacobian(log)(jnp.zeros(2)).to_dense(), jax.jacfwd(log)(jnp.zeros(2))
    assert np.isnan(dense.real).all() and np.isnan(dense.imag).all()
    assert np.isinf(expected[0].real) and np.isnan(expected[1].real)
    reciprocal = lambda x: 1 / lax.complex(x[0], x[1])  # noqa: E731
    assert np.isnan(mj.jacobian(reciprocal)(jnp.zeros(2)).to_dense()).all()
    assert np.isnan(jax.jacfwd(reciprocal)(jnp.zeros(2))).all()
    x = jnp.array([0.3, -0.4])
    np.testing.assert_allclose(mj.jacobian(log)(x).to_dense(), jax.jacfwd(log)(x), rtol=1e-14)


def test_abs_at_zero_is_jax_convention():
    """Finding 4: abs'(0) was 0; JAX's rule is select(x >= 0, 1, -1): 1 at +-0, -1 at NaN."""
    x = jnp.array([0.0, -0.0, 2.0, -2.0, jnp.nan])
    J = mj.jacobian(jnp.abs)(x)
    np.testing.assert_array_equal(J.diagonal(), jnp.array([1.0, 1.0, 1.0, -1.0, -1.0]))
    np.testing.assert_array_equal(J.diagonal(), jnp.diagonal(jax.jacfwd(jnp.abs)(x)))


def test_a_nan_derivative_stays_on_the_diagonal():
    """A deliberate difference, documented: asin outside [-1, 1] has NaN on the diagonal
    and exact zeros elsewhere; jax.jacfwd spreads the NaN over the row (0 * NaN). mv
    agrees with jax.jvp."""
    x = jnp.array([0.5, 2.0, -0.5])
    J = mj.jacobian(jnp.arcsin)(x)
    dense = J.to_dense()
    assert np.isnan(dense[1, 1]) and dense[1, 0] == 0 and dense[1, 2] == 0
    assert np.isnan(jax.jacfwd(jnp.arcsin)(x)[1]).all()
    v = jnp.array([1.0, 0.0, 0.0])
    np.testing.assert_array_equal(J.mv(v), jax.jvp(jnp.arcsin, (x,), (v,))[1])


# -------------------------------------------------------------------- 5. fallbacks listed


@pytest.mark.parametrize(
    "f",
    [
        lambda x: jnp.sum(trigamma(x) ** 2),
        lambda x: jnp.sum(trigamma(x)) * x,
        lambda x: jnp.stack([jnp.var(trigamma(x)), jnp.std(x)]),
    ],
    ids=["a sum of squares (LowRank)", "a sum times x (DiagonalPlusLowRank)", "stacked moments"],
)
def test_fallbacks_are_listed_through_every_simplification(f):
    """Finding 5: a fallback folded into a LowRank vanished from J.fallbacks (then with
    sort, prod and stack, which have rules now; test_trigamma has none)."""
    with pytest.raises(UnsupportedPrimitiveError, match="test_trigamma"):
        mj.jacobian(f)(X)
    J = mj.jacobian(f, fallback="autodiff")(X)
    assert J.fallbacks and all("test_trigamma" in note for note in J.fallbacks), J.fallbacks
    assert "autodiff fallback" in str(J)
    assert_jacobians_close(J.to_dense(), jax.jacfwd(f)(X))
    jitted = jax.jit(mj.jacobian(f, fallback="autodiff"))(X)
    assert jitted.fallbacks == J.fallbacks


# ----------------------------------------------------------------------- 6. fill gather


@pytest.mark.parametrize("fill", [None, -1.0])
def test_fill_gather_rows_out_of_bounds_are_zero(fill):
    """Finding 6: the fill value (NaN by default) came into to_dense and mv."""
    f = lambda x: jnp.take(x, jnp.array([1, 9]), fill_value=fill)  # noqa: E731
    x = jnp.arange(4.0)
    J = mj.jacobian(f)(x)
    expected = jax.jacfwd(f)(x)
    np.testing.assert_array_equal(J.to_dense(), expected)
    np.testing.assert_array_equal(J.mv(jnp.ones(4)), expected @ jnp.ones(4))
    np.testing.assert_array_equal(J.vm(jnp.ones(2)), jnp.ones(2) @ expected)


def test_an_index_out_of_bounds_is_clamped_both_ways_as_the_value_is():
    """x[idx] promises its indices in bounds, and XLA clamps one that is not: x[[7]] of 4
    entries is x_3, jax.jacfwd's row e_3, but jax.vjp drops it (0). mv / to_dense were
    jax.jvp's and vm jax.vjp's, so a sum after it (pulled back) gave 0 where jax.jvp gives
    1. Now every direction clamps; vm differs from jax.vjp, documented. A scatter drops an
    out-of-bounds update both ways."""
    x = jnp.array([0.3, -1.2, 0.7, 2.0])
    for f in (lambda z: z[jnp.array([7, 1])], lambda z: jnp.sum(z[jnp.array([7])]) * z):
        J, expected = mj.jacobian(f)(x), jax.jacfwd(f)(x)
        np.testing.assert_array_equal(J.to_dense(), expected)
        u, v = jnp.cos(jnp.arange(expected.shape[0])), jnp.sin(jnp.arange(4.0))
        np.testing.assert_allclose(J.mv(v), jax.jvp(f, (x,), (v,))[1], rtol=1e-14)
        np.testing.assert_allclose(J.vm(u), u @ expected, rtol=1e-14)
    assert jax.vjp(lambda z: z[jnp.array([7])], x)[1](jnp.ones(1))[0][3] == 0
    stencil = lambda z: jnp.sum(z * z[jnp.arange(1, 5)])  # noqa: E731  (z_3 z_3 last)
    H, expected = mj.hessian(stencil)(x).to_dense(), jax.hessian(stencil)(x)
    np.testing.assert_array_equal(H, expected)  # the gradient program drops z_3's second
    assert expected[3, 3] == 1 and jax.jacfwd(jax.jacfwd(stencil))(x)[3, 3] == 2
    for mode in ("promise_in_bounds", "drop", "clip"):
        g = lambda y, mode=mode: x.at[jnp.array([7, 1])].add(y, mode=mode) ** 2  # noqa: E731
        y = jnp.array([1.0, 2.0])
        J, expected = mj.jacobian(g)(y), jax.jacfwd(g)(y)
        np.testing.assert_allclose(J.to_dense(), expected, rtol=1e-14)
        np.testing.assert_allclose(J.vm(jnp.ones(4)), jnp.ones(4) @ expected, rtol=1e-14)


@pytest.mark.parametrize("start", [-1, -5, -100, 3])
def test_a_dynamic_slice_reads_a_negative_start_as_the_primitive_clamps_it(start):
    """lax.dynamic_slice wraps a negative start once, and its equation clamps what is left:
    a start of -5 on 4 entries (or -1 without wrapping) reads from 0. The slice's map
    called lax.dynamic_slice again, which wrapped it a second time: rows 2-3 for 0-1, a
    silent wrong Jacobian, mv and vm; the same for dynamic_update_slice."""
    x = jnp.array([1.0, 2.0, 3.0, 4.0])
    s = jnp.array(start)
    programs = (
        lambda x: lax.dynamic_slice(x, (s,), (2,)) * jnp.array([1.0, 2.0]),
        lambda x: lax.dynamic_slice(x, (s,), (2,), allow_negative_indices=False) ** 2,
        lambda x: lax.dynamic_update_slice(x, 10 * x[:2] ** 2, (s - 4,)),
        lambda x: lax.dynamic_update_slice(x**2, 10 * x[:2], (s,), allow_negative_indices=False),
    )
    for f in programs:
        assert_transform_matches_autodiff(f, x)


def test_max_pooling_at_a_tie_is_jax_jvp_s_in_both_directions():
    """Documented: at a tie inside a padded window JAX's jvp of reduce_window max and its
    vjp (select_and_scatter_add) may credit different maximizers (which one depends on how
    XLA packs value and tangent), so jax.jacfwd and jax.jacrev may differ; the transform's
    vm is the transpose of its mv, jax.jacfwd's matrix."""
    f = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (2, 2), (1, 1), "SAME")  # noqa: E731
    x = jnp.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    u = jnp.arange(1.0, 7.0).reshape(2, 3)
    J, forward = mj.jacobian(f)(x), jax.jacfwd(f)(x).reshape(6, 6)
    np.testing.assert_array_equal(J.to_dense().reshape(6, 6), forward)
    np.testing.assert_array_equal(J.vm(u).ravel(), u.ravel() @ forward)


def test_a_running_product_with_a_nan_entry_is_jacfwd_s_both_ways():
    """Documented: at a NaN entry JAX's jvp of cumprod (a forward scan of each tangent)
    fills the rows from it on with NaN, while its vjp (a backward scan) finds that entry's
    own column finite, so jax.jacfwd and jax.jacrev differ; the transform's matrix is
    jax.jacfwd's and its vm that matrix's transpose, NaN where jax.vjp has 32."""
    z, u = jnp.array([1.0, jnp.nan, 2.0, 3.0]), jnp.array([1.0, 2.0, 3.0, 4.0])
    J, forward = mj.jacobian(jnp.cumprod)(z), jax.jacfwd(jnp.cumprod)(z)
    np.testing.assert_array_equal(J.to_dense(), forward)
    np.testing.assert_array_equal(J.mv(u), jax.jvp(jnp.cumprod, (z,), (u,))[1])
    np.testing.assert_array_equal(J.vm(u), u @ forward)  # all NaN: row 1 on is NaN
    assert jax.vjp(jnp.cumprod, z)[1](u)[0][1] == 32.0  # u_1 z_0 + u_2 z_0 z_2 + u_3 z_0 z_2 z_3


# ---------------------------------------------------------------- 7. strict promotion


@pytest.mark.parametrize("name", ["erf", "erfc", "erf_inv", "mul", "exp2", "fft"])
def test_float32_programs_under_strict_promotion(name):
    """Finding 7: float64 NumPy constants in the derivatives raised TypePromotionError."""
    programs = {
        "erf": lax.erf, "erfc": lax.erfc, "erf_inv": lax.erf_inv, "mul": lambda x: x * x * 2.0,
        "exp2": lax.exp2, "fft": lambda x: jnp.fft.irfft(jnp.fft.rfft(x), 4),
    }  # fmt: skip
    f = programs[name]
    x = jnp.linspace(-0.5, 0.5, 4, dtype=jnp.float32)
    with jax.numpy_dtype_promotion("strict"):
        J = mj.jacobian(f)(x)
        dense = J.to_dense()
    assert dense.dtype == jnp.float32
    assert_jacobians_close(dense, jax.jacfwd(f)(x))


# ------------------------------------------------------------ the per-equation check


def test_a_rule_with_a_wrong_shape_is_named(monkeypatch):
    """Every rule's Jacobian is checked against its equation: a broken rule is an error
    naming the primitive and the rule, not a wrong product later."""
    broken = lambda ctx, eqn, ins, ops: (interpreter.bind(eqn, ins), [ops[0]])  # noqa: E731
    monkeypatch.setitem(registry.RULES, "reduce_sum", broken)
    with pytest.raises(interpreter.RuleOutputError, match=r"'reduce_sum'.*needs \(\) <- \(6,\)"):
        mj.jacobian(jnp.sum)(X)


# ---------------------------------------------------------------- messages for users


def test_an_error_inside_a_flax_module_names_the_users_line():
    nn = pytest.importorskip("flax.linen")

    class ScaledDense(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.Dense(3)(x)
            return TRIGAMMA.bind(y)  # a primitive without a rule

    model = ScaledDense()
    params = model.init(jax.random.key(0), X)
    with pytest.raises(UnsupportedPrimitiveError) as raised:
        mj.jacobian(lambda x: model.apply(params, x))(X)
    message = str(raised.value)
    assert "test_fidelity.py" in message and "ScaledDense.__call__" in message
    assert "flax/linen" not in message.split(" at ")[1].split(",")[0]


def test_an_error_from_fori_loop_says_so():
    f = lambda x: lax.fori_loop(0, 3, lambda i, c: trigamma(c), x)  # noqa: E731
    with pytest.raises(
        UnsupportedPrimitiveError, match=r"'test_trigamma'.*inside scan\[length 3\] from fori_loop"
    ):
        mj.jacobian(f)(X)


def test_repeated_eigenvalues_as_jax_differentiates_them():
    """eigh's eigenvector derivative divides by eigenvalue gaps: at a repeated eigenvalue
    JAX's rule has an infinite factor, and the transform gives the same entries (NaN and
    infinities where JAX has them); the eigenvalues' derivative stays finite."""
    f = lambda x: jnp.linalg.eigh(jnp.diag(x))[1].ravel()  # noqa: E731
    x = jnp.array([1.0, 1.0, 2.0])
    J = mj.jacobian(f)(x)
    columns = jax.vmap(lambda v: jax.jvp(f, (x,), (v,))[1])(jnp.eye(3))
    np.testing.assert_array_equal(jax.vmap(J.mv)(jnp.eye(3)), columns)
    values = mj.jacobian(lambda x: jnp.linalg.eigh(jnp.diag(x))[0])(x)
    np.testing.assert_array_equal(
        values.to_dense(), jax.jacfwd(lambda x: jnp.linalg.eigh(jnp.diag(x))[0])(x)
    )


@pytest.mark.parametrize("n", [2, 4, 5, 8])
def test_a_program_with_an_empty_intermediate_array(n):
    """lax.associative_scan slices x[1:-1:2] and the like, empty at these lengths: the
    map through an empty array is zero (the matrix raised ZeroDivisionError before)."""
    f = lambda x: jax.lax.associative_scan(jnp.multiply, x)  # noqa: E731
    x = jnp.linspace(0.5, 1.5, n)
    np.testing.assert_allclose(mj.jacobian(f)(x).to_dense(), jax.jacfwd(f)(x), rtol=1e-13)


def test_the_hessian_of_a_cumulative_product_whose_jvp_has_empty_slices():
    g = lambda z: jnp.sum(jnp.cumprod(z))  # noqa: E731
    z = jnp.linspace(0.5, 1.5, 5)
    np.testing.assert_allclose(mj.hessian(g)(z).to_dense(), jax.hessian(g)(z), rtol=1e-13)


@pytest.mark.parametrize(
    "f",
    [
        lambda x: (2.0 * x, x > 0),
        lambda x: (jnp.sin(x), jnp.argmax(x)),
        lambda x: {"a": jnp.sin(x), "order": jnp.argsort(x)},
    ],
    ids=["a mask", "an argmax", "an argsort in a dict"],
)
def test_an_integer_or_boolean_output_has_a_zero_jacobian_without_a_rule(f):
    """JAX's tangent of such an output is float0 (no derivative): the primitives that make
    it (gt, argmax, sort's indices) need no rule, without the fallback. (jax.jacfwd itself
    fails on a boolean output in jax 0.10: the float leaves are compared with jax.jvp.)"""
    J, values = mj.jacobian(f)(X), f(X)
    columns = jax.vmap(lambda t: jax.jvp(f, (X,), (t,))[1], out_axes=-1)(jnp.eye(6))
    for ours, value, column in zip(
        jax.tree.leaves(J, is_leaf=operators.is_operator),
        jax.tree.leaves(values),
        jax.tree.leaves(columns),
        strict=True,
    ):
        dense = ours.to_dense()
        assert dense.shape == value.shape + X.shape
        if jnp.issubdtype(value.dtype, jnp.floating):
            np.testing.assert_allclose(dense, column, rtol=1e-13)
        else:  # documented: zeros in the argument's float dtype (jax.jacfwd: the output's)
            assert not np.any(dense) and dense.dtype == X.dtype


def test_keyword_arguments_are_passed_through_not_differentiated():
    """As jax.jacfwd and jax.hessian (a bare TypeError from the wrapper before)."""
    f = lambda x, scale=1.0: jnp.sum(jnp.sin(x)) * scale * x  # noqa: E731
    loss = lambda x, scale=1.0: jnp.sum(jnp.sin(x) ** 2) * scale  # noqa: E731
    J = mj.jacobian(f)(X, scale=jnp.array(2.0))
    assert_jacobians_close(J.to_dense(), jax.jacfwd(f)(X, scale=jnp.array(2.0)))
    H = mj.hessian(loss)(X, scale=3.0)
    assert_jacobians_close(H.to_dense(), jax.hessian(loss)(X, scale=3.0))
    assert_jacobians_close(mj.laplacian(loss)(X, scale=3.0), jnp.trace(H.to_dense()))


def test_a_raveled_jacobian_with_a_complex_output_transposes_to_the_real_argument():
    """ravel=True: vm was complex128 (zero imaginary part) where jax.vjp's is float64."""
    f = lambda x: {"z": C[:4] * x, "r": jnp.sin(x)}  # noqa: E731
    x = X[:4]
    R = mj.jacobian(f, ravel=True)(x)
    u = {"r": jnp.ones(4), "z": jnp.ones(4) + 1j}
    flat = jnp.concatenate([u["r"], u["z"]])  # the leaves in pytree order: r, z
    expected = jax.vjp(f, x)[1](u)[0]
    assert R.vm(flat).dtype == expected.dtype == jnp.float64
    assert_jacobians_close(R.vm(flat), expected)


def test_eigh_of_a_matrix_that_is_not_symmetric_is_differentiated_at_the_one_lapack_reads():
    """Documented: with symmetrize_input=False LAPACK reads the lower triangle. The
    transform differentiates at that symmetric matrix S (dw_i/dA = v_i v_i^T, S's
    eigenvectors); JAX's jvp at (A + A^T) / 2, where its primal differs from f(A)."""
    A = jnp.array([[3.0, 1.0], [0.5, 5.0]])
    f = lambda A: jnp.linalg.eigh(A, symmetrize_input=False)[0]  # noqa: E731
    _, V = np.linalg.eigh(np.asarray(A), UPLO="L")  # NumPy's LAPACK: the oracle
    expected = np.stack([np.outer(V[:, i], V[:, i]) for i in range(2)])
    np.testing.assert_allclose(mj.jacobian(f)(A).to_dense(), expected, rtol=1e-12)
    assert not np.allclose(jax.jacfwd(f)(A), expected, atol=1e-3)  # JAX's other point
    symmetric = (A + A.T) / 2
    np.testing.assert_allclose(mj.jacobian(f)(symmetric).to_dense(), jax.jacfwd(f)(symmetric))


def test_a_float64_map_of_float32_values_keeps_its_float64_digits():
    """A float32 argument cast up and computed on in float64: jax.jacfwd pushes the float32
    unit tangents forward exactly, float64 digits. A low-rank factor pulled back through
    the cast's transpose (which rounds a cotangent to float32, as jax.vjp does) kept 1e-8
    of float32 rounding in a float64 Jacobian, Hessian block and Gauss-Newton matrix; the
    structures keep the wider type now. A user's vm is still jax.vjp's float32."""
    a = jnp.array([0.5, 0.2], jnp.float32)
    c = jnp.array([0.1, -0.3, 0.7])
    g = lambda a: jnp.sum(jnp.sin(a.astype(jnp.float64))) * c  # noqa: E731
    exact = jax.jacfwd(g)(a.astype(jnp.float64))
    for wrap in (lambda f: f, jax.jit):
        np.testing.assert_array_equal(wrap(mj.jacobian(g))(a).to_dense(), exact)
    f = lambda a, x: jnp.sum(jnp.sin(a * x)) * jnp.sum(x**2)  # noqa: E731
    x = jnp.array([0.3, -0.7])
    block = mj.hessian(f, argnums=(0, 1))(a, x)[1][0].to_dense()
    np.testing.assert_allclose(block, jax.hessian(f, argnums=(0, 1))(a, x)[1][0], rtol=1e-15)
    model = lambda a: jnp.tanh(a.astype(jnp.float64) * c[:2]) * 2 + jnp.sum(a.astype(float))  # noqa: E731
    rows = jax.jacfwd(model)(a)
    G = mj.gauss_newton(model, lambda y: jnp.sum(y**2))(a)
    np.testing.assert_allclose(G.to_dense(), 2 * rows.T @ rows, rtol=1e-15)
    np.testing.assert_allclose(G.diagonal(), 2 * jnp.sum(rows**2, axis=0), rtol=1e-15)
    vm, reference = mj.jacobian(g)(a).vm(c), jax.vjp(g, a)[1](c)[0]
    np.testing.assert_allclose(vm, reference, rtol=1e-7)


def test_a_backward_rule_s_cotangents_are_read_as_each_jax_returns_them():
    """JAX up to 0.10 returns a flat backward rule's cotangents as a list; from 0.11 the
    pair (that list, the rule's logs). Read as cotangents, the pair gave every input of a
    clip_gradient a cotangent of 0, without an error."""
    from matcalc_jax.operators.programs import backward_cotangents

    class Rule:
        def __init__(self, returned):
            self.returned = returned

        def call_wrapped(self, *args):
            return self.returned

    g, h = jnp.ones(3), jnp.zeros(2)
    for returned in ([g, h], ([g, h], None)):
        found = backward_cotangents(Rule(returned), "residual", "cotangent")
        assert len(found) == 2 and found[0] is g and found[1] is h
