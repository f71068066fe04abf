r"""Matrix-argument affine maps: Y = A X B and the layer y = W x + b, and the seed's trace
chain rule written both ways.

For Y = A X B with A (s, p), X (p, q), B (q, t), each output entry is
Y_ab = sum_ij A_ai X_ij B_jb, so

    dY_ab / dX_ij = A_ai B_jb,

a 4-index tensor of shape (s, t, p, q) in numerator layout whose structure is a Kronecker
product: with the row-major ``vec`` that ``jnp.reshape`` uses, vec(A X B) = (A (x) B^T) vec(X);
with the column-stacking vec of the Matrix Cookbook (sec. 10.2.2), vec(A X B) =
(B^T (x) A) vec(X). For a scalar z of Y the seed's trace chain rule

    dz/dX_ij = tr((dz/dY)^T dY/dX_ij)

collapses to dz/dX = A^T (dz/dY) B^T, without the tensor.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout, check_layout, from_numerator
from matcalc_jax.operators import Dense, Identity, Kronecker

VEC_ORDERS: tuple[str, ...] = ("row", "column")


def _check_order(rule_id: str, order: object) -> None:
    if order not in VEC_ORDERS:
        raise ValueError(
            f"rule {rule_id!r}: order={order!r} is not a vec order; expected one of {VEC_ORDERS}"
        )


def matrix_product_jacobian(A: Array, B: Array, layout: Layout) -> Array:
    """The 4-index tensor dY/dX of Y = A X B: dY_ab/dX_ij = A_ai B_jb."""
    if layout == "numerator":
        return jnp.einsum("ai,jb->abij", A, B)
    return jnp.einsum("ai,jb->ijab", A, B)


def matrix_vector_jacobian(rows: int, v: Array, layout: Layout, structured: bool) -> Any:
    """dy/dX of y = X v for X of shape (rows, len(v)): dy_a/dX_ij = delta_ai v_j.

    As a ``Kronecker(I, v)`` operator when ``structured``, else the dense (rows, rows, q)
    tensor (numerator) or (rows, q, rows) (denominator).
    """
    eye = jnp.eye(rows, dtype=v.dtype)
    if structured:
        return Kronecker(eye, v, layout)
    spec = "ai,j->aij" if layout == "numerator" else "ai,j->ija"
    return jnp.einsum(spec, eye, v)


# ------------------------------------------------------------------------ Y = A X B


def affine_matrix_map(A: ArrayLike, X: ArrayLike, B: ArrayLike) -> Array:
    """``A @ X @ B`` with the shapes checked."""
    A, X, B = validate.affine("affine_matrix", A, X, B)
    return A @ X @ B


def affine_matrix_jacobian(
    A: ArrayLike, X: ArrayLike, B: ArrayLike, *, layout: Layout = "numerator"
) -> Array:
    """dY/dX of Y = A X B: dY_ab/dX_ij = A_ai B_jb.

    Args:
      A: (s, p).
      X: (p, q); the Jacobian does not depend on its values, only its shape is checked.
      B: (q, t).
      layout: "numerator" gives (s, t, p, q), "denominator" (p, q, s, t).

    ``rule("affine_matrix").structured`` gives the same map as ``Kronecker(A, B)`` in
    O(sp + qt) memory instead of O(stpq).

    >>> import jax.numpy as jnp
    >>> affine_matrix_jacobian(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.ones((4, 5))).shape
    (2, 5, 3, 4)
    """
    layout = check_layout("affine_matrix", layout)
    A, _, B = validate.affine("affine_matrix", A, X, B)
    return matrix_product_jacobian(A, B, layout)


def affine_matrix_gradient(dz_dY: ArrayLike, A: ArrayLike, B: ArrayLike) -> Array:
    """dz/dX = A^T (dz/dY) B^T for a scalar z of Y = A X B: the trace chain rule on the
    Kronecker structure, O(s t (p + q)) work, no 4-index tensor.

    Args:
      dz_dY: (s, t), the gradient of z with respect to Y.
      A: (s, p).
      B: (q, t).

    Returns:
      dz/dX of shape (p, q) (a scalar-by-matrix derivative: the same in both layouts).
    """
    G = validate.matrix("affine_matrix", "dz_dY", dz_dY)
    A = validate.matrix("affine_matrix", "A", A)
    B = validate.matrix("affine_matrix", "B", B)
    validate.shape(
        "affine_matrix",
        "dz_dY",
        G,
        (A.shape[0], B.shape[1]),
        f"the shape of Y = A X B with A {tuple(A.shape)} and B {tuple(B.shape)}",
    )
    return jnp.einsum("ai,ab,jb->ij", A, G, B)


def affine_matrix_operator(
    A: ArrayLike, X: ArrayLike, B: ArrayLike, *, layout: Layout = "numerator"
) -> Kronecker:
    layout = check_layout("affine_matrix", layout)
    A, _, B = validate.affine("affine_matrix", A, X, B)
    return Kronecker(A, B, layout)


# ------------------------------------------------------------- the trace chain rule


def _in_axes_first(rule_id: str, dz_dY: Array, dY_dX: ArrayLike, layout: Layout) -> Array:
    """dY/dX as (p, q, s, t): the slices dY/dX_ij first, checked against dz/dY's shape."""
    tensor, x_shape = validate.jacobian(rule_id, "dY_dX", dY_dX, dz_dY.shape, layout)
    if len(x_shape) != 2:
        raise ValueError(
            f"rule {rule_id!r}: argument 'dY_dX' has shape {tuple(tensor.shape)}, whose input "
            f"axes {x_shape} are not those of a matrix X (p, q)"
        )
    if layout == "numerator":
        return from_numerator(tensor, 2, "denominator")  # (s, t, p, q) -> (p, q, s, t)
    return tensor


def trace_chain_per_entry(
    dz_dY: ArrayLike, dY_dX: ArrayLike, *, layout: Layout = "numerator"
) -> Array:
    """The seed's matrix chain rule taken literally, one entry of X at a time:
    dz/dX_ij = tr((dz/dY)^T dY/dX_ij), with dY/dX_ij the (s, t) matrix of derivatives of Y
    by the single entry X_ij.

    O(p q s t^2) work: a reference for the other forms (``chain_matrix_trace`` contracts the
    same tensor in O(p q s t); ``affine_matrix_gradient`` needs no tensor at all).

    Args:
      dz_dY: (s, t).
      dY_dX: (s, t, p, q) in numerator layout, (p, q, s, t) in denominator layout.

    Returns:
      dz/dX of shape (p, q).
    """
    layout = check_layout("chain_matrix_trace", layout)
    G = validate.matrix("chain_matrix_trace", "dz_dY", dz_dY)
    slices = _in_axes_first("chain_matrix_trace", G, dY_dX, layout)

    def entry(dY_dXij: Array) -> Array:
        return jnp.trace(G.T @ dY_dXij)

    return jax.vmap(jax.vmap(entry))(slices)


def kronecker_vec_jacobian(A: ArrayLike, B: ArrayLike, *, order: str = "row") -> Array:
    """The Jacobian of vec(A X B) with respect to vec(X): an (s t, p q) Kronecker product.

    ``order="row"``: the row-major vec of ``jnp.reshape`` (``X.reshape(-1)``), for which
    vec(A X B) = (A (x) B^T) vec(X). ``order="column"``: the column-stacking vec of the
    Matrix Cookbook (``X.T.reshape(-1)``), for which vec(A X B) = (B^T (x) A) vec(X).

    >>> import jax.numpy as jnp
    >>> kronecker_vec_jacobian(jnp.ones((2, 3)), jnp.ones((4, 5))).shape
    (10, 12)
    """
    _check_order("affine_matrix", order)
    A = validate.matrix("affine_matrix", "A", A)
    B = validate.matrix("affine_matrix", "B", B)
    if order == "row":
        return jnp.kron(A, B.T)
    return jnp.kron(B.T, A)


def trace_chain_vec(
    dz_dY: ArrayLike, dvecY_dvecX: ArrayLike, x_shape: tuple[int, int], *, order: str = "row"
) -> Array:
    """The trace chain rule in vec form: vec(dz/dX) = (dvec(Y)/dvec(X))^T vec(dz/dY).

    Args:
      dz_dY: (s, t).
      dvecY_dvecX: the (s t, p q) Jacobian of vec(Y) with respect to vec(X) (numerator
        layout), for instance ``kronecker_vec_jacobian`` for Y = A X B.
      x_shape: (p, q), the shape of X.
      order: the vec of both sides, "row" (``reshape(-1)``) or "column" (stacked columns).

    Returns:
      dz/dX of shape (p, q).
    """
    _check_order("chain_matrix_trace", order)
    G = validate.matrix("chain_matrix_trace", "dz_dY", dz_dY)
    p, q = (int(d) for d in x_shape)
    J = validate.matrix("chain_matrix_trace", "dvecY_dvecX", dvecY_dvecX)
    validate.shape(
        "chain_matrix_trace", "dvecY_dvecX", J, (G.size, p * q), "(s t, p q) = vec(Y) by vec(X)"
    )
    if order == "row":
        return (G.reshape(-1) @ J).reshape(p, q)
    return (G.T.reshape(-1) @ J).reshape(q, p).T


# ---------------------------------------------------------------- y = W x + b


def _layer(rule_id: str, W: ArrayLike, x: ArrayLike, b: ArrayLike) -> tuple[Array, ...]:
    x = validate.vector(rule_id, "x", x)
    W = validate.matrix_acting_on(rule_id, "W", W, "x", x)
    b = validate.vector(rule_id, "b", b)
    validate.shape(rule_id, "b", b, (W.shape[0],), f"the rows of W, shape {tuple(W.shape)}")
    return W, x, b


def linear_layer_map(
    W: ArrayLike, x: ArrayLike, b: ArrayLike, *, rule_id: str = "linear_layer"
) -> Array:
    """``W @ x + b`` with the shapes checked (errors name ``rule_id``)."""
    W, x, b = _layer(rule_id, W, x, b)
    return W @ x + b


def linear_layer_weight_jacobian(
    W: ArrayLike, x: ArrayLike, b: ArrayLike, *, layout: Layout = "numerator"
) -> Array:
    """dy/dW of y = W x + b: dy_a/dW_ij = delta_ai x_j, i.e. I (x) x^T in row-major vec form.

    Args:
      W: (n, m); x: (m,); b: (n,). Only x's values enter.
      layout: "numerator" gives (n, n, m), "denominator" (n, m, n).

    The structured form (``rule("linear_layer").structured``) is ``Kronecker(I, x)``; its
    ``vm`` is the familiar weight gradient outer(dz/dy, x).
    """
    layout = check_layout("linear_layer", layout)
    W, x, _ = _layer("linear_layer", W, x, b)
    return matrix_vector_jacobian(W.shape[0], x, layout, structured=False)


def linear_layer_input_jacobian(
    W: ArrayLike, x: ArrayLike, b: ArrayLike, *, layout: Layout = "numerator"
) -> Array:
    """dy/dx of y = W x + b: W in numerator layout, W^T in denominator layout."""
    layout = check_layout("linear_layer_input", layout)
    W, _, _ = _layer("linear_layer_input", W, x, b)
    return W if layout == "numerator" else W.T


def linear_layer_bias_jacobian(
    W: ArrayLike, x: ArrayLike, b: ArrayLike, *, layout: Layout = "numerator"
) -> Array:
    """dy/db of y = W x + b: the (n, n) identity in both layouts."""
    check_layout("linear_layer_bias", layout)
    _, _, b = _layer("linear_layer_bias", W, x, b)
    return jnp.eye(b.shape[0], dtype=b.dtype)


def linear_layer_weight_operator(
    W: ArrayLike, x: ArrayLike, b: ArrayLike, *, layout: Layout = "numerator"
) -> Kronecker:
    layout = check_layout("linear_layer", layout)
    W, x, _ = _layer("linear_layer", W, x, b)
    return matrix_vector_jacobian(W.shape[0], x, layout, structured=True)


def linear_layer_input_operator(
    W: ArrayLike, x: ArrayLike, b: ArrayLike, *, layout: Layout = "numerator"
) -> Dense:
    layout = check_layout("linear_layer_input", layout)
    W, _, _ = _layer("linear_layer_input", W, x, b)
    return Dense(W, 1, layout)


def linear_layer_bias_operator(
    W: ArrayLike, x: ArrayLike, b: ArrayLike, *, layout: Layout = "numerator"
) -> Identity:
    layout = check_layout("linear_layer_bias", layout)
    _, _, b = _layer("linear_layer_bias", W, x, b)
    return Identity(tuple(b.shape), b.dtype.name, layout)
