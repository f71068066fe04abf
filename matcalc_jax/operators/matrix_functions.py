"""The tangent maps of matrix factorizations and solves, as operators: how a triangular
solve's matrix moves its solution (``TriangularProduct``), and the tangents of
``cholesky``, ``eigh``, ``qr``, ``svd`` and ``lu`` (``CholeskyTangent``, ``EighTangent``,
``QRTangent``, ``SVDTangent``, ``LUTangent``), each the formula JAX's own ``jvp`` rule
evaluates (``jax/_src/lax/linalg.py``) as a lazy map with its transpose written out, never
the dense Jacobian.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array, lax

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import pytree
from matcalc_jax.operators.index_maps import Map, Static


def _t(m: Array) -> Array:
    return jnp.swapaxes(m, -1, -2)


def _triangle(m: Array, lower: bool, unit_diagonal: bool) -> Array:
    """The entries a triangular solve reads."""
    k = 1 if unit_diagonal else 0
    return jnp.tril(m, -k) if lower else jnp.triu(m, k)


@pytree(("x",), ("out_sizes", "in_sizes", "dtype_name", "params", "layout"))
class TriangularProduct(Map):
    """dA -> op(mask(dA)) X (left side) or X op(mask(dA)) (right side): how the matrix of a
    triangular solve moves its right-hand side; ``params`` are the solve's."""

    x: Array
    params: Static
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        p = self.params.value
        a = _triangle(tangent, p["lower"], p["unit_diagonal"])
        a = _t(a) if p["transpose_a"] else a
        return a @ self.x if p["left_side"] else self.x @ a

    def _apply_transpose(self, cotangent: Array) -> Array:
        p = self.params.value
        m = cotangent @ _t(self.x) if p["left_side"] else _t(self.x) @ cotangent
        m = _t(m) if p["transpose_a"] else m
        return _triangle(m, p["lower"], p["unit_diagonal"])


@pytree(("rows",), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class TridiagonalProduct(Map):
    """dv -> dv[..., i] rows[..., i, :]: how one diagonal of a tridiagonal solve's matrix
    moves dT X, ``rows`` being X with its rows moved to that diagonal's place (X[i - 1]
    for the diagonal below, X[i] for the diagonal, X[i + 1] above; zero past the ends, so
    ``dl[0]`` and ``du[-1]`` move nothing, as in JAX's rule). Transposed: the sum over the
    columns of C rows."""

    rows: Array
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        return tangent[..., None] * self.rows

    def _apply_transpose(self, cotangent: Array) -> Array:
        return jnp.sum(cotangent * self.rows, axis=-1)


def _phi(m: Array) -> Array:
    """The lower triangle with the diagonal halved (self-adjoint: its own transpose)."""
    n = m.shape[-1]
    return jnp.tril(m) / (1 + jnp.eye(n, dtype=m.dtype))


def _solve(factor: Array, m: Array, *, left: bool, transpose: bool) -> Array:
    return lax.linalg.triangular_solve(factor, m, left_side=left, lower=True, transpose_a=transpose)


@pytree(("factor",), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class CholeskyTangent(Map):
    """dA -> dL = L phi(L^{-1} dA L^{-T}) (JAX's rule); transposed:
    U -> L^{-T} phi(L^T U) L^{-1}."""

    factor: Array
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        factor = self.factor
        right = _solve(factor, tangent, left=False, transpose=True)  # dA L^{-T}
        return factor @ _phi(_solve(factor, right, left=True, transpose=False))

    def _apply_transpose(self, cotangent: Array) -> Array:
        factor = self.factor
        inner = _phi(_t(factor) @ cotangent)
        left = _solve(factor, inner, left=True, transpose=True)  # L^{-T} phi(L^T U)
        return _solve(factor, left, left=False, transpose=False)


@pytree(("vectors", "gaps"), ("out_sizes", "in_sizes", "dtype_name", "part", "layout"))
class EighTangent(Map):
    """dA -> dV = V (F o (V^T dA V)) (``part="vectors"``) or dw = diag(V^T dA V)
    (``part="values"``), as JAX's rule; ``gaps`` is F."""

    vectors: Array
    gaps: Array
    part: str
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        v = self.vectors
        rotated = _t(v) @ tangent @ v
        if self.part == "values":
            return jnp.diagonal(rotated, axis1=-2, axis2=-1)
        return v @ (self.gaps * rotated)

    def _apply_transpose(self, cotangent: Array) -> Array:
        v = self.vectors
        if self.part == "values":
            inner = cotangent[..., None, :] * jnp.eye(v.shape[-1], dtype=v.dtype)
        else:
            inner = self.gaps * (_t(v) @ cotangent)
        return v @ inner @ _t(v)


def _qr_tangents(q: Array, r: Array, dx: Array) -> tuple[Array, Array]:
    """dQ, dR of a thin QR (JAX's rule): B = dX R^{-1}, C = Q^T B, O = L - L^T with L the
    strict lower triangle of C; dQ = Q (O - C) + B, dR = (C - O) R."""
    b = lax.linalg.triangular_solve(r, dx, left_side=False, lower=False)
    c = _t(q) @ b
    lower = jnp.tril(c, -1)
    skew = lower - _t(lower)
    return q @ (skew - c) + b, (c - skew) @ r


def _qr_cotangent(q: Array, r: Array, uq: Array | None, ur: Array | None) -> Array:
    """The transpose of ``_qr_tangents``: the cotangent of dX from those of dQ and dR."""
    zeros = jnp.zeros(r.shape, r.dtype)
    d_c, d_skew, d_b = zeros, zeros, jnp.zeros(q.shape, q.dtype)
    if uq is not None:  # dQ = Q (O - C) + B
        d_b = d_b + uq
        d_skew = d_skew + _t(q) @ uq
        d_c = d_c - _t(q) @ uq
    if ur is not None:  # dR = (C - O) R
        d_c = d_c + ur @ _t(r)
        d_skew = d_skew - ur @ _t(r)
    d_c = d_c + jnp.tril(d_skew - _t(d_skew), -1)  # O = L - L^T, L = tril(C, -1)
    d_b = d_b + q @ d_c  # C = Q^T B
    return lax.linalg.triangular_solve(r, d_b, left_side=False, lower=False, transpose_a=True)


@pytree(("q", "r"), ("out_sizes", "in_sizes", "dtype_name", "part", "layout"))
class QRTangent(Map):
    """dX -> dQ (``part="q"``) or dR (``part="r"``) of a thin QR, as JAX's rule, and its
    transpose written out."""

    q: Array
    r: Array
    part: str
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        dq, dr = _qr_tangents(self.q, self.r, tangent)
        return dq if self.part == "q" else dr

    def _apply_transpose(self, cotangent: Array) -> Array:
        pair = (cotangent, None) if self.part == "q" else (None, cotangent)
        return _qr_cotangent(self.q, self.r, *pair)


def _svd_gaps(s: Array) -> Array:
    """F_ij = 1 / (s_j^2 - s_i^2) off the diagonal, 0 on it (JAX's rule), for each matrix
    of a stack."""
    row, column = s[..., None, :], s[..., :, None]
    eye = jnp.eye(s.shape[-1], dtype=s.dtype)
    return 1 / ((row + column) * (row - column) + eye) - eye


@pytree(("u", "s", "vt"), ("out_sizes", "in_sizes", "dtype_name", "part", "layout"))
class SVDTangent(Map):
    """dA -> ds, dU or dVt (``part``) of a thin SVD A = U diag(s) Vt, as JAX's rule:
    P = U^T dA V, ds = diag(P), dU = U (F o (P S + S P^T)) (+ (I - U U^T) dA V S^{-1} for a
    tall A), dV = V (F o (S P + P^T S)) (+ (I - V V^T) dA^T U S^{-1} for a wide A); the
    transposes written out. Of each matrix of a stack (leading axes: a batched ``svd``)."""

    u: Array
    s: Array
    vt: Array
    part: str
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        u, s, v = self.u, self.s, _t(self.vt)
        p = _t(u) @ tangent @ v
        if self.part == "s":
            return jnp.diagonal(p, axis1=-2, axis2=-1)
        gaps = _svd_gaps(s)
        m, n = tangent.shape[-2:]
        row = s[..., None, :]
        if self.part == "u":
            ps = p * row
            du = u @ (gaps * (ps + _t(ps)))
            if m > n:
                dav = tangent @ v
                du = du + (dav - u @ (_t(u) @ dav)) / row
            return du
        sp = s[..., :, None] * p
        dv = v @ (gaps * (sp + _t(sp)))
        if n > m:
            dau = _t(tangent) @ u
            dv = dv + (dau - v @ (_t(v) @ dau)) / row
        return _t(dv)

    def _apply_transpose(self, cotangent: Array) -> Array:
        u, s, v = self.u, self.s, _t(self.vt)
        m, n = self.in_shape[-2:]
        if self.part == "s":
            return u @ (cotangent[..., :, None] * _t(v))
        gaps = _svd_gaps(s)
        row = s[..., None, :]
        if self.part == "u":
            g = gaps * (_t(u) @ cotangent)
            d_p = (g + _t(g)) * row
            result = u @ d_p @ _t(v)
            if m > n:
                scaled = cotangent / row
                result = result + (scaled - u @ (_t(u) @ scaled)) @ _t(v)
            return result
        d_v = _t(cotangent)  # the cotangent of dV = dVt^T
        g = gaps * (_t(v) @ d_v)
        d_p = s[..., :, None] * (g + _t(g))
        result = u @ d_p @ _t(v)
        if n > m:
            scaled = d_v / row
            result = result + _t((scaled - v @ (_t(v) @ scaled)) @ _t(u))
        return result


@pytree(("lower", "upper", "permutation"), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class LUTangent(Map):
    """dA -> the tangent of the packed LU factors of a square A (P A = L U), as JAX's rule:
    X = P dA, Y = L^{-1} X U^{-1}, dLU = L tril(Y, -1) + triu(Y) U; its transpose
    written out (the permutation's transpose puts the rows back). Of each matrix of a
    stack (leading axes: a batched ``lu``)."""

    lower: Array
    upper: Array
    permutation: Array
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        lower, upper = self.lower, self.upper
        x = jnp.take_along_axis(tangent, self.permutation[..., :, None], axis=-2)
        y = lax.linalg.triangular_solve(lower, x, left_side=True, lower=True, unit_diagonal=True)
        y = lax.linalg.triangular_solve(upper, y, left_side=False, lower=False)
        return lower @ jnp.tril(y, -1) + jnp.triu(y) @ upper

    def _apply_transpose(self, cotangent: Array) -> Array:
        lower, upper = self.lower, self.upper
        d_y = jnp.tril(_t(lower) @ cotangent, -1) + jnp.triu(cotangent @ _t(upper))
        d_y = lax.linalg.triangular_solve(
            upper, d_y, left_side=False, lower=False, transpose_a=True
        )
        d_x = lax.linalg.triangular_solve(
            lower, d_y, left_side=True, lower=True, transpose_a=True, unit_diagonal=True
        )
        back = jnp.argsort(self.permutation, axis=-1)  # the inverse permutation
        return jnp.take_along_axis(d_x, back[..., :, None], axis=-2)
