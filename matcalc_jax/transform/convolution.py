"""Rules for convolutions and windowed sums: ``conv_general_dilated`` (``lax.conv``,
``flax.linen.Conv``, ``equinox.nn.Conv``), ``reduce_window_sum`` (``avg_pool``),
``reduce_window_max`` / ``reduce_window_min`` (max and min pooling) and
``select_and_scatter_add`` (the gradient of a max or min pooling, in a Hessian's program).

A convolution is linear in each operand: its Jacobian in the input is the map
``t -> conv(t, kernel)``, in the kernel ``t -> conv(input, t)``, each a ``Convolution``
whose ``vm`` is the transposed convolution JAX's transpose rules build; a windowed sum is a
``WindowSum``, a max or min pooling a ``WindowChoice`` of the entries its windows chose
(``matcalc_jax.operators.convolution``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax import Array, lax

from matcalc_jax.operators.base import compose
from matcalc_jax.operators.convolution import Convolution, WindowChoice, WindowSum
from matcalc_jax.operators.index_maps import Static
from matcalc_jax.transform.registry import RELEVANT, numerator, one_factor, pointwise, total


@pointwise("conv_general_dilated", linear=one_factor)
def _conv(ctx, eqn, ins, ops, outs):
    lhs, rhs = ins
    y = outs[0]
    primitive = Static((eqn.primitive, dict(eqn.params)))
    terms = []
    for side, (operand, other, op) in (("lhs", (lhs, rhs, ops[0])), ("rhs", (rhs, lhs, ops[1]))):
        if op is not None:
            conv = Convolution(
                tuple(y.shape), tuple(operand.shape), y.dtype.name, other, primitive, side
            )
            terms.append(compose(conv, op))
    return [total(terms)]


@pointwise("reduce_window_sum", linear=True)
def _reduce_window_sum(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    primitive = Static((eqn.primitive, dict(eqn.params)))
    return [compose(WindowSum(tuple(y.shape), tuple(x.shape), y.dtype.name, primitive), ops[0])]


RELEVANT["reduce_window_sum"] = lambda eqn: [0]


def _window_choices(x: Array, params: dict[str, Any], largest: bool) -> Array:
    """The flat index of the entry each window chooses, by the pairwise selection JAX's
    rule uses (``ge`` for max, ``le`` for min: the first operand on a tie)."""
    compare = lax.ge if largest else lax.le
    bound = -np.inf if largest else np.inf

    def choose(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
        pick = compare(a[0], b[0])
        return lax.select(pick, a[0], b[0]), lax.select(pick, a[1], b[1])

    iota = lax.iota(np.int32, x.size).reshape(x.shape)
    init = (np.array(bound, x.dtype), np.array(-1, np.int32))
    _, chosen = lax.reduce_window(
        (x, iota), init, choose, params["window_dimensions"], params["window_strides"],
        params["padding"], params["base_dilation"], params["window_dilation"],
    )  # fmt: skip
    return chosen


@pointwise("reduce_window_max", "reduce_window_min")
def _reduce_window_chooser(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    chosen = _window_choices(x, eqn.params, eqn.primitive.name == "reduce_window_max")
    return [compose(WindowChoice(tuple(y.shape), tuple(x.shape), y.dtype.name, chosen), ops[0])]


@pointwise("select_and_scatter_add", linear=numerator)
def _select_and_scatter_add(ctx, eqn, ins, ops, outs):
    """Each entry of ``source`` (one per window) added at the entry its window of
    ``operand`` chooses: the transpose of the pooling's ``WindowChoice``, linear in the
    source; in the operand piecewise constant, derivative 0 (JAX's jvp)."""
    source, operand = ins
    params = eqn.params
    ones = (1,) * operand.ndim
    window = {**params, "base_dilation": ones, "window_dilation": ones}
    chosen = _window_choices(operand, window, params["select_prim"] is lax.ge_p)
    choice = WindowChoice(tuple(source.shape), tuple(operand.shape), outs[0].dtype.name, chosen)
    return [compose(choice.transpose(), ops[0])]


RELEVANT["select_and_scatter_add"] = lambda eqn: [0]
