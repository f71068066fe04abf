"""Convolutions and windowed sums as operators: ``Convolution``, ``WindowSum`` and
``WindowChoice``.

A convolution is linear in each operand. Its Jacobian in the input is the map
``t -> conv(t, kernel)``, stored as the kernel; in the kernel, ``t -> conv(input, t)``,
stored as the input. ``mv`` is the convolution itself (the primitive, with its own
parameters: every dimension number, stride, padding, dilation and feature or batch group
JAX supports); ``vm`` is its transpose, another convolution, the one JAX's transpose rules
build (``jax/_src/lax/convolution.py``: the kernel flipped and its feature axes swapped,
strides and dilations exchanged, the padding that inverts the forward one). The dense
Jacobian is only built by ``to_dense`` (``mv`` of the basis). A windowed sum is the same
kind of map with an implicit kernel of ones; max and min pooling take the entry each
window chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from jax import Array, lax

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import pytree
from matcalc_jax.operators.index_maps import Map, Static


def _dilate(shape: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    return tuple(0 if d == 0 else 1 + r * (d - 1) for d, r in zip(shape, dilation, strict=True))


def _transposed_padding(
    in_shape: Sequence[int], window: Sequence[int], strides: Sequence[int],
    out_shape: Sequence[int], padding: Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int], rhs_dilation: Sequence[int],
) -> list[tuple[int, int]]:  # fmt: skip
    """The padding of the convolution that transposes one in its input (JAX's
    ``_conv_general_vjp_lhs_padding``)."""
    lhs = _dilate(in_shape, lhs_dilation)
    rhs = _dilate(window, rhs_dilation)
    out = _dilate(out_shape, strides)
    before = np.subtract(rhs, [lo for lo, _ in padding]) - 1
    after = np.add(lhs, rhs) - 1 - np.asarray(out) - before
    return [(int(lo), int(hi)) for lo, hi in zip(before, after, strict=True)]


def _kernel_padding(
    in_shape: Sequence[int], window: Sequence[int], strides: Sequence[int],
    out_shape: Sequence[int], padding: Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int], rhs_dilation: Sequence[int],
) -> list[tuple[int, int]]:  # fmt: skip
    """The padding of the convolution that transposes one in its kernel (JAX's
    ``_conv_general_vjp_rhs_padding``)."""
    if len(in_shape) == 0:
        return []
    lhs = _dilate(in_shape, lhs_dilation)
    rhs = _dilate(window, rhs_dilation)
    out = _dilate(out_shape, strides)
    lows = [lo for lo, _ in padding]
    highs = [o - li + r - lo - 1 for o, li, r, lo in zip(out, lhs, rhs, lows, strict=True)]
    return list(zip(lows, highs, strict=True))


def _axis_out_of(source: int, size: int, x: Array) -> Array:
    shape = list(x.shape)
    shape[source : source + 1] = [size, shape[source] // size]
    return lax.reshape(x, shape)


def _axis_into(source: int, destination: int, x: Array) -> Array:
    order = [i for i in range(x.ndim) if i != source]
    order.insert(destination, source)
    shape = list(np.delete(x.shape, source))
    shape[destination] *= x.shape[source]
    return lax.reshape(x, shape, order)


def _spatial(spec: Sequence[int]) -> tuple[int, ...]:
    return tuple(spec[2:])


def _swap_features(spec: Sequence[int]) -> tuple[int, ...]:
    return (spec[1], spec[0], *spec[2:])


@pytree(("other",), ("out_sizes", "in_sizes", "dtype_name", "primitive", "side", "layout"))
class Convolution(Map):
    """``t -> conv(t, other)`` (``side="lhs"``: the Jacobian in the input, ``other`` the
    kernel) or ``t -> conv(other, t)`` (``side="rhs"``: in the kernel, ``other`` the
    input), with the primitive's parameters (``primitive``: the primitive and its
    parameters, static)."""

    other: Array
    primitive: Static
    side: str
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        primitive, params = self.primitive.value
        pair = (tangent, self.other) if self.side == "lhs" else (self.other, tangent)
        return primitive.bind(*pair, **params)

    def _apply_transpose(self, cotangent: Array) -> Array:
        _, params = self.primitive.value
        if self.side == "lhs":
            return _transpose_in_input(cotangent, self.other, self.in_shape, params)
        return _transpose_in_kernel(cotangent, self.other, self.in_shape, params)

    def describe(self) -> str:
        _, params = self.primitive.value
        side = "input" if self.side == "lhs" else "kernel"
        return f"in the {side}, strides {params['window_strides']}"


def _options(params: dict[str, Any]) -> dict[str, Any]:
    return {"precision": params.get("precision"),
            "preferred_element_type": params.get("preferred_element_type")}  # fmt: skip


def _transpose_in_input(g: Array, kernel: Array, in_shape: tuple, params: dict) -> Array:
    numbers = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = numbers
    features, batches = params["feature_group_count"], params["batch_group_count"]
    window = np.take(kernel.shape, _spatial(rhs_spec))
    if features > 1:  # the group axis moves into the transposed kernel's output features
        kernel = _axis_into(rhs_spec[0], rhs_spec[1], _axis_out_of(rhs_spec[0], features, kernel))
    elif batches > 1:
        kernel = _axis_into(rhs_spec[0], rhs_spec[1], _axis_out_of(rhs_spec[0], batches, kernel))
        features = batches
    padding = _transposed_padding(
        np.take(in_shape, _spatial(lhs_spec)), window, params["window_strides"],
        np.take(g.shape, _spatial(out_spec)), params["padding"], params["lhs_dilation"],
        params["rhs_dilation"],
    )  # fmt: skip
    out = lax.conv_general_dilated(
        g, lax.rev(kernel, _spatial(rhs_spec)).astype(g.dtype),
        window_strides=params["lhs_dilation"], padding=padding,
        lhs_dilation=params["window_strides"], rhs_dilation=params["rhs_dilation"],
        dimension_numbers=lax.ConvDimensionNumbers(out_spec, _swap_features(rhs_spec), lhs_spec),
        feature_group_count=features, batch_group_count=1, **_options(params),
    )  # fmt: skip
    if batches > 1:
        out = _axis_into(lhs_spec[1], lhs_spec[0], _axis_out_of(lhs_spec[1], batches, out))
    return out


def _transpose_in_kernel(g: Array, lhs: Array, kernel_shape: tuple, params: dict) -> Array:
    numbers = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = numbers
    features, batches = params["feature_group_count"], params["batch_group_count"]
    if batches > 1:
        features, batches = batches, 1
    elif features > 1:
        features, batches = 1, features
    padding = _kernel_padding(
        np.take(lhs.shape, _spatial(lhs_spec)), np.take(kernel_shape, _spatial(rhs_spec)),
        params["window_strides"], np.take(g.shape, _spatial(out_spec)), params["padding"],
        params["lhs_dilation"], params["rhs_dilation"],
    )  # fmt: skip
    numbers_t = lax.ConvDimensionNumbers(
        _swap_features(lhs_spec), _swap_features(out_spec), _swap_features(rhs_spec)
    )
    return lax.conv_general_dilated(
        lhs.astype(g.dtype), g, window_strides=params["rhs_dilation"], padding=padding,
        lhs_dilation=params["lhs_dilation"], rhs_dilation=params["window_strides"],
        dimension_numbers=numbers_t, feature_group_count=features,
        batch_group_count=batches, **_options(params),
    )  # fmt: skip


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "primitive", "layout"))
class WindowSum(Map):
    """``t -> reduce_window_sum(t)`` (sum pooling); its transpose pads the cotangent and
    sums it over the same windows (JAX's transpose rule)."""

    primitive: Static
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        primitive, params = self.primitive.value
        return primitive.bind(tangent, **params)

    def _apply_transpose(self, cotangent: Array) -> Array:
        primitive, params = self.primitive.value
        strides = params["window_strides"]
        pads = _transposed_padding(
            self.in_shape, params["window_dimensions"], strides, cotangent.shape,
            params["padding"], params["base_dilation"], params["window_dilation"],
        )  # fmt: skip
        config = [(lo, hi, s - 1) for (lo, hi), s in zip(pads, strides, strict=True)]
        padded = lax.pad(cotangent, np.zeros((), cotangent.dtype), config)
        transposed = dict(params, window_strides=params["base_dilation"],
                          padding=tuple((0, 0) for _ in self.in_shape),
                          base_dilation=(1,) * len(self.in_shape))  # fmt: skip
        return primitive.bind(padded, **transposed)


@pytree(("indices",), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class WindowChoice(Map):
    """``t -> t`` at the entry each window chose (max or min pooling): ``indices`` into the
    flattened input, -1 for a window of padding only; the transpose adds each cotangent
    back at the entry its window chose."""

    indices: Array
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        taken = tangent.reshape(-1)[lax.max(self.indices, np.int32(0))]
        return lax.select(self.indices >= 0, taken, lax.full_like(taken, 0))

    def _apply_transpose(self, cotangent: Array) -> Array:
        size = int(np.prod(self.in_shape))
        kept = lax.select(self.indices >= 0, cotangent, lax.full_like(cotangent, 0))
        flat = (
            lax.full((size,), 0, cotangent.dtype).at[lax.max(self.indices, np.int32(0))].add(kept)
        )
        return flat.reshape(self.in_shape)
