r"""Chain rules (the seed's four), as combinators on user-supplied pieces.

Printed in denominator layout:

1. dz/dx = (dy/dx)(dz/dy)                  x in R^m, y in R^s, z in R^n
2. dz/dX_ij = tr((dz/dY)^T dY/dX_ij)       X in R^{p x q}, Y in R^{s x t}, z scalar
3. dz/dX_ij = (dz/dy)^T dy/dX_ij           X in R^{p x q}, y in R^s, z scalar
4. dg/dx = (dg/du)^T du/dx                 x scalar, u in R^s, g in R^t

Each combinator takes its pieces and returns the result in one stated ``layout``.
"""

from __future__ import annotations

from typing import Any

from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout, check_layout, multiply_in_layout
from matcalc_jax.operators import (
    Dense,
    Diagonal,
    JacobianOperator,
    as_operator,
    compose,
    is_operator,
)


def chain_vector(dz_dy: Any, dy_dx: Any, *, layout: Layout = "numerator") -> Any:
    """Chain rule through a vector y: dz/dx = (dy/dx)(dz/dy) in the seed's layout.

    Denominator layout (the seed): ``dy_dx @ dz_dy``; numerator layout: ``dz_dy @ dy_dx``.

    Args:
      dz_dy: Jacobian of z in R^n with respect to y in R^s: (n, s) numerator, (s, n) denominator.
      dy_dx: Jacobian of y with respect to x (any shape): (s,) + x.shape numerator,
        x.shape + (s,) denominator.
      layout: the layout of both pieces and of the result.

    Either piece may be a structured Jacobian (``matcalc_jax.Diagonal``, ``Dense``, ...);
    then the result is one too, composed with the structure kept (see ``docs/structured.md``).

    Returns:
      dz/dx: (n,) + x.shape numerator, x.shape + (n,) denominator.
    """
    layout = check_layout("chain_vector", layout)
    if is_operator(dz_dy) or is_operator(dy_dx):
        outer = _outer_operator("chain_vector", "dz_dy", dz_dy, layout)
        return compose(outer, as_operator("chain_vector", "dy_dx", dy_dx, outer.in_shape, layout))
    outer = validate.floating("chain_vector", "dz_dy", dz_dy)
    validate.rank("chain_vector", "dz_dy", outer, 2, "a matrix (z and y are vectors)")
    s = outer.shape[1] if layout == "numerator" else outer.shape[0]
    inner, _ = validate.jacobian("chain_vector", "dy_dx", dy_dx, (s,), layout)
    return multiply_in_layout(outer, inner, layout)


def chain_matrix_trace(dz_dY: ArrayLike, dY_dX: Any, *, layout: Layout = "numerator") -> Any:
    """Matrix chain rule: dz/dX_ij = tr((dz/dY)^T dY/dX_ij).

    Computed for every (i, j) at once as ``sum_ab (dz/dY)_ab dY_ab/dX_ij``, which is the trace
    written out, on the real 4-index tensor dY/dX.

    Args:
      dz_dY: (s, t), the derivative of the scalar z with respect to Y (same in both layouts).
      dY_dX: (s, t, p, q) in numerator layout, (p, q, s, t) in denominator layout; or a
        structured Jacobian such as ``matcalc_jax.Kronecker(A, B)`` for Y = A X B, which gives
        dz/dX = A^T (dz/dY) B^T without forming the tensor (returned as a ``Dense``).

    Returns:
      dz/dX of shape (p, q) in both layouts.
    """
    return _gradient_through("chain_matrix_trace", "dz_dY", dz_dY, "dY_dX", dY_dX, 2, layout)


def chain_matrix_vector(dz_dy: ArrayLike, dy_dX: Any, *, layout: Layout = "numerator") -> Any:
    """Chain rule from a matrix through a vector: dz/dX_ij = (dz/dy)^T dy/dX_ij.

    Args:
      dz_dy: (s,), the gradient of the scalar z with respect to y (same in both layouts).
      dy_dX: (s, p, q) in numerator layout, (p, q, s) in denominator layout; or a
        structured Jacobian (then the result is a ``Dense`` holding dz/dX).

    Returns:
      dz/dX of shape (p, q) in both layouts.
    """
    return _gradient_through("chain_matrix_vector", "dz_dy", dz_dy, "dy_dX", dy_dX, 1, layout)


def _gradient_through(
    rule_id: str,
    outer_name: str,
    outer: ArrayLike,
    inner_name: str,
    inner: Any,
    rank: int,
    layout: Layout,
) -> Any:
    """The two matrix chain rules: contract dz/dY (a cotangent) with dY/dX's output axes."""
    layout = check_layout(rule_id, layout)
    outer = validate.floating(rule_id, outer_name, outer)
    what = "a matrix (dz/dY for scalar z)" if rank == 2 else "a vector (dz/dy for scalar z)"
    validate.rank(rule_id, outer_name, outer, rank, what)
    op = as_operator(rule_id, inner_name, inner, outer.shape, layout)  # dense: checked, wrapped
    _check_matrix_input(rule_id, inner_name, op.shape, op.in_shape)
    gradient = op.vm(outer)
    return Dense(gradient, 0, layout) if is_operator(inner) else gradient


def chain_scalar(dg_du: Any, du_dx: ArrayLike, *, layout: Layout = "numerator") -> Any:
    """Chain rule from a scalar x through a vector u: dg/dx.

    The seed prints dg/dx = (dg/du)^T du/dx, which holds only when du/dx is read as a
    column; in a consistent layout it is ``dg_du @ du_dx`` (numerator) or
    ``du_dx @ dg_du`` (denominator); see ``docs/errata.md``.

    Args:
      dg_du: Jacobian of g in R^t with respect to u in R^s: (t, s) numerator, (s, t)
        denominator; or a structured Jacobian (then the result is a ``Dense`` holding dg/dx).
      du_dx: (s,), the derivative of u with respect to the scalar x (same in both layouts).

    Returns:
      dg/dx of shape (t,) in both layouts.
    """
    layout = check_layout("chain_scalar", layout)
    inner = validate.floating("chain_scalar", "du_dx", du_dx)
    if is_operator(dg_du):
        outer = _outer_operator("chain_scalar", "dg_du", dg_du, layout)
        validate.shape("chain_scalar", "du_dx", inner, outer.in_shape, "the input of dg_du")
        return Dense(outer.mv(inner), len(outer.out_shape), layout)
    outer = validate.floating("chain_scalar", "dg_du", dg_du)
    validate.rank("chain_scalar", "dg_du", outer, 2, "a matrix (g and u are vectors)")
    s = outer.shape[1] if layout == "numerator" else outer.shape[0]
    validate.shape(
        "chain_scalar", "du_dx", inner, (s,), f"the u axis of dg_du, shape {outer.shape}"
    )
    return multiply_in_layout(outer, inner, layout)


def chain_elementwise(derivative: ArrayLike, dy_dx: Any, *, layout: Layout = "numerator") -> Any:
    """Chain rule through an elementwise map z_k = f(y_k): dz/dx = diag(f'(y)) dy/dx.

    The same as ``chain_vector(elementwise_jacobian(derivative), dy_dx, layout=layout)``,
    but computed as a broadcast (row k of dy/dx scaled by f'(y_k)), never forming the
    diagonal matrix or multiplying by it: O(s * x.size) work instead of O(s^2 * x.size).
    With a structured ``dy_dx`` it returns ``Diagonal(derivative)`` composed with it.

    Args:
      derivative: f'(y), shape (s,).
      dy_dx: (s,) + x.shape numerator, x.shape + (s,) denominator.

    Returns:
      dz/dx, the same shape as ``dy_dx``.
    """
    layout = check_layout("chain_elementwise", layout)
    d = validate.vector("chain_elementwise", "derivative", derivative)
    if is_operator(dy_dx):
        inner = as_operator("chain_elementwise", "dy_dx", dy_dx, d.shape, layout)
        return compose(Diagonal(d, layout), inner)
    inner, x_shape = validate.jacobian("chain_elementwise", "dy_dx", dy_dx, d.shape, layout)
    if layout == "numerator":
        return d.reshape(d.shape + (1,) * len(x_shape)) * inner
    return inner * d


def _outer_operator(rule_id: str, name: str, piece: Any, layout: Layout) -> JacobianOperator:
    """The outer piece of a chain rule (vector in, vector out) as an operator."""
    if is_operator(piece):
        return as_operator(rule_id, name, piece, piece.out_shape, layout)
    array = validate.floating(rule_id, name, piece)
    validate.rank(rule_id, name, array, 2, "a matrix (both sides are vectors)")
    return Dense.from_array(array, 1, layout)


def _check_matrix_input(rule_id: str, name: str, shape: tuple, x_shape: tuple) -> None:
    if len(x_shape) != 2:
        raise ValueError(
            f"rule {rule_id!r}: argument {name!r} has shape {tuple(shape)}, whose "
            f"input axes {x_shape} are not those of a matrix X (p, q)"
        )
