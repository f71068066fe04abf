"""Every primitive rule against JAX's own ``jvp`` of that primitive, at the edge points.

For each primitive in ``supported_primitives()`` a small program binds it (alone, or with
the slicing and casting that feed it) on inputs that include the points where conventions
are made: 0 and -0, +-inf, NaN, ties, the branch points of ``where`` / ``clamp`` / ``max``,
saturated tails and the boundaries of a domain. The transform's Jacobian, applied by
``J.mv`` to every unit tangent, must equal JAX's ``jvp`` of the same program on that
tangent, NaN for NaN and infinity for infinity: bit for bit where JAX's formula is the one
the rule evaluates, within a stated number of ulps where the rule arranges it otherwise.
Both float32 (under ``jax_numpy_dtype_promotion="strict"``: a rule must not widen a
float32 program with a float64 constant) and float64 run; ``J.vm`` against ``jax.vjp``
too. ``custom_vjp_call``, which ``jax.jvp`` refuses, is checked against ``jax.vjp``.

A primitive with a rule and no case here fails ``test_every_rule_has_a_case``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax._src import core as jax_core
from jax.ad_checkpoint import checkpoint_name

import matcalc_jax as mj
from matcalc_jax.transform import registry

try:  # what stages a closed_call (no public function makes one in this JAX)
    from jax._src.lax.eval_jaxpr import eval_jaxpr_p
except ImportError:  # pragma: no cover
    eval_jaxpr_p = None
#: its program's parameter: ``jaxpr`` up to JAX 0.10; from 0.11 it is closed_call itself
CALL = "call_jaxpr" if eval_jaxpr_p is getattr(jax_core, "closed_call_p", None) else "jaxpr"

INF, NAN = float("inf"), float("nan")
#: Zeros of both signs, units, a tail, the infinities and NaN.
EDGES = (0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 40.0, INF, -INF, NAN)
#: Inside (-1, 1) and on its boundary, where asin, atanh and erf_inv live, and outside.
UNIT = (0.0, -0.0, 0.5, -0.5, 0.999, 1.0, -1.0, 1.5, NAN)
#: Pairs for a binary primitive: a || b, with ties, zeros and NaN among the pairs.
PAIRS = (0.0, 1.0, -1.0, 2.0, 0.0, NAN, 3.0, -0.0, 0.0, 1.0, 2.0, -1.0, -0.0, 1.0, NAN, 0.0)
#: PAIRS without NaN, for exp of a complex (whose NaN pattern JAX arranges its own way).
FINITE_PAIRS = (0.0, 1.0, -1.0, 2.0, 0.0, 3.0, 0.0, 1.0, 2.0, -1.0, -0.0, 1.0)
#: clamp(low, x, high) over four triples: x between, at a bound, outside, NaN.
CLAMPED = (0.0, 1.0, -1.0, 2.0, 0.0, NAN, 1.0, -1.0, 0.0, 1.0, 0.0, NAN)
#: Indices promised in bounds (x[idx]'s mode), out of bounds here on purpose.
PROMISE = "promise_in_bounds"
POSITIVE = (0.0, 1e-30, 0.5, 1.0, 2.0, 7.5, 40.0, INF, NAN)
#: (a || x) for the incomplete gamma functions: x at 0, in the bulk, in the tail, NaN.
GAMMA_PAIRS = (0.5, 1.0, 2.0, 3.0, 7.5, 1.0, 2.5, 40.0, 0.5, 0.0, 1.0, 10.0, 7.0, NAN, 3.0, 40.0)


@dataclass(frozen=True)
class Case:
    """``fn(x)`` binds the primitive; ``points`` are the entries of x; ``ulps`` the
    distance allowed from JAX's jvp (0: the same bits); ``mode``: "jvp", or "vjp" for a
    function ``jax.jvp`` refuses; ``vm``: "vjp" (``J.vm`` equals ``jax.vjp``) or
    "elementwise" (``J.vm(u)`` is ``u`` times the diagonal the jvp gives, where
    ``jax.vjp`` multiplies the NaN derivative of a ``where`` branch not taken by the 0 of
    its mask: a deliberate difference, docs/transform.md) or "selects" (the same for a
    program that is not elementwise: ``J.vm`` equals ``jax.vjp`` wherever that is not
    NaN, and may be finite where it is, since the transform selects what JAX masks), or
    "matrix" (the rows of the jvp's matrix: ``jax.vjp`` refuses the program, a
    ``while_loop``, or differs from ``jax.jvp`` by design, out-of-bounds indices under
    the promise of being in bounds, where the transform follows the value)."""

    fn: Any
    points: tuple[float, ...] = EDGES
    ulps: int = 0
    mode: str = "jvp"
    vm: str = "vjp"


def _halves(x):
    n = x.shape[0] // 2
    return x[:n], x[n:]


def _binary(primitive):
    return lambda x: primitive(*_halves(x))


def _as_complex(x):
    return lax.complex(x, jnp.zeros_like(x))


def _cplx(x):
    a, b = _halves(x)
    return lax.complex(a, b)


@jax.custom_vjp
def _reversed_gradient(x):
    return jnp.sin(x)


_reversed_gradient.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda c, g: (-c * g,))


@jax.custom_vjp
def _clip_gradient(x):
    return x * 2


_clip_gradient.defvjp(lambda x: (x * 2, None), lambda _, g: (jnp.clip(g, -0.5, 0.5),))


UPPER = np.triu(np.arange(1.0, 10.0).reshape(3, 3)) + 2 * np.eye(3)
SPD = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
WEIGHTS = np.linspace(-1.0, 1.0, 12).reshape(3, 4)

CASES: dict[str, Case] = {
    # elementwise, unary: the derivative's formula at the domain's edges
    "abs": Case(lax.abs),
    "acos": Case(lax.acos, UNIT, ulps=2),
    "acosh": Case(lax.acosh, (1.0, 1.5, 2.0, 40.0, 0.5, INF, NAN), ulps=2),
    "asin": Case(lax.asin, UNIT, ulps=2),
    "asinh": Case(lax.asinh, ulps=2),
    "atan": Case(lax.atan),
    "atanh": Case(lax.atanh, UNIT),
    "cbrt": Case(lax.cbrt, ulps=2),
    "cos": Case(lax.cos),
    "cosh": Case(lax.cosh),
    # Compiled, XLA fuses polygamma's series with the product by the tangent its own way
    # in each program: float32 a few ulps apart (bit for bit evaluated eagerly, below).
    "digamma": Case(lax.digamma, (0.5, 1.0, 2.5, 40.0, 0.0, -1.0, -0.5, NAN), ulps=8),
    # psi^(2): the derivative psi^(3) at poles (0, -1), between them and at NaN
    "polygamma": Case(
        lambda x: lax.polygamma(jnp.full_like(x, 2.0), x),
        (0.5, 1.0, 2.5, 40.0, 0.0, -1.0, -0.5, NAN),
        ulps=8,
    ),
    "bessel_i0e": Case(lax.bessel_i0e, ulps=2),
    # 1/2 at |x| <= eps, the limit at 0
    "bessel_i1e": Case(lax.bessel_i1e, (*EDGES, 1e-17, -3e-8, 2e-16), ulps=2),
    "erf": Case(lax.erf, ulps=2),
    "erf_inv": Case(lax.erf_inv, UNIT, ulps=2),
    "erfc": Case(lax.erfc, ulps=2),
    "exp": Case(lax.exp),
    "exp2": Case(lax.exp2, ulps=2),
    "expm1": Case(lax.expm1),
    "lgamma": Case(lax.lgamma, (0.5, 1.0, 2.5, 40.0, 0.0, -0.5, NAN)),
    "log": Case(lax.log, (*POSITIVE, -1.0)),
    "log1p": Case(lax.log1p, (*POSITIVE, -1.0, -0.5)),
    "logistic": Case(lax.logistic, ulps=2),
    "rsqrt": Case(lax.rsqrt, POSITIVE, ulps=2),
    "sin": Case(lax.sin),
    "sinh": Case(lax.sinh),
    "sqrt": Case(lax.sqrt, (*POSITIVE, -1.0), ulps=2),
    "square": Case(lax.square),
    # JAX 0.11 and later (None here: skipped on a JAX without it)
    "one_minus_square": Case(getattr(lax, "one_minus_square", None)),
    "tan": Case(lax.tan, ulps=2),
    "tanh": Case(lax.tanh, ulps=2),
    "integer_pow": Case(lambda x: lax.integer_pow(x, 3) + lax.integer_pow(x, -2), ulps=2),
    "neg": Case(lax.neg),
    "sign": Case(lambda x: lax.sign(x) + x),
    "floor": Case(lambda x: lax.floor(x) + x),
    "ceil": Case(lambda x: lax.ceil(x) + x),
    "round": Case(lambda x: lax.round(x) + x),
    "stop_gradient": Case(lambda x: lax.stop_gradient(x) * x),
    "reduce_precision": Case(lambda x: lax.reduce_precision(x * 0.1, 5, 10)),  # rounds 0.1
    "copy": Case(jnp.copy),
    "optimization_barrier": Case(lax.optimization_barrier),
    "device_put": Case(lambda x: jax.device_put(x) * 2 + jax.device_put((x, x * x))[1]),
    "name": Case(lambda x: checkpoint_name(lax.sin(x), "h") * checkpoint_name(x, "x")),
    # elementwise, binary: ties and zeros in both operands
    "add": Case(_binary(lax.add), PAIRS),
    "sub": Case(_binary(lax.sub), PAIRS),
    "mul": Case(_binary(lax.mul), PAIRS),
    # and a tiny b, whose b^-2 overflows (1e-30 and 1e-20 in float32): inf as JAX's
    "div": Case(_binary(lax.div), (*PAIRS[:8], 1e-30, 1.0, *PAIRS[8:], 1e-30, 1e-20), ulps=2),
    "max": Case(_binary(lax.max), PAIRS),
    "min": Case(_binary(lax.min), PAIRS),
    "pow": Case(_binary(lax.pow), tuple(abs(p) for p in PAIRS), ulps=4),
    "atan2": Case(_binary(lax.atan2), PAIRS, ulps=2),
    "igamma": Case(_binary(lax.igamma), GAMMA_PAIRS, ulps=2),
    "igammac": Case(_binary(lax.igammac), GAMMA_PAIRS, ulps=2),
    # compiled, XLA fuses exp((b-1) log1p(-x) + ...) its own way in each program: a few
    # ulps apart in float64 near x = 1, where the derivative is steep
    "regularized_incomplete_beta": Case(
        lambda x: lax.betainc(jnp.full_like(x, 1.5), jnp.full_like(x, 0.5), x),
        (0.0, 0.25, 0.5, 0.999, 1.0, 1.5, -0.5, NAN),
        ulps=8,
    ),
    # pairs with b = 0 (NaN), ties of |a| and |b|, signs both ways, a NaN
    "rem": Case(_binary(lax.rem), (7.5, -7.5, 3.0, 0.5, NAN, 2.0, 2.0, -2.0, 2.0, -0.0, 1.0, 4.0)),
    "add_any": Case(lambda x: jax.vjp(lambda y: y * y, x)[1](x)[0]),
    "clamp": Case(lambda x: lax.clamp(x[:4], x[4:8], x[8:]), CLAMPED),
    # JAX 0.12 and later: x[:4] at the coefficients x[4:8], 2 and x[8:]. At an infinite or
    # NaN x JAX's jvp and vjp differ (dy/dc_0 by Horner's scheme, 0 inf + 1 = NaN, where
    # the transpose takes the cotangent as it is: docs/transform.md): x finite here
    "polynomial": Case(
        (lambda x: lax.polynomial(x[:4], [x[4:8], 2.0, x[8:]]))
        if hasattr(lax, "polynomial") else None,
        (0.0, -0.0, 1.5, -2.0, 1.0, INF, 0.5, NAN, 3.0, -1.0, 0.25, -INF),
    ),
    "select_n": Case(
        lambda x: lax.select_n(x > 0, jnp.zeros_like(x), lax.sqrt(x))
        + lax.select_n(jnp.sign(x).astype(jnp.int32) + 1, x, lax.log(x), x * x),
        vm="elementwise",
    ),
    # linear maps
    "dot_general": Case(lambda x: lax.dot_general(
        x[:12].reshape(3, 4), x[12:].reshape(3, 4), (((1,), (1,)), ((0,), (0,)))
    ), tuple(np.linspace(-2.0, 2.0, 24)) ),
    "transpose": Case(lambda x: lax.transpose(x[:6].reshape(2, 3), (1, 0))),
    "reduce_sum": Case(lambda x: lax.reduce_sum(x[:8].reshape(2, 4), (1,))),
    "squeeze": Case(lambda x: lax.squeeze(x[:3].reshape(1, 3), (0,))),
    "broadcast_in_dim": Case(lambda x: lax.broadcast_in_dim(x[:3], (2, 3), (1,))),
    "reshape": Case(lambda x: lax.reshape(x[:6], (3, 2)).T.reshape(6)),
    "reduce_max": Case(lambda x: lax.reduce_max(x[:8].reshape(2, 4), (1,)), PAIRS, ulps=1),
    "reduce_min": Case(lambda x: lax.reduce_min(x[:8].reshape(2, 4), (0,)), PAIRS, ulps=1),
    "cumsum": Case(lambda x: lax.cumsum(x, reverse=True) + lax.cumsum(x), ulps=2),
    "convert_element_type": Case(lambda x: lax.convert_element_type(
        lax.convert_element_type(x, jnp.float16), x.dtype) + x.astype(jnp.float32).astype(x.dtype)),
    "slice": Case(lambda x: lax.slice(x, (1,), (9,), (3,))),
    "rev": Case(lambda x: lax.rev(x, (0,))),
    "pad": Case(lambda x: lax.pad(x[:-1], x[-1], ((2, 1, 1),))  # negative edges crop
                + lax.pad(x[:8], x[-1], ((-2, 13, 1),)).sum()
                + lax.pad(x[:9].reshape(3, 3), x[0], ((-1, 2, 0), (1, -2, 2))).sum()),
    "concatenate": Case(lambda x: lax.concatenate([x[2:5], x[:4], x], 0)),
    "dynamic_slice": Case(lambda x: lax.dynamic_slice(x, (jnp.int32(7),), (5,))),
    "dynamic_slice_negative": Case(  # wrapped once, then clamped; or clamped alone
        lambda x: lax.dynamic_slice(x, (jnp.int32(-5),), (3,))
        + lax.dynamic_slice(x, (jnp.int32(-5),), (3,), allow_negative_indices=False)
        + lax.dynamic_slice(x, (jnp.int32(-40),), (3,))
        + lax.dynamic_index_in_dim(x, jnp.int32(-2), keepdims=False)
    ),
    "gather": Case(lambda x: jnp.take(x, jnp.array([1, 40, 2, -30]))
                   + jnp.take(x, jnp.array([1, 40, 2, -30]), mode="clip")
                   + jnp.take(x, jnp.array([1, 40, 2, -30]), mode="fill", fill_value=-1.0)),
    # x[idx] promises its indices in bounds and XLA clamps one that is not; jax.vjp drops
    # it, the transform clamps both ways (docs/transform.md): vm reads the jvp's matrix
    "gather_promised": Case(
        lambda x: x[jnp.array([1, 40, 2, -30, -3])]
        + x.at[jnp.array([0, 11, 12, -12, 5])].get(mode=PROMISE),
        vm="matrix",
    ),
    "triangular_solve": Case(  # in the right-hand side, and in the matrix, both sides
        lambda x: jax.scipy.linalg.solve_triangular(UPPER.astype(x.dtype), x[:3])
        + lax.linalg.triangular_solve(
            jnp.triu(jnp.outer(x[:3], x[3:6])) + 3 * jnp.eye(3, dtype=x.dtype), x[6:9][None],
            left_side=False, lower=False, transpose_a=True,
        )[0],
        tuple(np.linspace(-1.0, 1.0, 9)),
        ulps=8,
    ),
    # in all four operands: dl[0] and du[-1], which the solve does not read, vary too
    "tridiagonal_solve": Case(
        lambda x: lax.linalg.tridiagonal_solve(
            x[0:3], x[3:6] + 3, x[6:9], jnp.stack([x[9:12], x[9:12] * x[0]], axis=-1)
        ).ravel(),
        tuple(np.linspace(-1.0, 1.0, 12)),
        ulps=8,
    ),
    "cholesky": Case(
        lambda x: jnp.linalg.cholesky(SPD.astype(x.dtype) + jnp.outer(x[:3], x[:3]) / 4).ravel(),
        tuple(np.linspace(-1.0, 1.0, 3)),
        ulps=8,
    ),
    "eigh": Case(  # distinct eigenvalues (repeated ones: tests/test_fidelity.py)
        lambda x: jnp.concatenate([
            jnp.linalg.eigh(SPD.astype(x.dtype) * x[0] + jnp.diag(x[1:4]))[0],
            jnp.abs(jnp.linalg.eigh(SPD.astype(x.dtype) + jnp.diag(x[1:4]))[1]).ravel(),
        ]),
        (0.7, 0.1, -0.3, 0.5),
        ulps=8,
    ),
    "qr": Case(  # a tall matrix, both factors
        lambda x: jnp.concatenate([m.ravel() for m in jnp.linalg.qr(
            x.reshape(4, 3) + 2.0 * jnp.eye(4, 3, dtype=x.dtype))]),
        tuple(np.linspace(-1.0, 1.0, 12)),
        ulps=8,
    ),
    "svd": Case(  # a tall and a wide matrix, every factor; the singular values alone
        lambda x: jnp.concatenate(
            [jnp.abs(m).ravel() for m in jnp.linalg.svd(x.reshape(4, 3), full_matrices=False)]
            + [jnp.abs(m).ravel() for m in jnp.linalg.svd(x.reshape(3, 4), full_matrices=False)]
            + [jnp.linalg.svd(x.reshape(4, 3), compute_uv=False)]
        ),
        tuple(np.sin(np.arange(12.0)) + np.eye(4, 3).ravel()),
        ulps=256,
    ),
    "lu": Case(  # the packed factors of a square matrix, pivoting rows
        lambda x: jax.scipy.linalg.lu_factor(x.reshape(3, 3) + jnp.eye(3, dtype=x.dtype))[0]
        .ravel(),
        tuple(np.sin(np.arange(9.0) * 1.7)),
        ulps=8,
    ),
    "conv_general_dilated": Case(
        lambda x: lax.conv_general_dilated(
            x[:8].reshape(1, 2, 4), x[8:].reshape(3, 2, 2), (2,), ((1, 0),), rhs_dilation=(1,)
        ).ravel(),
        tuple(np.linspace(-1.0, 1.0, 20)),
        ulps=8,
    ),
    "reduce_window_max": Case(  # ties, NaN and infinities inside windows, padded edges
        lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (3,), (1,), ((1, 1),)), PAIRS
    ),
    "reduce_window_min": Case(
        lambda x: lax.reduce_window(x, jnp.inf, lax.min, (2,), (2,), ((1, 1),)), PAIRS
    ),
    # the transpose of a pooling's choice, with x as the cotangent and as the pooled input
    "select_and_scatter_add": Case(
        lambda x: jax.vjp(
            lambda y: lax.reduce_window(y, -jnp.inf, lax.max, (3,), (1,), ((1, 1),)), x
        )[1](x)[0],
        PAIRS,
    ),
    "reduce_window_sum": Case(
        lambda x: lax.reduce_window(x, 0.0, lax.add, (3,), (2,), ((1, 1),)), ulps=2
    ),
    "custom_linear_solve": Case(
        lambda x: jax.scipy.linalg.cho_solve((SPD.astype(x.dtype), False), x[:3])
        + jnp.linalg.solve(SPD.astype(x.dtype), x[:3]),
        tuple(np.linspace(-1.0, 1.0, 5)),
        ulps=8,
    ),
    # entries moved: slices, embeddings, scatters, permutations
    "split": Case(
        lambda x: jnp.concatenate([lax.split(x, (4, 7))[1] * 2.0, lax.sin(lax.split(x, (4, 7))[0])])
    ),
    "stack": Case(lambda x: jnp.stack([x, lax.sin(x)], axis=1).ravel(), ulps=0),
    "unstack": Case(  # jnp.unstack; optax.sigmoid_focal_loss iterates over an array
        lambda x: jnp.concatenate(
            [u * (k + 1.0) for k, u in enumerate(jnp.unstack(x[:8].reshape(2, 4), axis=1))]
        ),
        ulps=0,
    ),
    "tile": Case(lambda x: jnp.tile(x[:6].reshape(2, 3), (2, 2)).ravel()),
    "dynamic_update_slice": Case(
        lambda x: lax.dynamic_update_slice(lax.sqrt(x), x[:3] * 2.0, (jnp.int32(9),)),
        vm="selects",
    ),
    "dynamic_update_slice_negative": Case(
        lambda x: lax.dynamic_update_slice(lax.sin(x), x[:3] * 2.0, (jnp.int32(-4),))
        + lax.dynamic_update_slice(x, x[3:5] ** 2, (jnp.int32(-4),), allow_negative_indices=False)
        + lax.dynamic_update_slice(x, x[:2], (jnp.int32(-40),)),
        vm="selects",
    ),
    "scatter-add": Case(
        lambda x: jax.ops.segment_sum(x, jnp.array([0, 0, 1, 3, 1, 2, 2, 0, 3, 1, 0]), 4)
        + jnp.zeros(4, x.dtype).at[jnp.array([1, 9, -2])].add(x[:3])
    ),
    "scatter": Case(  # repeated and out-of-bounds indices; a NaN derivative overwritten
        lambda x: lax.sqrt(x).at[jnp.array([1, 1, 4, 20])].set(x[:4] ** 2), vm="selects"
    ),
    # ties between updates and with the operand share the derivative (JAX's rule); NaN,
    # zeros of both signs, repeated and out-of-bounds indices, a segment nothing reaches
    "scatter-max": Case(
        lambda x: jax.ops.segment_max(x[:11], jnp.array([0, 0, 1, 3, 1, 2, 2, 0, 3, 1, 3]), 5)
        + x[:5].at[jnp.array([1, 1, 4, -2, 0, 20])].max(x[10:]),
        PAIRS,
    ),
    "scatter-min": Case(
        lambda x: jax.ops.segment_min(x[5:], jnp.array([0, 2, 1, 1, 0, 2, 2, 0, 3, 3, 1]), 4)
        + x[:4].at[jnp.array([0, 0, 3, 2])].min(x[4:8]),
        PAIRS,
    ),
    # the operand's derivative is the product of what lands (a 0 among it too); the
    # updates' for unique indices, the operand's entry
    "scatter-mul": Case(
        lambda x: x[:5].at[jnp.array([1, 1, 4, 9])].mul(jnp.array([2.0, -0.5, 0.0, 3.0], x.dtype))
        + lax.sin(x[5:10]).at[jnp.array([1, 3, 4])].mul(x[10:13], unique_indices=True),
        PAIRS,
    ),
    # an out-of-bounds update under the promise is dropped, as its value is; jax.vjp
    # gathers its cotangent clamped (docs/transform.md): vm reads the jvp's matrix
    "scatter_promised": Case(
        lambda x: lax.sin(x).at[jnp.array([1, 20, -30, 3])].add(x[:4] ** 2, mode=PROMISE)
        + x.at[jnp.array([2, 40])].set(x[5:7], mode=PROMISE),
        tuple(np.linspace(-1.0, 2.0, 11)),  # finite: the indices are the edge here
        vm="matrix",
    ),
    "sort": Case(lambda x: jnp.sort(x) + lax.sort((x[::-1], x * x), num_keys=1)[1], PAIRS),
    "top_k": Case(lambda x: lax.top_k(x, 4)[0], PAIRS),
    # exact on a CPU; along either axis, largest and smallest
    "approx_top_k": Case(
        lambda x: jnp.concatenate([
            lax.approx_max_k(x.reshape(4, 4), 2)[0].ravel(),
            lax.approx_min_k(x.reshape(4, 4), 3, reduction_dimension=0)[0].ravel(),
        ]),
        PAIRS,
    ),
    "reduce_prod": Case(
        lambda x: jnp.prod(x[:6].reshape(2, 3), axis=1), (2.0, 0.0, -1.5, 0.0, 0.0, 3.0), ulps=2
    ),
    "reduce_prod_empty": Case(  # an empty product is 1 and depends on no entry
        lambda x: jnp.prod(x[:6].reshape(2, 3)[:, :0], axis=1) * x[:2] + jnp.prod(1.0 - x[:0])
    ),
    "cumprod": Case(lambda x: jnp.cumprod(x[:6]), (2.0, 0.0, -1.5, 0.5, 0.0, 3.0)),
    "cumlogsumexp": Case(lambda x: lax.cumlogsumexp(x, reverse=True), ulps=4),
    "cumlogsumexp_masked": Case(  # -inf entries (log 0, a mask): weight 0, as in JAX
        lambda x: lax.cumlogsumexp(x) + lax.cumlogsumexp(x, reverse=True),
        (-INF, 0.0, -INF, 1.0, -2.5, -INF, 3.0, -INF),
        ulps=4,
    ),
    "cummax": Case(lambda x: lax.cummax(x), PAIRS),
    "cummin": Case(lambda x: lax.cummin(x, reverse=True), PAIRS),
    # complex values
    "complex": Case(lambda x: lax.abs(_cplx(x)) + lax.real(_cplx(x) * _cplx(x)), PAIRS, ulps=2),
    "real": Case(lambda x: lax.real(lax.exp(_cplx(x))), FINITE_PAIRS, ulps=2),
    "imag": Case(lambda x: lax.imag(lax.exp(_cplx(x)) * (2.0 - 1.0j)), FINITE_PAIRS, ulps=2),
    "conj": Case(
        lambda x: lax.real(lax.conj(_cplx(x)) * (1.0 + 2.0j)) + lax.real(lax.conj(x))[:8], PAIRS
    ),
    "fft": Case(  # the four types; strict promotion wants complex inputs made explicitly
        lambda x: lax.real(jnp.fft.ifft(jnp.fft.fft(_as_complex(x)) * _as_complex(x * x)))
        + jnp.fft.irfft(jnp.fft.rfft(x) * (1.0 + 1.0j), 6)
        + jnp.abs(jnp.fft.fft2(_as_complex(x).reshape(2, 3)).ravel()),
        tuple(np.linspace(-1.0, 2.0, 6)),
        ulps=8,
    ),
    # control flow
    "cond": Case(
        lambda x: lax.cond(x[0] > 0, lax.sqrt, lambda y: y * 2.0, x)
        + jax.jit(lambda y: lax.switch(jnp.int32(y[0] > 1), [lax.sin, lax.cos, lax.tanh], y))(x),
        ulps=2,
    ),
    "scan": Case(
        lambda x: lax.scan(lambda c, a: (c * a + lax.sin(c), c * c), x[0], x)[1]
        + lax.fori_loop(0, 3, lambda i, y: y * lax.cos(y), x),
        tuple(np.linspace(-1.0, 1.0, 7)),
        ulps=8,
    ),
    "while": Case(
        lambda x: lax.while_loop(lambda s: s[1] < 3, lambda s: (s[0] * lax.cos(s[0]), s[1] + 1),
                                 (x, 0))[0],
        tuple(np.linspace(-1.0, 1.0, 7)),
        ulps=4,
        vm="matrix",
    ),
    # calls and custom rules
    "jit": Case(jax.jit(lambda x: lax.tanh(x) * x), ulps=2),
    "closed_call": Case(lambda x: eval_jaxpr_p.bind(x, **{CALL: jax.make_jaxpr(lax.sin)(x)})[0]),
    # Compiled, XLA contracts x cos x + sin x into a fused multiply-add as it fuses each
    # program: 1 ulp in float32 (bit for bit evaluated eagerly, below).
    "remat2": Case(jax.checkpoint(lambda x: lax.sin(x) * x), ulps=1),
    "custom_jvp_call": Case(lambda x: jax.nn.relu(x) + jax.nn.softplus(x), ulps=2),
    "custom_vjp_call": Case(lambda x: _reversed_gradient(x) + _clip_gradient(x), mode="vjp"),
}  # fmt: skip

#: Other names of the same rules, for JAX releases that spell a primitive otherwise.
ALIASES = {
    "copy_p": "copy",
    "core_call": "closed_call",
    "eval_jaxpr": "closed_call",
    "checkpoint": "remat2",
    "remat": "remat2",
    "pjit": "jit",
}


def test_every_rule_has_a_case():
    missing = set(mj.supported_primitives()) - set(CASES) - set(ALIASES)
    assert not missing, f"rules without a conformance case: {sorted(missing)}"
    for alias, name in ALIASES.items():
        assert registry.RULES[alias] is registry.RULES[name], alias


def _ulp_distance(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    eps = np.finfo(expected.dtype).eps
    tiny = np.finfo(expected.dtype).tiny
    scale = np.maximum(np.abs(expected), tiny)
    with np.errstate(invalid="ignore"):
        return np.abs(actual - expected) / (eps * scale)


def assert_same_numbers(actual: Any, expected: Any, ulps: int, what: str) -> None:
    """NaN where JAX has NaN, the same infinities, the same signs of zero where bit-for-bit
    is asked, and finite values within ``ulps`` of JAX's."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    for part in (np.real, np.imag) if np.iscomplexobj(expected) else (np.asarray,):
        a, e = part(actual), part(expected)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{what}: NaN")
        np.testing.assert_array_equal(np.isinf(a) * np.sign(a), np.isinf(e) * np.sign(e), what)
        finite = np.isfinite(e)
        if ulps == 0:
            np.testing.assert_array_equal(a[finite], e[finite], err_msg=what)
        else:
            distance = _ulp_distance(a[finite], e[finite])
            small = np.abs(e[finite]) < 1e3 * np.finfo(e.dtype).eps  # cancellation floor
            assert np.all((distance <= ulps) | small), (what, distance.max(), a, e)


def _compared(case: Case, x: jax.Array, basis: jax.Array, cotangents: jax.Array) -> dict:
    """Everything a case compares: the transform's ``J.mv`` on every unit tangent and
    ``J.vm`` on every unit cotangent beside JAX's ``jvp`` columns and ``vjp`` rows. The
    unit vectors are arguments, not constants: compiled, XLA rewrites a product with a
    constant one-hot as a select, which drops the NaN of ``0 * nan``."""
    J = mj.jacobian(case.fn)(x)
    out = {"mv": jax.vmap(J.mv)(basis), "vm": jax.vmap(J.vm)(cotangents)}
    if case.mode == "jvp":
        out["columns"] = jax.vmap(lambda v: jax.jvp(case.fn, (x,), (v,))[1])(basis)
    if case.vm in ("vjp", "selects"):
        pullback = jax.vjp(case.fn, x)[1]
        out["rows"] = jax.vmap(lambda u: pullback(u)[0])(cotangents)
    return out


def check_case(name: str, dtype: str, compiled: bool, ulps: int) -> None:
    """Compare the transform with JAX on one case, in one compiled program (how models
    run, one compilation per case) or eagerly, primitive by primitive."""
    case = CASES[name]
    if case.fn is None:
        pytest.skip(f"this JAX ({jax.__version__}) has no {name}")
    x = jnp.asarray(case.points, dtype)
    promotion = "strict" if dtype == "float32" else "standard"
    with jax.numpy_dtype_promotion(promotion):
        y = jax.eval_shape(case.fn, x)
        basis = np.eye(x.size, dtype=x.dtype)
        cotangents = np.eye(y.size, dtype=y.dtype).reshape((y.size, *y.shape))
        compare = lambda *args: _compared(case, *args)  # noqa: E731
        out = (jax.jit(compare) if compiled else compare)(x, basis, cotangents)
    out = {k: np.array(v) for k, v in out.items()}
    if case.mode == "jvp":
        assert_same_numbers(out["mv"], out["columns"], ulps, f"{name} mv")
    if case.vm == "elementwise":  # u times the jvp's diagonal, d_j = (J e_j)_j
        with np.errstate(invalid="ignore"):
            rows = cotangents * np.diagonal(out["columns"])
    elif case.vm == "matrix":  # the jvp's matrix, read by rows
        rows = out["columns"].reshape(x.size, -1).T.reshape(-1, *x.shape)
    else:
        rows = out["rows"]
    if case.vm == "selects":  # where jax.vjp's NaN is 0 * NaN, J.vm may be finite
        masked = np.isnan(rows)
        rows[masked] = out["vm"][masked]
    # JAX's transposes arrange a formula their own way: a few ulps apart.
    assert_same_numbers(out["vm"], rows, max(ulps, 16), f"{name} vm")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_agrees_with_jax_at_the_edges(name, dtype):
    check_case(name, dtype, compiled=True, ulps=CASES[name].ulps)


#: Evaluated eagerly, primitive by primitive, where no compiler arranges a formula: the
#: same bits as JAX for these (digamma and remat2 included), and the NaN of a ``where``
#: branch or a NaN maximum kept as IEEE arithmetic gives it.
EAGER = {"cos": 0, "digamma": 0, "div": 0, "reduce_max": 1, "remat2": 0, "select_n": 0,
         "tanh": CASES["tanh"].ulps}  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(EAGER))
def test_rule_agrees_with_jax_evaluated_eagerly(name, dtype):
    check_case(name, dtype, compiled=False, ulps=EAGER[name])


def test_polygamma_in_its_order_is_refused_as_jax_refuses_it():
    """JAX defines polygamma's derivative in x only (psi^(m+1)), not in the order m."""
    f = lambda m: lax.polygamma(m, jnp.full(3, 1.5))  # noqa: E731
    with pytest.raises(mj.UnsupportedPrimitiveError, match="'polygamma' in m, the order"):
        mj.jacobian(f)(jnp.full(3, 2.0))
    with pytest.raises(ValueError, match="not supported"):
        jax.jacfwd(f)(jnp.full(3, 2.0))


def test_betainc_in_a_or_b_is_refused_as_jax_refuses_it():
    """JAX defines the regularized incomplete beta function's derivative in x only."""
    f = lambda a: lax.betainc(a, jnp.ones(3), jnp.full(3, 0.5))  # noqa: E731
    with pytest.raises(
        mj.UnsupportedPrimitiveError, match="'regularized_incomplete_beta' in a or b"
    ):
        mj.jacobian(f)(jnp.full(3, 2.0))
    with pytest.raises(ValueError, match="not supported"):
        jax.jacfwd(f)(jnp.full(3, 2.0))
