"""Bad input: a clear error that names the rule, the argument, and what it got and expected,
raised at trace time under jax.jit, never a deep XLA trace or a silent wrong answer."""

import re

import jax
import jax.numpy as jnp
import pytest

import matcalc_jax as mj

v3, v4 = jnp.ones(3), jnp.ones(4)
M23, M34 = jnp.ones((2, 3)), jnp.ones((3, 4))
s0 = jnp.float32(0.5)

# (call, exception, pieces the message must contain)
CASES = {
    "linear A a string": (
        lambda: mj.linear_jacobian("abc", v3),
        TypeError,
        ["'linear'", "'A'", "is str", "floating"],
    ),
    "verify rule_ids an int": (
        lambda: mj.verify(5),
        TypeError,
        ["verify", "rule_ids=5", "expected a rule id"],
    ),
    "linear x length": (
        lambda: mj.linear_jacobian(M23, v4),
        ValueError,
        ["'linear'", "'x'", "(4,)", "(3,)", "(2, 3)"],
    ),
    "linear A rank": (
        lambda: mj.linear_jacobian(v3, v3),
        ValueError,
        ["'linear'", "'A'", "(3,)", "rank 2"],
    ),
    "linear integer dtype": (
        lambda: mj.linear_jacobian(jnp.ones((2, 3), jnp.int32), v3),
        TypeError,
        ["'linear'", "'A'", "int32", "floating"],
    ),
    "linear_transposed x length": (
        lambda: mj.linear_transposed_jacobian(v3, M23),
        ValueError,
        ["'linear_transposed'", "'x'", "(3,)", "(2,)", "rows"],
    ),
    "identity rank": (
        lambda: mj.identity_jacobian(M23),
        ValueError,
        ["'identity'", "'x'", "(2, 3)", "rank 1"],
    ),
    "elementwise rank": (
        lambda: mj.elementwise_jacobian(M23),
        ValueError,
        ["'elementwise'", "'derivative'", "(2, 3)"],
    ),
    "elementwise bool": (
        lambda: mj.elementwise_jacobian(jnp.ones(3, bool)),
        TypeError,
        ["'elementwise'", "bool"],
    ),
    "logistic_scalar rank": (
        lambda: mj.logistic_scalar_jacobian(v3),
        ValueError,
        ["'logistic_scalar'", "'x'", "(3,)", "rank 0"],
    ),
    "logistic_vector integer": (
        lambda: mj.logistic_jacobian(jnp.arange(3, dtype=jnp.int32)),
        TypeError,
        ["'logistic_vector'", "'x'", "int32"],
    ),
    "power exponent rank": (
        lambda: mj.power_jacobian(v3, v3),
        ValueError,
        ["'power'", "'r'", "(3,)", "rank 0"],
    ),
    "exp rank": (lambda: mj.exp_jacobian(s0), ValueError, ["'exp'", "'x'", "()", "rank 1"]),
    "log complex": (
        lambda: mj.log_jacobian(jnp.ones(3, jnp.complex64)),
        TypeError,
        ["'log'", "complex64"],
    ),
    "logistic_general L rank": (
        lambda: mj.logistic_general_jacobian(v3, v3, s0, s0),
        ValueError,
        ["'logistic_general'", "'L'", "(3,)"],
    ),
    "softmax rank": (
        lambda: mj.softmax_jacobian(M23),
        ValueError,
        ["'softmax'", "'x'", "(2, 3)", "rank 1"],
    ),
    "product_inner z length": (
        lambda: mj.product_inner(v3, v4, jnp.eye(3), jnp.eye(4)),
        ValueError,
        ["'product_inner'", "'z'", "(4,)", "(3,)"],
    ),
    "product_inner dz input shape": (
        lambda: mj.product_inner(v3, v3, jnp.ones((3, 5)), jnp.ones((3, 6))),
        ValueError,
        ["'product_inner'", "'dz_dx'", "(3, 6)", "(3, 5)", "numerator"],
    ),
    "product_inner dy output axis, denominator": (
        lambda: mj.product_inner(v3, v3, jnp.ones((3, 5)), jnp.ones((5, 3)), layout="denominator"),
        ValueError,
        ["'product_inner'", "'dy_dx'", "(3, 5)", "in.shape + out.shape", "denominator"],
    ),
    "product_bilinear A shape": (
        lambda: mj.product_bilinear(v3, M34, v3, jnp.eye(3), jnp.eye(3)),
        ValueError,
        ["'product_bilinear'", "'A'", "(3, 4)", "(3, 3)"],
    ),
    "product_scalar_vector y rank": (
        lambda: mj.product_scalar_vector(v3, v3, v3, jnp.eye(3)),
        ValueError,
        ["'product_scalar_vector'", "'y'", "rank 0"],
    ),
    "product_scalar_vector dy shape": (
        lambda: mj.product_scalar_vector(s0, v3, v4, jnp.eye(3)),
        ValueError,
        ["'product_scalar_vector'", "'dy_dx'", "(4,)", "(3,)"],
    ),
    "sum shapes": (
        lambda: mj.sum_rule(M23, M34),
        ValueError,
        ["'sum'", "'dz_dx'", "(3, 4)", "(2, 3)"],
    ),
    "chain_vector inner": (
        lambda: mj.chain_vector(M23, jnp.ones((4, 5))),
        ValueError,
        ["'chain_vector'", "'dy_dx'", "(4, 5)", "(3,)"],
    ),
    "chain_vector outer rank": (
        lambda: mj.chain_vector(v3, jnp.ones((3, 5))),
        ValueError,
        ["'chain_vector'", "'dz_dy'", "rank 2"],
    ),
    "chain_matrix_trace tensor": (
        lambda: mj.chain_matrix_trace(M23, jnp.ones((2, 4, 5, 5))),
        ValueError,
        ["'chain_matrix_trace'", "'dY_dX'", "(2, 4, 5, 5)", "(2, 3)"],
    ),
    "chain_matrix_trace input not a matrix": (
        lambda: mj.chain_matrix_trace(M23, jnp.ones((2, 3, 5))),
        ValueError,
        ["'chain_matrix_trace'", "'dY_dX'", "(5,)", "matrix"],
    ),
    "chain_matrix_vector outer rank": (
        lambda: mj.chain_matrix_vector(M23, jnp.ones((2, 3, 4))),
        ValueError,
        ["'chain_matrix_vector'", "'dz_dy'", "rank 1"],
    ),
    "chain_scalar du_dx": (
        lambda: mj.chain_scalar(M23, v4),
        ValueError,
        ["'chain_scalar'", "'du_dx'", "(4,)", "(3,)"],
    ),
    "affine_matrix A columns": (
        lambda: mj.affine_matrix_jacobian(M23, M23, M34),
        ValueError,
        ["'affine_matrix'", "'A'", "(2, 3)", "(2, 2)", "A @ X"],
    ),
    "affine_matrix gradient dz_dY": (
        lambda: mj.affine_matrix_gradient(M34, M23, M34),
        ValueError,
        ["'affine_matrix'", "'dz_dY'", "(3, 4)", "(2, 4)"],
    ),
    "trace_chain_per_entry tensor": (
        lambda: mj.trace_chain_per_entry(M23, jnp.ones((2, 4, 5, 5))),
        ValueError,
        ["'chain_matrix_trace'", "'dY_dX'", "(2, 4, 5, 5)"],
    ),
    "linear_layer bias length": (
        lambda: mj.linear_layer_weight_jacobian(M23, v3, v3),
        ValueError,
        ["'linear_layer'", "'b'", "(3,)", "(2,)", "rows of W"],
    ),
    "linear_layer_input x length": (
        lambda: mj.linear_layer_input_jacobian(M23, v4, jnp.ones(2)),
        ValueError,
        ["'linear_layer_input'", "'x'", "(4,)"],
    ),
    "trace_linear A shape": (
        lambda: mj.trace_linear_gradient(M23, M23),
        ValueError,
        ["'trace_linear'", "'A'", "(2, 3)", "(3, 2)"],
    ),
    "trace_quadratic A shape": (
        lambda: mj.trace_quadratic_gradient(M23, jnp.eye(3)),
        ValueError,
        ["'trace_quadratic'", "'A'", "(3, 3)", "(2, 2)"],
    ),
    "frobenius rank": (
        lambda: mj.frobenius_gradient(v3),
        ValueError,
        ["'frobenius'", "'X'", "(3,)", "rank 2"],
    ),
    "inverse not square": (
        lambda: mj.inverse_jacobian(M23),
        ValueError,
        ["'inverse'", "'X'", "(2, 3)", "square"],
    ),
    "det integer": (
        lambda: mj.det_gradient(jnp.eye(3, dtype=jnp.int32)),
        TypeError,
        ["'det'", "'X'", "int32"],
    ),
    "logdet not square": (
        lambda: mj.logdet_gradient(M34),
        ValueError,
        ["'logdet'", "'X'", "(3, 4)", "square"],
    ),
    "solve b length": (
        lambda: mj.solve_jacobian(jnp.eye(3), v4),
        ValueError,
        ["'solve'", "'b'", "(4,)", "(3,)"],
    ),
    "solve_rhs A not square": (
        lambda: mj.solve_rhs_jacobian(M23, v3),
        ValueError,
        ["'solve_rhs'", "'A'", "(2, 3)", "square"],
    ),
    "quadratic_form A shape": (
        lambda: mj.quadratic_form_hessian(v3, M34),
        ValueError,
        ["'quadratic_form'", "'A'", "(3, 4)", "(3, 3)"],
    ),
    "quadratic_form structured a string": (
        lambda: mj.quadratic_form_hessian(v3, jnp.eye(3), structured="no"),
        TypeError,
        ["'quadratic_form'", "structured", "str", "'no'", "True or False"],
    ),
    "frobenius structured a number": (
        lambda: mj.frobenius_hessian(M23, structured=1),
        TypeError,
        ["'frobenius'", "structured", "int", "True or False"],
    ),
    "least_squares b length": (
        lambda: mj.least_squares_gradient(v3, M23, v3),
        ValueError,
        ["'least_squares'", "'b'", "(3,)", "(2,)"],
    ),
    "logistic_regression labels": (
        lambda: mj.logistic_regression_hessian(v3, M23, v3),
        ValueError,
        ["'logistic_regression'", "'y'", "(3,)", "(2,)", "one label per row"],
    ),
    "softmax_cross_entropy targets": (
        lambda: mj.softmax_cross_entropy_gradient(v3, v4),
        ValueError,
        ["'softmax_cross_entropy'", "'t'", "(4,)", "(3,)"],
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_raises_a_clear_error(case):
    call, exception, pieces = CASES[case]
    with pytest.raises(exception) as info:
        call()
    message = str(info.value)
    for piece in pieces:
        assert piece in message, f"{piece!r} missing from: {message}"


def test_errors_are_raised_at_trace_time_under_jit():
    jitted = jax.jit(mj.linear_jacobian)
    with pytest.raises(ValueError, match=re.escape("expected (3,)")):
        jitted(M23, v4)
    with pytest.raises(ValueError, match="'dy_dx'"):
        jax.jit(mj.chain_vector)(M23, jnp.ones((4, 5)))


@pytest.mark.parametrize("layout", ["Numerator", "row", None, 0])
def test_unknown_layout_names_the_allowed_values(layout):
    with pytest.raises(ValueError) as info:
        mj.softmax_jacobian(v3, layout=layout)
    assert "'softmax'" in str(info.value)
    assert "'numerator', 'denominator'" in str(info.value)


@pytest.mark.parametrize("r", mj.rules(), ids=[r.id for r in mj.rules()])
def test_every_rule_checks_its_layout_argument(r):
    args = r.example(jax.random.key(0))
    for method in (r.jacobian, r.jacfwd, r.jacrev):
        with pytest.raises(ValueError, match=f"rule '{r.id}'"):
            method(*args, layout="transposed")


@pytest.mark.parametrize("r", mj.rules(), ids=[r.id for r in mj.rules()])
def test_every_rule_refuses_an_integer_differentiated_argument(r):
    args = list(r.example(jax.random.key(0)))
    args[r.wrt] = jnp.asarray(args[r.wrt]).astype(jnp.int32)
    with pytest.raises(TypeError, match=f"rule '{r.id}'.*int32"):
        r.jacobian(*args)


@pytest.mark.parametrize("r", mj.rules(), ids=[r.id for r in mj.rules()])
def test_every_rule_refuses_a_differentiated_argument_of_the_wrong_rank(r):
    args = list(r.example(jax.random.key(0)))
    x = jnp.asarray(args[r.wrt])
    args[r.wrt] = x[None]  # one axis too many
    with pytest.raises(ValueError, match=f"rule '{r.id}'"):
        r.jacobian(*args)
    with pytest.raises(ValueError, match=f"rule '{r.id}'"):
        r.fn(*args)


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: mj.jacobian(5), "matcalc_jax.jacobian: f is int 5; expected a function"),
        (lambda: mj.hessian("f"), "matcalc_jax.hessian: f is str 'f'; expected a function"),
        (lambda: mj.laplacian(5), "matcalc_jax.laplacian: f is int 5"),
        (lambda: mj.gauss_newton(5, jnp.sum), "matcalc_jax.gauss_newton: model is int 5"),
        (lambda: mj.gauss_newton(jnp.sin, None), "matcalc_jax.gauss_newton: loss is NoneType"),
        (lambda: mj.batched_jacobian(5, jnp.ones((2, 3))), "batched_jacobian: jacobian is int"),
    ],
    ids=["jacobian", "hessian", "laplacian", "gauss_newton model", "gauss_newton loss", "batched"],
)
def test_a_transform_of_something_not_callable_says_so_when_made(make, said):
    """It failed when called, deep in JAX (or in functools.wraps), without naming the
    function."""
    with pytest.raises(TypeError) as raised:
        make()
    assert said in str(raised.value)


def _while_loop_sum(x):
    step = lambda c: (jnp.sin(c[0]), c[1] + 1)  # noqa: E731
    return jax.lax.while_loop(lambda c: c[1] < 3, step, (x, 0))[0].sum()


@pytest.mark.parametrize("transform", [mj.hessian, mj.laplacian], ids=["hessian", "laplacian"])
def test_a_second_derivative_through_a_while_loop_names_the_transform(transform):
    """JAX's reverse mode cannot run a while_loop: the error was JAX's alone, naming neither
    the transform nor the function; it now says which and why, JAX's words kept."""
    with pytest.raises(ValueError) as raised:
        transform(_while_loop_sum)(jnp.ones(3))
    message = str(raised.value)
    assert message.startswith(
        f"matcalc_jax.{transform.__name__}: jax.grad(_while_loop_sum), whose Jacobian the "
        "Hessian is, cannot be built: Reverse-mode differentiation does not work"
    ), message
