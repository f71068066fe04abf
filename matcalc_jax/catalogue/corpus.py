"""The corpus: whole programs whose Jacobians come from the transform, not from a rule.

Each program is a ``Rule`` record whose closed form is ``matcalc_jax.jacobian(fn)``
(``to_dense`` for the dense form, the operator itself for the structured one), so the
harness checks the transform on it exactly as it checks a hand-written rule: against
``jax.jacfwd`` and ``jax.jacrev``, its ``mv`` and ``vm`` against ``jax.jvp`` and ``jax.vjp``,
and in float64 against finite differences. ``structure`` names the operator type the
transform should find (the tests pin it).
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.flatten_util import ravel_pytree

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import DIAGONAL_SIZES, MATMUL_SIZES, MATRIX_SIZES, Rule
from matcalc_jax.core.layout import Layout, from_numerator
from matcalc_jax.transform import jacobian

#: The operator type the transform should find for each program, at sizes above one.
STRUCTURE: dict[str, str] = {}


def _transform_forms(fn: Any, wrt: int) -> tuple[Any, Any]:
    """The closed and structured forms of program ``fn``: both ``jacobian(fn, wrt)``.

    The two share one transform while its operator lives: a call with the very same
    arguments (the same array or tracer objects, under the same matrix-product precision and
    64-bit mode) as the last structured form, whose operator its caller still holds, reuses
    that operator. The harness builds the structured form first and keeps it while it takes
    the closed form in both layouts, so a case traces the transform once, not three times
    (the same arrays either way: one derivation). Only weak references are kept, so no
    tracer outlives its trace.
    """
    last: list[Any] = [None]  # (the context, weak references to the leaves, tree, operator)

    def context() -> tuple:
        return (repr(jax.config.jax_default_matmul_precision), bool(jax.config.jax_enable_x64))

    def kept_operator(args: tuple) -> Any:
        kept = last[0]
        if kept is None:
            return None
        kept_context, refs, tree, kept_op = kept
        leaves, args_tree = jax.tree_util.tree_flatten(args)
        op = kept_op()
        same = (
            op is not None
            and kept_context == context()
            and tree == args_tree
            and all(ref() is leaf for ref, leaf in zip(refs, leaves, strict=True))
        )
        return op if same else None

    def keep(args: tuple, op: Any) -> Any:
        leaves, tree = jax.tree_util.tree_flatten(args)
        try:
            last[0] = (context(), [weakref.ref(leaf) for leaf in leaves], tree, weakref.ref(op))
        except TypeError:  # a leaf that takes no weak reference (a Python number)
            last[0] = None
        return op

    def closed(*args: Any, layout: Layout = "numerator") -> Array:
        op = kept_operator(args)
        op = jacobian(fn, wrt)(*args) if op is None else op.with_layout("numerator")
        return from_numerator(op.to_dense(), len(op.out_shape), layout)

    def structured(*args: Any, layout: Layout = "numerator") -> Any:
        op = kept_operator(args)
        return keep(args, (jacobian(fn, wrt)(*args) if op is None else op).with_layout(layout))

    return closed, structured


def program(
    id: str, title: str, plain: str, fn: Any, wrt: int, make_example: Any, structure: str, **extra
) -> Rule:
    """A corpus program as a ``Rule`` whose closed form is the transform; ``latex`` (in
    ``extra``) is its Jacobian in LaTeX, the same in both layouts' reading here."""
    closed, structured = _transform_forms(fn, wrt)
    STRUCTURE[id] = structure
    latex = extra.pop("latex", plain)
    return Rule(
        id=id,
        title=title,
        formula=latex,
        numerator_formula=latex,
        plain=plain,
        source="program",
        shapes=extra.pop("shapes", ""),
        fn=fn,
        wrt=wrt,
        closed_form=closed,
        structured_form=structured,
        public="matcalc_jax.jacobian",
        make_example=make_example,
        **extra,
    )


def _scaled(key: Array, rows: int, cols: int, dtype: Any) -> Array:
    """A weight matrix with entries of size 1/(2 sqrt(cols)): W x has entries of size 1/2
    for x of size 1, so tanh(W x + b) stays off its flat tails, where 1 - tanh^2 is a
    difference of nearly equal numbers and no two correct methods agree to float32's
    tolerance."""
    return draws.normal(key, (rows, cols), dtype) / (2 * np.sqrt(cols)).astype(dtype)


def _affine_example(key: Array, dtype: Any, size: int) -> tuple:
    k_x, k_w, k_b = jax.random.split(key, 3)
    return (
        draws.normal(k_x, (size,), dtype),
        _scaled(k_w, size, size, dtype),
        draws.normal(k_b, (size,), dtype) / 4,
    )


def tanh_affine(x: Array, W: Array, b: Array) -> Array:
    """tanh(W x + b)."""
    return jnp.tanh(W @ x + b)


def _weight_example(key: Array, dtype: Any, size: int) -> tuple:
    x, W, b = _affine_example(key, dtype, size)
    return W, x, b


def tanh_affine_weight(W: Array, x: Array, b: Array) -> Array:
    """tanh(W x + b), its weight first."""
    return jnp.tanh(W @ x + b)


def mlp3(x: Array, W1: Array, W2: Array, W3: Array) -> Array:
    """W3 tanh(W2 tanh(W1 x)): a three-layer perceptron."""
    return W3 @ jnp.tanh(W2 @ jnp.tanh(W1 @ x))


def _mlp3_example(key: Array, dtype: Any, size: int) -> tuple:
    k_x, *k_w = jax.random.split(key, 4)
    return (draws.normal(k_x, (size,), dtype), *(_scaled(k, size, size, dtype) for k in k_w))


def log_softmax_linear(x: Array, A: Array) -> Array:
    """log softmax(A x), through jax.nn."""
    return jax.nn.log_softmax(A @ x)


def exp_sin_cubic(x: Array) -> Array:
    """exp(x) sin(x) + x^3."""
    return jnp.exp(x) * jnp.sin(x) + x**3


def quadratic(x: Array, A: Array) -> Array:
    """x^T A x."""
    return x @ A @ x


def sandwich(X: Array, A: Array, B: Array) -> Array:
    """A X B, by X."""
    return A @ X @ B


def _sandwich_example(key: Array, dtype: Any, size: int) -> tuple:
    k_x, k_a, k_b = jax.random.split(key, 3)
    return (
        draws.normal(k_x, (size, size), dtype),
        _scaled(k_a, size + 1, size, dtype),
        _scaled(k_b, size, size + 2, dtype),
    )


#: Width of the per-example network (the batch is the size).
WIDTH = 4


def per_example_mlp(xs: Array, W1: Array, W2: Array) -> Array:
    """tanh(W2 tanh(W1 x_b)) for every row x_b of the batch xs, by ``jax.vmap``."""
    return jax.vmap(lambda x: jnp.tanh(W2 @ jnp.tanh(W1 @ x)))(xs)


def _per_example_example(key: Array, dtype: Any, size: int) -> tuple:
    k_x, k_1, k_2 = jax.random.split(key, 3)
    return (
        draws.normal(k_x, (size, WIDTH), dtype),
        _scaled(k_1, WIDTH, WIDTH, dtype),
        _scaled(k_2, WIDTH, WIDTH, dtype),
    )


def elementwise_flow(x: Array, scale: Array, shift: Array) -> Array:
    """x + 0.5 tanh(scale x + shift): an invertible elementwise flow layer
    (y' = 1 + 0.5 scale (1 - tanh^2) > 0 for |scale| < 2)."""
    return x + 0.5 * jnp.tanh(scale * x + shift)


def _flow_example(key: Array, dtype: Any, size: int) -> tuple:
    k_x, k_s, k_t = jax.random.split(key, 3)
    return (
        draws.normal(k_x, (size,), dtype),
        draws.uniform(k_s, (size,), dtype, -1.5, 1.5),
        draws.normal(k_t, (size,), dtype),
    )


def layer_norm(x: Array, gain: Array, bias: Array) -> Array:
    """(x - mean x) / sqrt(var x + 1e-5) * gain + bias."""
    centred = x - jnp.mean(x)
    return centred / jnp.sqrt(jnp.var(x) + 1e-5) * gain + bias


def _layer_norm_example(key: Array, dtype: Any, size: int) -> tuple:
    # At least eight entries. With one the output is b, with two it is b +- g, whatever x:
    # Jacobians of 0 up to eps / s^3 terms and rounding, in which no two methods agree to a
    # relative tolerance; with a few, I - 1 1^T / n - z z^T / n nearly cancels on the
    # diagonal, and a bfloat16 product with it loses what its tolerance allows.
    k_x, k_g, k_b = jax.random.split(key, 3)
    return tuple(draws.normal(k, (max(size, 8),), dtype) for k in (k_x, k_g, k_b))


def _vector_and_matrix(key: Array, dtype: Any, size: int) -> tuple:
    k_x, k_a = jax.random.split(key)
    return draws.normal(k_x, (size,), dtype), _scaled(k_a, size, size, dtype)


def _vector(key: Array, dtype: Any, size: int) -> tuple:
    return (draws.normal(key, (size,), dtype),)


PROGRAMS = (
    program(
        "tanh_affine_by_x", "tanh(W x + b) by x", "J = diag(1 - y^2) W", tanh_affine, 0,
        _affine_example, "Composition", bench_sizes=MATMUL_SIZES, shapes="x, b in R^n; W n x n",
        latex=(
            r"J = \operatorname{diag}\left(1 - \mathbf{y}^{2}\right) W,\quad \mathbf{y} = "
            r"\tanh(W\mathbf{x} + \mathbf{b})"
        ),
    ),
    program(
        "tanh_affine_by_W", "tanh(W x + b) by W", "dy_i/dW_kj = (1 - y_i^2) [i = k] x_j",
        tanh_affine_weight, 0, _weight_example, "Composition", bench_sizes=(64, 256, 512),
        shapes="W n x n; x, b in R^n",
        latex=r"\frac{\partial y_i}{\partial W_{kj}} = \left(1 - y_i^{2}\right) [i = k]\, x_j",
    ),
    program(
        "mlp3_input", "Three-layer MLP by its input", "J = W3 D2 W2 D1 W1", mlp3, 0,
        _mlp3_example, "Composition", bench_sizes=(64, 256, 1024), shapes="x in R^n; W_i n x n",
        latex=(
            r"J = W_3 D_2 W_2 D_1 W_1,\quad D_l = \operatorname{diag}\left(1 - "
            r"\mathbf{h}_l^{2}\right)"
        ),
    ),
    program(
        "nn_softmax", "jax.nn.softmax", "J = diag(s) - s s^T", jax.nn.softmax, 0, _vector,
        "DiagonalPlusLowRank", bench_sizes=DIAGONAL_SIZES, shapes="x in R^n",
        latex=r"J = \operatorname{diag}(\mathbf{s}) - \mathbf{s}\mathbf{s}^{\mathsf{T}}",
    ),
    program(
        "nn_log_softmax_linear", "jax.nn.log_softmax(A x)", "J = (I - 1 s^T) A",
        log_softmax_linear, 0, _vector_and_matrix, "Sum", bench_sizes=MATMUL_SIZES,
        shapes="x in R^n; A n x n",
        latex=r"J = \left(I - \mathbf{1}\mathbf{s}^{\mathsf{T}}\right) A",
    ),
    program(
        "exp_sin_cubic", "exp(x) sin(x) + x^3", "J = diag(e^x (sin x + cos x) + 3 x^2)",
        exp_sin_cubic, 0, _vector, "Diagonal", bench_sizes=DIAGONAL_SIZES, shapes="x in R^n",
        latex=(
            r"J = \operatorname{diag}\left(e^{\mathbf{x}} \odot (\sin\mathbf{x} + "
            r"\cos\mathbf{x}) + 3\mathbf{x}^{2}\right)"
        ),
    ),
    program(
        "quadratic_program", "x^T A x", "J = x^T (A + A^T)", quadratic, 0, _vector_and_matrix,
        "LowRank", bench_sizes=MATMUL_SIZES, shapes="x in R^n; A n x n",
        latex=r"J = \mathbf{x}^{\mathsf{T}}\left(A + A^{\mathsf{T}}\right)",
    ),
    program(
        "sandwich_AXB", "A X B by X", "J = A (x) B^T", sandwich, 0, _sandwich_example,
        "Kronecker", bench_sizes=MATRIX_SIZES, shapes="X n x n; A (n+1) x n; B n x (n+2)",
        latex=r"J = A \otimes B^{\mathsf{T}}",
    ),
    program(
        "per_example_mlp", "A vmapped per-example MLP by the batch",
        "J = blockdiag(dy_b/dx_b)", per_example_mlp, 0, _per_example_example, "BlockDiagonal",
        bench_sizes=(64, 256, 1024), shapes=f"xs N x {WIDTH}; W_i {WIDTH} x {WIDTH}",
        latex=(
            r"J = \operatorname{blockdiag}\left(\frac{\partial \mathbf{y}_b}{\partial "
            r"\mathbf{x}_b}\right)_{b=1}^{N}"
        ),
    ),
    program(
        "elementwise_flow", "Elementwise flow layer x + 0.5 tanh(a x + b)",
        "J = diag(1 + 0.5 a (1 - tanh^2)), log|det J| = sum log J_ii", elementwise_flow, 0,
        _flow_example, "Diagonal", bench_sizes=DIAGONAL_SIZES, shapes="x, a, b in R^n",
        latex=(
            r"J = \operatorname{diag}\left(1 + 0.5\,\mathbf{a} \odot \left(1 - "
            r"\tanh^{2}(\mathbf{a} \odot \mathbf{x} + \mathbf{b})\right)\right),\quad "
            r"\log\lvert\det J\rvert = \sum_i \log J_{ii}"
        ),
    ),
    program(
        "layer_norm", "Layer normalization", "J = diag(g / s) (I - 1 1^T / n - z z^T / n)",
        layer_norm, 0, _layer_norm_example, "DiagonalPlusLowRank", bench_sizes=DIAGONAL_SIZES,
        shapes="x, g, b in R^n",
        latex=(
            r"J = \operatorname{diag}(\mathbf{g} / \sigma)\left(I - "
            r"\tfrac{1}{n}\mathbf{1}\mathbf{1}^{\mathsf{T}} - "
            r"\tfrac{1}{n}\mathbf{z}\mathbf{z}^{\mathsf{T}}\right)"
        ),
    ),
)  # fmt: skip


# ----------------------------------------------------- programs as users write them


def _mlp_template(width: int, dtype: Any) -> dict:
    return {
        "W1": jnp.zeros((width, 3), dtype), "b1": jnp.zeros((width,), dtype),
        "W2": jnp.zeros((2, width), dtype), "b2": jnp.zeros((2,), dtype),
    }  # fmt: skip


def mlp_by_params(theta: Array, x: Array) -> Array:
    """A two-layer tanh MLP as a function of its parameter dict, given flattened in
    ``ravel_pytree`` order (the unravel is part of the program: split and reshape)."""
    width = (theta.shape[0] - 2) // 6
    params = ravel_pytree(_mlp_template(width, theta.dtype))[1](theta)
    hidden = jnp.tanh(params["W1"] @ x + params["b1"])
    return params["W2"] @ hidden + params["b2"]


def _mlp_params_example(key: Array, dtype: Any, size: int) -> tuple:
    k_t, k_x = jax.random.split(key)
    count = 6 * size + 2
    theta = draws.normal(k_t, (count,), dtype) / (2 * np.sqrt(3)).astype(dtype)
    return theta, draws.normal(k_x, (3,), dtype)


def rk4(x: Array) -> Array:
    """Ten RK4 steps of dy/dt = -y + tanh(y) / 2 by ``lax.fori_loop``."""

    def field(y: Array) -> Array:
        return -y + 0.5 * jnp.tanh(y)

    def step(i: Array, y: Array) -> Array:
        h = 0.1
        k1 = field(y)
        k2 = field(y + h / 2 * k1)
        k3 = field(y + h / 2 * k2)
        k4 = field(y + h * k3)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    return jax.lax.fori_loop(0, 10, step, x)


#: The GRU's state width.
STATE = 3


def gru(xs: Array, W: Array, U: Array) -> Array:
    """A GRU over the sequence ``xs`` (T x 2) by ``lax.scan``, its states stacked (T x 3):
    gates z = sigmoid(W_z x + U_z h), candidate tanh(W_h x + U_h h)."""

    def cell(h: Array, x: Array) -> tuple[Array, Array]:
        z = jax.nn.sigmoid(W[:STATE] @ x + U[:STATE] @ h)
        candidate = jnp.tanh(W[STATE:] @ x + U[STATE:] @ h)
        h = (1 - z) * h + z * candidate
        return h, h

    return jax.lax.scan(cell, jnp.zeros(STATE, xs.dtype), xs)[1]


def _gru_example(key: Array, dtype: Any, size: int) -> tuple:
    k_x, k_w, k_u = jax.random.split(key, 3)
    return (
        draws.normal(k_x, (size, 2), dtype),
        _scaled(k_w, 2 * STATE, 2, dtype),
        _scaled(k_u, 2 * STATE, STATE, dtype),
    )


#: Channels of the convolution layer.
CHANNELS = 4


def conv_layer(x: Array, kernel: Array) -> Array:
    """tanh of a 1-D convolution (positions x channels, kernel of 5 taps, "SAME")."""
    y = jax.lax.conv_general_dilated(
        x[None], kernel, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")
    )
    return jnp.tanh(y[0])


def _conv_example(key: Array, dtype: Any, size: int) -> tuple:
    k_x, k_k = jax.random.split(key)
    kernel = draws.normal(k_k, (5, CHANNELS, CHANNELS), dtype, scale=0.5 / np.sqrt(5 * CHANNELS))
    return draws.normal(k_x, (size, CHANNELS), dtype), kernel


def gp_log_likelihood(x: Array, y: Array) -> Array:
    """The log marginal likelihood of a Gaussian process at inputs x (an RBF kernel plus
    noise 1/2), through ``cholesky`` and ``cho_solve``, without its constant."""
    K = jnp.exp(-0.5 * (x[:, None] - x[None, :]) ** 2) + 0.5 * jnp.eye(x.shape[0], dtype=x.dtype)
    L = jnp.linalg.cholesky(K)
    alpha = jax.scipy.linalg.cho_solve((L, True), y)
    return -0.5 * y @ alpha - jnp.sum(jnp.log(jnp.diagonal(L)))


def _gp_example(key: Array, dtype: Any, size: int) -> tuple:
    k_x, k_y = jax.random.split(key)
    return draws.normal(k_x, (size,), dtype), draws.normal(k_y, (size,), dtype)


def graph_network(h: Array, W: Array) -> Array:
    """One message-passing step on a ring of nodes: each node sends ``W h_i`` to its next
    neighbour, ``jax.ops.segment_sum`` gathers the messages, then tanh."""
    nodes = h.shape[0]
    senders = jnp.arange(nodes)
    receivers = (senders + 1) % nodes
    messages = h[senders] @ W.T
    return jnp.tanh(h + jax.ops.segment_sum(messages, receivers, nodes))


def _graph_example(key: Array, dtype: Any, size: int) -> tuple:
    k_h, k_w = jax.random.split(key)
    return draws.normal(k_h, (size, 3), dtype), _scaled(k_w, 3, 3, dtype)


def clipped_update(g: Array) -> Array:
    """A gradient clipped to norm 1 under ``lax.cond`` (the clip-by-global-norm step)."""
    norm = jnp.sqrt(jnp.sum(g**2))
    return jax.lax.cond(norm > 1.0, lambda g: g / norm, lambda g: g, g)


def _clip_example(key: Array, dtype: Any, size: int) -> tuple:
    # Norm 3: away from the switch at 1, where the two branches' Jacobians differ. At least
    # two entries: with one, (1 - g^2 / |g|^2) / |g| is 0 up to rounding.
    g = draws.normal(key, (max(size, 2),), dtype)
    return ((3.0 / jnp.sqrt(jnp.sum(g**2))).astype(dtype) * g,)


USER_PROGRAMS = (
    program(
        "mlp_by_params", "A two-layer MLP by its parameter dict (ravelled)",
        "J = [dy/dW1, dy/db1, dy/dW2, dy/db2]", mlp_by_params, 0, _mlp_params_example,
        "Sum", bench_sizes=(16, 64, 256), shapes="theta: W1 h x 3, b1, W2 2 x h, b2; x in R^3",
    ),
    program(
        "rk4_fori_loop", "Ten RK4 steps by lax.fori_loop", "J = prod_k diag(step_k')",
        rk4, 0, _vector, "Diagonal", bench_sizes=DIAGONAL_SIZES, shapes="x in R^n",
    ),
    program(
        "gru_scan", "A GRU over a sequence by lax.scan", "J_ts = dh_t/dx_s (s <= t)", gru, 0,
        _gru_example, "Stacked", bench_sizes=(16, 64, 256), shapes="xs T x 2; W 6 x 2; U 6 x 3",
    ),
    program(
        "conv_layer", "A 1-D convolution layer by its input",
        "J = diag(1 - y^2) conv(., K)", conv_layer, 0, _conv_example, "Composition",
        bench_sizes=(64, 256, 1024), shapes=f"x n x {CHANNELS}; K 5 x {CHANNELS} x {CHANNELS}",
    ),
    program(
        "gp_log_likelihood", "A Gaussian-process log likelihood by its inputs",
        "dl/dx through dK = L phi(L^-1 dK L^-T)", gp_log_likelihood, 0, _gp_example,
        "LowRank", bench_sizes=(16, 64, 256), shapes="x, y in R^n",
    ),
    program(
        "graph_network", "A message-passing step with segment_sum",
        "J = diag(1 - y^2) (I + S (W (x) I))", graph_network, 0, _graph_example, "Composition",
        bench_sizes=(64, 256, 1024), shapes="h n x 3; W 3 x 3",
    ),
    program(
        "clipped_update", "A gradient clipped by its norm under lax.cond",
        "J = (I - g g^T / |g|^2) / |g|", clipped_update, 0, _clip_example,
        "DiagonalPlusLowRank", bench_sizes=DIAGONAL_SIZES, shapes="g in R^n",
    ),
)  # fmt: skip

#: Every program of the corpus, in the order the catalogue lists them.
PROGRAMS = PROGRAMS + USER_PROGRAMS
