"""Index maps: the linear maps of JAX's structural primitives, as operators.

Each stores only what it needs to apply the map and its transpose (an index, a padding
configuration, start indices): ``reshape`` (``Reshape``), ``pad`` / ``concatenate``
(``Embed``), ``slice`` (``Restrict``), ``rev`` (``Reverse``), ``dynamic_slice``
(``DynamicSlice``), a change of float type (``ChangeType``), ``reduce_precision``
(``Rounding``), ``gather`` (``Gather``) and the
permutation of ``sort`` or the selection of ``top_k`` (``TakeAlong``). They never build the
dense Jacobian unless ``to_dense`` is called, which applies ``mv`` to the basis.

``Map`` is their base, and that of every map stored as the way to apply it (the solves,
convolutions, complex maps and matrix-function tangents beside them); ``Static`` carries a
compile-time parameter (a primitive's parameters, a program) in an operator's pytree
structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import (
    JacobianOperator,
    ShapedOperator,
    check_tangent,
    composition_rule,
    keeps_width,
    matrix_of,
    pytree,
    size_of,
)


class Static:
    """A compile-time parameter (a primitive's parameters, a program) carried in an
    operator's pytree structure. Two are equal when they hold the same object or equal
    values (so that an operator built at each step of a loop keeps one structure); the
    hash is the value's type, which equal values share."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Static):
            return NotImplemented
        if self.value is other.value:
            return True
        try:
            return bool(self.value == other.value)
        except Exception:  # values without a plain equality (arrays, programs)
            return False

    def __hash__(self) -> int:
        return hash(type(self.value).__name__)

    def __repr__(self) -> str:
        return f"Static({type(self.value).__name__})"


class Map(ShapedOperator):
    """A map applied by ``_apply`` and transposed by ``_apply_transpose``."""

    def mv(self, tangent: ArrayLike) -> Array:
        return self._apply(check_tangent(self, "mv", tangent, self.in_shape))

    def vm(self, cotangent: ArrayLike) -> Array:
        return self._apply_transpose(check_tangent(self, "vm", cotangent, self.out_shape))

    def _apply(self, tangent: Array) -> Array:
        raise NotImplementedError

    def _apply_transpose(self, cotangent: Array) -> Array:
        raise NotImplementedError

    def _numerator(self) -> Array:
        return matrix_of(self._apply, self.out_shape, self.in_shape, self.dtype)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class Reshape(Map):
    """v -> v.reshape(out_shape): the same entries in a new shape."""

    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return tangent.reshape(self.out_shape)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return cotangent.reshape(self.in_shape)

    def _numerator(self) -> Array:
        n = size_of(self.in_shape)
        return jnp.eye(n, dtype=self.dtype).reshape(self.out_shape + self.in_shape)

    def transpose(self) -> JacobianOperator:
        return Reshape(self.in_sizes, self.out_sizes, self.dtype_name, self.layout)


@composition_rule(Reshape, Reshape)
def _reshape_reshape(outer: Reshape, inner: Reshape) -> JacobianOperator:
    return Reshape(outer.out_sizes, inner.in_sizes, outer.dtype_name, outer.layout)


def _unpad(array: Array, config: tuple[tuple[int, int, int], ...]) -> Array:
    """The entries of ``array`` that ``lax.pad(x, 0, config)`` took from x: a strided slice."""
    return lax.slice(
        array,
        tuple(lo for lo, _, _ in config),
        tuple(size - hi for size, (_, hi, _) in zip(array.shape, config, strict=True)),
        tuple(interior + 1 for _, _, interior in config),
    )


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "config", "layout"))
class Embed(Map):
    """v -> lax.pad(v, 0, config): v placed in a larger zero array (``pad`` with non-negative
    edges, one operand of ``concatenate``); its transpose is the matching strided slice."""

    config: tuple[tuple[int, int, int], ...]
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return lax.pad(tangent, jnp.zeros((), tangent.dtype), self.config)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return _unpad(cotangent, self.config)

    def transpose(self) -> JacobianOperator:
        return Restrict(self.in_sizes, self.out_sizes, self.dtype_name, self.config, self.layout)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return untouched_axes(self.config)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "config", "layout"))
class Restrict(Map):
    """v -> a strided slice of v (``slice``): the transpose of ``Embed`` with the same
    ``config``, here read from the input's side."""

    config: tuple[tuple[int, int, int], ...]
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return _unpad(tangent, self.config)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return lax.pad(cotangent, jnp.zeros((), cotangent.dtype), self.config)

    def transpose(self) -> JacobianOperator:
        return Embed(self.in_sizes, self.out_sizes, self.dtype_name, self.config, self.layout)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return untouched_axes(self.config)


def untouched_axes(config: tuple[tuple[int, int, int], ...]) -> frozenset[tuple[int, int]]:
    """The axes a padding or slice leaves as they are: the map mixes nothing along them."""
    return frozenset((k, k) for k, edges in enumerate(config) if tuple(edges) == (0, 0, 0))


def slice_config(
    in_shape: Sequence[int], start: Sequence[int], limit: Sequence[int], strides: Sequence[int]
) -> tuple[tuple[int, int, int], ...]:
    """The padding that puts ``x[start:limit:strides]`` back where it came from."""
    config = []
    for size, lo, hi, step in zip(in_shape, start, limit, strides, strict=True):
        count = max(0, -(-(hi - lo) // step))
        last = lo + (count - 1) * step if count else lo - 1
        config.append((lo, size - last - 1, step - 1))
    return tuple(config)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "dimensions", "layout"))
class Reverse(Map):
    """v -> v reversed along ``dimensions`` (``rev``, ``x[::-1]``): its own transpose."""

    dimensions: tuple[int, ...]
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return lax.rev(tangent, self.dimensions)

    _apply_transpose = _apply

    def transpose(self) -> JacobianOperator:
        return self


@pytree(("start",), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class DynamicSlice(Map):
    """v -> lax.dynamic_slice(v, start, out_shape), with traced start indices as the
    primitive reads them: clamped into bounds, a negative one to 0 (the start a program's
    equation holds; ``lax.dynamic_slice`` itself would wrap it from the end first)."""

    start: tuple[Array, ...]
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return lax.dynamic_slice(tangent, self.start, self.out_shape, allow_negative_indices=False)

    def _apply_transpose(self, cotangent: Array) -> Array:
        zeros = jnp.zeros(self.in_shape, cotangent.dtype)
        return lax.dynamic_update_slice(zeros, cotangent, self.start, allow_negative_indices=False)


def cast(tangent: Array, dtype: Any) -> Array:
    """``tangent`` in ``dtype``; a complex tangent cast to a real type keeps its real part
    (as ``lax.convert_element_type`` does)."""
    dtype = jnp.dtype(dtype)
    if jnp.iscomplexobj(tangent) and not jnp.issubdtype(dtype, jnp.complexfloating):
        tangent = jnp.real(tangent)
    return tangent.astype(dtype)


def _real_type(dtype: Any) -> Any:
    """The real type of ``dtype``'s precision (float64 for complex128)."""
    return jnp.finfo(dtype).dtype


def _wider(first: Any, second: Any) -> Any:
    """The real type JAX promotes the two to; for a float8 type, which JAX promotes with
    no other, the one of more bits (float32 beside float8_e4m3fn)."""
    try:
        return jnp.promote_types(first, second)
    except jax.dtypes.TypePromotionError:
        return first if jnp.finfo(first).bits >= jnp.finfo(second).bits else second


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "in_dtype_name", "layout"))
class ChangeType(Map):
    """v -> v in another float type (``convert_element_type``). Between real and complex:
    real to complex embeds (``v + 0i``) and complex to real keeps the real part, each the
    other's transpose in JAX's pairing of complex cotangents (``Re(u^T w)``); a tangent
    reaching the real side as a complex array (a complex basis) is read by its real part."""

    in_dtype_name: str
    layout: Layout = "numerator"

    @property
    def real_linear_only(self) -> bool:  # the real part of a complex tangent
        return jnp.issubdtype(self.in_dtype_name, jnp.complexfloating) and not jnp.issubdtype(
            self.dtype, jnp.complexfloating
        )

    @property
    def real_to_complex(self) -> bool:  # x + 0i
        return not jnp.issubdtype(self.in_dtype_name, jnp.complexfloating) and jnp.issubdtype(
            self.dtype, jnp.complexfloating
        )

    @property
    def narrows_type(self) -> bool:  # float32 to bfloat16: fewer digits
        return jnp.finfo(self.dtype).nmant < jnp.finfo(self.in_dtype_name).nmant

    def _apply(self, tangent: Array) -> Array:
        return cast(cast(tangent, self.in_dtype_name), self.dtype)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return cast(cast(cotangent, self.dtype), self._transposed_dtype())

    def _transposed_dtype(self) -> Any:
        """The input's type; inside ``keeping_width`` one of its kind (real or complex)
        wide enough for both types (float64 from float32 to float64: no digit is lost)."""
        if not keeps_width():
            return self.in_dtype_name
        real = _wider(_real_type(self.in_dtype_name), _real_type(self.dtype))
        complex_in = jnp.issubdtype(self.in_dtype_name, jnp.complexfloating)
        return jnp.promote_types(real, jnp.complex64) if complex_in else real

    def transpose(self) -> JacobianOperator:
        return ChangeType(
            self.in_sizes, self.out_sizes, self.in_dtype_name, self.dtype_name, self.layout
        )

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return frozenset((k, k) for k in range(len(self.in_shape)))


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "bits", "layout"))
class Rounding(Map):
    """v -> ``lax.reduce_precision(v, *bits)``: JAX's jvp of ``reduce_precision`` rounds the
    tangent to the same (exponent, mantissa) bits, and its transpose the cotangent. The
    identity up to that rounding (which is not linear: ``mv`` and ``to_dense`` round the
    tangents themselves, as ``jax.jvp`` and ``jax.jacfwd`` do)."""

    bits: tuple[int, int]
    layout: Layout = "numerator"
    rounds = True

    def _apply(self, tangent: Array) -> Array:
        exponent_bits, mantissa_bits = self.bits
        return lax.reduce_precision(tangent, exponent_bits, mantissa_bits)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return self._apply(cotangent)

    def transpose(self) -> JacobianOperator:
        return self

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return frozenset((k, k) for k in range(len(self.in_shape)))


@pytree(("indices",), ("out_sizes", "in_sizes", "dtype_name", "params", "layout"))
class Gather(Map):
    """v -> lax.gather(v, indices, ...) for constant indices (``x[idx]``, ``jnp.take``); its
    transpose scatters back with addition, as JAX transposes a gather."""

    indices: Array
    params: Static
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return lax.gather(tangent, self.indices, **self.params.value)

    def _apply_transpose(self, cotangent: Array) -> Array:
        params = self.params.value
        numbers = params["dimension_numbers"]
        scatter_numbers = lax.ScatterDimensionNumbers(
            update_window_dims=numbers.offset_dims,
            inserted_window_dims=numbers.collapsed_slice_dims,
            scatter_dims_to_operand_dims=numbers.start_index_map,
            operand_batching_dims=numbers.operand_batching_dims,
            scatter_indices_batching_dims=numbers.start_indices_batching_dims,
        )
        zeros = jnp.zeros(self.in_shape, cotangent.dtype)
        return lax.scatter_add(
            zeros, self.indices, cotangent, scatter_numbers,
            indices_are_sorted=params["indices_are_sorted"],
            unique_indices=params["unique_indices"], mode=params["mode"],
        )  # fmt: skip


@pytree(("indices",), ("out_sizes", "in_sizes", "dtype_name", "axis", "layout"))
class TakeAlong(Map):
    """v -> v at ``indices`` along ``axis`` (the same position on the other axes): the
    permutation of ``sort``, the selection of ``top_k``, as JAX's rules index the tangent;
    its transpose adds each entry back where it was taken from."""

    indices: Array
    axis: int
    layout: Layout = "numerator"

    def _grid(self) -> tuple[Array, ...]:
        shape = self.indices.shape
        return tuple(
            self.indices if d == self.axis else lax.broadcasted_iota(jnp.int32, shape, d)
            for d in range(len(shape))
        )

    def _apply(self, tangent: Array) -> Array:
        return tangent[self._grid()]

    def _apply_transpose(self, cotangent: Array) -> Array:
        return jnp.zeros(self.in_shape, cotangent.dtype).at[self._grid()].add(cotangent)
