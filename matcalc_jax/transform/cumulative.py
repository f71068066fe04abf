"""Rules for products and running reductions: ``reduce_prod``, ``cumprod``,
``cumlogsumexp``, ``cummax``, ``cummin``.

``reduce_prod``: d(prod x)/dx_j is the product of the other entries, computed without a
division (an exclusive running product from each side), so a zero entry is exact.

The running reductions ``y_i = x_0 (+) x_1 (+) ... (+) x_i`` (``(+)`` one of ``*``,
``logaddexp``, ``max``, ``min``) have a lower-triangular Jacobian along their axis, its
entries ``dy_i/dx_j`` for each position on the other axes. JAX differentiates them through
``lax.associative_scan`` of the pair ``(value, tangent)`` with the combining function's
derivative; the transform evaluates the same pair recursion on the unit tangents, once, and
keeps the result as the core of a ``Contraction`` (n^2 entries per position on the other
axes, the size of the Jacobian along that axis): the same numbers as JAX, ties of ``max``
split as JAX splits them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from matcalc_jax.operators.base import compose
from matcalc_jax.operators.contraction import LETTERS, contraction, einsum
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.transform import elementwise
from matcalc_jax.transform.interpreter import Operator
from matcalc_jax.transform.registry import pointwise

Pair = tuple[Array, Array]


def _product(a: Pair, b: Pair) -> Pair:
    return a[0] * b[0], a[1] * b[0] + a[0] * b[1]


def _chooser(name: str, choose: Callable[[Array, Array], Array]) -> Callable[[Pair, Pair], Pair]:
    partial_a, partial_b = elementwise.BINARY[name]  # 1, 1/2 at a tie, 0: as lax.max's rule

    def combine(a: Pair, b: Pair) -> Pair:
        out = choose(a[0], b[0])
        return out, a[1] * partial_a(a[0], b[0], out) + b[1] * partial_b(a[0], b[0], out)

    return combine


def _replace_inf(x: Array) -> Array:
    """x with +inf replaced by 0, as JAX's logaddexp rule does (-inf stays: a masked entry,
    weight exp(-inf - out) = 0)."""
    return jnp.where(x == jnp.inf, jnp.zeros((), x.dtype), x)


def _log_add_exp(a: Pair, b: Pair) -> Pair:
    out = jnp.logaddexp(a[0], b[0])
    weight_a = jnp.exp(_replace_inf(a[0]) - _replace_inf(out))
    weight_b = jnp.exp(_replace_inf(b[0]) - _replace_inf(out))
    return out, a[1] * weight_a + b[1] * weight_b


COMBINE: dict[str, Callable[[Pair, Pair], Pair]] = {
    "cumprod": _product,
    "cumlogsumexp": _log_add_exp,
    "cummax": _chooser("max", lax.max),
    "cummin": _chooser("min", lax.min),
}


def _after(
    core: Array, spec: tuple, x: Array, y: Array, op: Operator, prefix: Array, along: str
) -> Operator:
    """The running reduction's map (``core`` with labels ``spec``) after the argument's
    Jacobian ``op``. After a diagonal (an elementwise map) the two merge into one core in
    which the entries outside the prefix (``prefix``, True where an output reads an input
    along the axis, its two axes labelled ``along``) stay 0 beside an infinite
    derivative (sqrt' at 0), instead of 0 * inf: JAX's scan combines prefixes and never
    forms that product, so ``cumsum(sqrt(x))`` keeps jax.jacfwd's zeros above the
    diagonal. Inside the prefix the product is formed as JAX forms it (a product that
    underflowed to 0, the 0 of a NaN maximum: 0 * inf is NaN there too)."""
    ins, core_labels, outs = spec
    if not isinstance(op, Diagonal):
        return compose(contraction(core, spec, x.shape, y.shape, y.dtype), op)
    labels = core_labels + "".join(c for c in ins if c not in core_labels)
    sizes = dict(zip(ins, x.shape, strict=True)) | dict(zip(core_labels, core.shape, strict=True))
    dtype = jnp.result_type(core, op.values)
    wide = einsum([(core, core_labels)], labels, sizes, dtype)  # each in labels' order
    values = einsum([(op.values, ins)], labels, sizes, dtype)
    inside = einsum([(prefix, along)], labels, sizes, bool)
    merged = jnp.where(inside, wide * values, jnp.zeros((), dtype))
    return contraction(merged, (ins, labels, outs), x.shape, y.shape, y.dtype, op.layout)


@pointwise("cumsum", complex=True, linear=True)
def _cumsum(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    axis, n = eqn.params["axis"], x.shape[eqn.params["axis"]]
    labels = LETTERS[: x.ndim]
    twin = LETTERS[x.ndim]
    core = jnp.tril(jnp.ones((n, n), y.dtype))  # core[j, i] = [i <= j]
    if eqn.params.get("reverse"):
        core = core.T
    out_labels = labels.replace(labels[axis], twin)
    spec = (labels, twin + labels[axis], out_labels)
    return [_after(core, spec, x, y, ops[0], core != 0, twin + labels[axis])]


@pointwise(*COMBINE)
def _running(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    axis, reverse = eqn.params["axis"], eqn.params.get("reverse", False)
    n = x.shape[axis]
    combine = COMBINE[eqn.primitive.name]

    def column(j: Array) -> Array:  # dy/dx_j along the axis, at every other position
        unit = (lax.broadcasted_iota(jnp.int32, x.shape, axis) == j).astype(x.dtype)
        return lax.associative_scan(combine, (x, unit), reverse=reverse, axis=axis)[1]

    core = jax.vmap(column)(jnp.arange(n, dtype=jnp.int32))  # (n_j, *x.shape): [j, ..., i, ...]
    labels = LETTERS[: x.ndim]
    twin = LETTERS[x.ndim]
    in_labels = labels.replace(labels[axis], twin)
    spec = (in_labels, twin + labels, labels)
    j, i = jnp.arange(n)[:, None], jnp.arange(n)[None, :]  # input j, output i
    prefix = j >= i if reverse else j <= i
    return [_after(core, spec, x, y, ops[0], prefix, twin + labels[axis])]


def _others_product(x: Array, axes: tuple[int, ...]) -> Array:
    """prod over ``axes`` of the entries other than each one, without dividing (none: an
    empty array, for an empty axis)."""
    if x.size == 0:
        return jnp.zeros(x.shape, x.dtype)
    kept = [d for d in range(x.ndim) if d not in axes]
    moved = jnp.transpose(x, (*kept, *axes))
    flat = moved.reshape((*moved.shape[: len(kept)], -1))
    ones = jnp.ones((*flat.shape[:-1], 1), x.dtype)
    before = jnp.cumprod(jnp.concatenate([ones, flat[..., :-1]], axis=-1), axis=-1)
    after = jnp.flip(
        jnp.cumprod(jnp.concatenate([ones, jnp.flip(flat, -1)[..., :-1]], axis=-1), axis=-1), -1
    )
    others = (before * after).reshape(moved.shape)
    return jnp.transpose(others, tuple(int(k) for k in np.argsort([*kept, *axes])))


@pointwise("reduce_prod")
def _reduce_prod(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    axes = tuple(sorted(a % x.ndim for a in eqn.params["axes"]))
    labels = LETTERS[: x.ndim]
    kept = "".join(c for k, c in enumerate(labels) if k not in axes)
    core = _others_product(x, axes)
    return [compose(contraction(core, (labels, labels, kept), x.shape, y.shape, y.dtype), ops[0])]
