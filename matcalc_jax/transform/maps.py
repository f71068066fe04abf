"""The linear maps of JAX's structural and linear-algebra primitives, as operators.

Each stores only what it needs to apply the map and its transpose (an index, a padding
configuration, a triangular factor, a solver's program): ``reshape``, ``slice``, ``pad`` /
``concatenate``, ``dynamic_slice``, a change of float type, ``triangular_solve`` and
``custom_linear_solve``. They never build the dense Jacobian unless ``to_dense`` is called,
which applies ``mv`` to the basis. ``Linearized`` is the one map that is not written here:
the opt-in autodiff fallback for a primitive without a rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.extend import core as jex_core
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import (
    JacobianOperator,
    ShapedOperator,
    check_tangent,
    composition_rule,
    pytree,
    size_of,
)


class Static:
    """A compile-time parameter (a primitive's parameters, a program) carried in an
    operator's pytree structure: hashed and compared by identity."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Static({type(self.value).__name__})"


class _Map(ShapedOperator):
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
        n = size_of(self.in_shape)
        basis = jnp.eye(n, dtype=self.dtype).reshape((n, *self.in_shape))
        columns = jax.vmap(self._apply)(basis)  # (n, *out_shape)
        return jnp.moveaxis(columns.reshape(n, -1), 0, -1).reshape(self.out_shape + self.in_shape)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class Reshape(_Map):
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
class Embed(_Map):
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


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "config", "layout"))
class Restrict(_Map):
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
class Reverse(_Map):
    """v -> v reversed along ``dimensions`` (``rev``, ``x[::-1]``): its own transpose."""

    dimensions: tuple[int, ...]
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return lax.rev(tangent, self.dimensions)

    _apply_transpose = _apply

    def transpose(self) -> JacobianOperator:
        return self


@pytree(("start",), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class DynamicSlice(_Map):
    """v -> lax.dynamic_slice(v, start, out_shape), with traced start indices."""

    start: tuple[Array, ...]
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return lax.dynamic_slice(tangent, self.start, self.out_shape)

    def _apply_transpose(self, cotangent: Array) -> Array:
        zeros = jnp.zeros(self.in_shape, cotangent.dtype)
        return lax.dynamic_update_slice(zeros, cotangent, self.start)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "in_dtype_name", "layout"))
class ChangeType(_Map):
    """v -> v in another float type (``convert_element_type``)."""

    in_dtype_name: str
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return tangent.astype(self.dtype)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return cotangent.astype(self.in_dtype_name)

    def transpose(self) -> JacobianOperator:
        return ChangeType(
            self.in_sizes, self.out_sizes, self.in_dtype_name, self.dtype_name, self.layout
        )

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return frozenset((k, k) for k in range(len(self.in_shape)))


@pytree(("a",), ("out_sizes", "in_sizes", "dtype_name", "params", "layout"))
class TriangularSolve(_Map):
    """B -> op(A)^{-1} B (or B op(A)^{-1}) for a constant triangular A (``triangular_solve``);
    its transpose solves with op(A)^T."""

    a: Array
    params: Static
    layout: Layout = "numerator"

    def _solve(self, b: Array, transpose: bool) -> Array:
        params = dict(self.params.value)
        if transpose:
            params["transpose_a"] = not params["transpose_a"]
        return lax.linalg.triangular_solve(self.a, b, **params)

    def _apply(self, tangent: Array) -> Array:
        return self._solve(tangent, transpose=False)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return self._solve(cotangent, transpose=True)


def run_closed(jaxpr: Any, consts: Sequence[Array], *args: Array) -> list[Array]:
    """Evaluate a closed program (a ``ClosedJaxpr``) on ``consts`` and ``args``."""
    return jex_core.jaxpr_as_fun(jaxpr)(*consts, *args)


@pytree(
    ("solve_consts", "transpose_consts"),
    ("out_sizes", "in_sizes", "dtype_name", "programs", "layout"),
)
class LinearSolve(_Map):
    """b -> A^{-1} b through the solver programs of ``custom_linear_solve`` (``solve`` for the
    map, ``transpose_solve`` for its transpose), with their constants (a factorization,
    stored once when both programs use the same one)."""

    solve_consts: tuple[Array, ...]
    transpose_consts: tuple[Array, ...]
    programs: Static
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        solve, _, _ = self.programs.value
        return run_closed(solve, self.solve_consts, tangent)[0]

    def _apply_transpose(self, cotangent: Array) -> Array:
        _, transpose_solve, shared = self.programs.value
        consts = self.solve_consts if shared else self.transpose_consts
        if transpose_solve is None:
            raise ValueError(
                "LinearSolve.vm: this custom_linear_solve has no transpose_solve; pass one "
                "(or symmetric=True) to jax.lax.custom_linear_solve"
            )
        return run_closed(transpose_solve, consts, cotangent)[0]


@pytree(
    ("operands",),
    (
        "out_sizes",
        "in_sizes",
        "dtype_name",
        "primitive",
        "position",
        "output",
        "where",
        "layout",
    ),
)
class Linearized(_Map):
    """The autodiff fallback: one primitive's local Jacobian with respect to one operand,
    applied through JAX's ``jvp`` and ``vjp`` of that primitive alone. Only built when the
    caller passes ``fallback="autodiff"``; listed in ``J.fallbacks``."""

    operands: tuple[Array, ...]
    primitive: Static
    position: int
    output: int
    where: str
    layout: Layout = "numerator"
    is_fallback = True

    def _local(self) -> Callable[[Array], Array]:
        primitive, params = self.primitive.value
        operands = list(self.operands)

        def local(x: Array) -> Array:
            args = [*operands[: self.position], x, *operands[self.position + 1 :]]
            out = primitive.bind(*args, **params)
            return out[self.output] if primitive.multiple_results else out

        return local

    def _apply(self, tangent: Array) -> Array:
        return jax.jvp(self._local(), (self.operands[self.position],), (tangent,))[1]

    def _apply_transpose(self, cotangent: Array) -> Array:
        _, pullback = jax.vjp(self._local(), self.operands[self.position])
        return pullback(cotangent)[0]

    def describe(self) -> str:
        primitive, _ = self.primitive.value
        return f"{primitive.name} (autodiff fallback, operand {self.position}, {self.where})"


@pytree(("indices",), ("out_sizes", "in_sizes", "dtype_name", "params", "layout"))
class Gather(_Map):
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
