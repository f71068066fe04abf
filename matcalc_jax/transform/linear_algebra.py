"""Rules for the factorizations and solves of a matrix that depends on the argument:
``triangular_solve`` in its matrix, ``lu``, ``qr``, ``svd``, ``cholesky`` and ``eigh``; the
matrix-calculus rules JAX's own ``jvp`` rules evaluate (``jax/_src/lax/linalg.py``), each a
lazy map with its transpose written out, never the dense Jacobian.

=====================  =====================================================================
primitive              the Jacobian in the matrix (tangent dA)
=====================  =====================================================================
``triangular_solve``   X = op(A)^{-1} B:  dX = -op(A)^{-1} op(mask(dA)) X  (left side), the
                       mask the triangle the solve reads; with B's part, the existing solve
``qr`` (thin)          dQ = Q (O - C) + B, dR = (C - O) R with B = dX R^{-1}, C = Q^T B,
                       O = L - L^T, L the strict lower triangle of C
``cholesky``           A = L L^T:  dL = L phi(L^{-1} dA L^{-T}), phi the lower triangle with
                       its diagonal halved
``eigh``               A = V diag(w) V^T:  dw = diag(V^T dA V),
                       dV = V (F o (V^T dA V)), F_ij = 1 / (w_j - w_i) off the diagonal
                       (degenerate eigenvalues as JAX: an infinite F)
=====================  =====================================================================
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array, lax

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import compose, pytree
from matcalc_jax.transform import maps
from matcalc_jax.transform.interpreter import NoRule
from matcalc_jax.transform.registry import pointwise, total


def _t(m: Array) -> Array:
    return jnp.swapaxes(m, -1, -2)


def _triangle(m: Array, lower: bool, unit_diagonal: bool) -> Array:
    """The entries a triangular solve reads."""
    k = 1 if unit_diagonal else 0
    return jnp.tril(m, -k) if lower else jnp.triu(m, k)


@pytree(("x",), ("out_sizes", "in_sizes", "dtype_name", "params", "layout"))
class TriangularProduct(maps._Map):
    """dA -> op(mask(dA)) X (left side) or X op(mask(dA)) (right side): how the matrix of a
    triangular solve moves its right-hand side; ``params`` are the solve's."""

    x: Array
    params: maps.Static
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


@pointwise("triangular_solve", linear=lambda carried: not carried[0])
def _triangular_solve(ctx, eqn, ins, ops, outs):
    a, b = ins
    y = outs[0]
    if eqn.params.get("conjugate_a") and jnp.iscomplexobj(a):
        raise NoRule("with a conjugated complex matrix")
    params = maps.Static(tuple(sorted(eqn.params.items())))
    solve = maps.TriangularSolve(tuple(y.shape), tuple(b.shape), y.dtype.name, a, params)
    terms = [None if ops[1] is None else compose(solve, ops[1])]
    if ops[0] is not None:  # dX = -op(A)^{-1} (op(dA) X) (left), -(X op(dA)) op(A)^{-1} (right)
        moved = TriangularProduct(
            tuple(y.shape), tuple(a.shape), y.dtype.name, y, maps.Static(dict(eqn.params))
        )
        terms.append(compose(solve, compose(moved, ops[0])).scaled(jnp.asarray(-1, y.dtype)))
    return [total(terms)]


def _phi(m: Array) -> Array:
    """The lower triangle with the diagonal halved (self-adjoint: its own transpose)."""
    n = m.shape[-1]
    return jnp.tril(m) / (1 + jnp.eye(n, dtype=m.dtype))


def _solve(factor: Array, m: Array, *, left: bool, transpose: bool) -> Array:
    return lax.linalg.triangular_solve(factor, m, left_side=left, lower=True, transpose_a=transpose)


@pytree(("factor",), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class CholeskyTangent(maps._Map):
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


@pointwise("cholesky")
def _cholesky(ctx, eqn, ins, ops, outs):
    factor = jnp.tril(outs[0])
    shape = tuple(factor.shape)
    return [compose(CholeskyTangent(shape, shape, factor.dtype.name, factor), ops[0])]


@pytree(("vectors", "gaps"), ("out_sizes", "in_sizes", "dtype_name", "part", "layout"))
class EighTangent(maps._Map):
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


@pointwise("eigh")
def _eigh(ctx, eqn, ins, ops, outs):
    a = ins[0]
    v, w = outs
    n = a.shape[-1]
    subset = eqn.params.get("subset_by_index")
    if not (subset is None or tuple(subset) == (0, n)):
        raise NoRule("for a subset of the eigenvalues (JAX defines no derivative)")
    eye = jnp.eye(n, dtype=a.dtype)
    gaps = lax.integer_pow(eye + w[..., None, :] - w[..., None], -1) - eye
    maps_ = [
        EighTangent(tuple(v.shape), tuple(a.shape), v.dtype.name, v, gaps, "vectors"),
        EighTangent(tuple(w.shape), tuple(a.shape), w.dtype.name, v, gaps, "values"),
    ]
    return [compose(m, ops[0]) for m in maps_]


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
class QRTangent(maps._Map):
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


@pointwise("qr")
def _qr(ctx, eqn, ins, ops, outs):
    x = ins[0]
    q, r = outs[:2]
    m, n = x.shape[-2:]
    if eqn.params.get("pivoting") or eqn.params.get("full_matrices") or m < n or x.ndim != 2:
        raise NoRule("other than a thin QR of a tall or square matrix without pivoting")
    parts = [
        QRTangent(tuple(y.shape), tuple(x.shape), y.dtype.name, q, r, part)
        for y, part in ((q, "q"), (r, "r"))
    ]
    return [compose(part, ops[0]) for part in parts]


def _svd_gaps(s: Array) -> Array:
    """F_ij = 1 / (s_j^2 - s_i^2) off the diagonal, 0 on it (JAX's rule)."""
    row = s[None, :]
    eye = jnp.eye(s.shape[-1], dtype=s.dtype)
    return 1 / ((row + row.T) * (row - row.T) + eye) - eye


@pytree(("u", "s", "vt"), ("out_sizes", "in_sizes", "dtype_name", "part", "layout"))
class SVDTangent(maps._Map):
    """dA -> ds, dU or dVt (``part``) of a thin SVD A = U diag(s) Vt, as JAX's rule:
    P = U^T dA V, ds = diag(P), dU = U (F o (P S + S P^T)) (+ (I - U U^T) dA V S^{-1} for a
    tall A), dV = V (F o (S P + P^T S)) (+ (I - V V^T) dA^T U S^{-1} for a wide A); the
    transposes written out."""

    u: Array
    s: Array
    vt: Array
    part: str
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        u, s, v = self.u, self.s, _t(self.vt)
        p = _t(u) @ tangent @ v
        if self.part == "s":
            return jnp.diagonal(p)
        gaps = _svd_gaps(s)
        m, n = tangent.shape
        if self.part == "u":
            ps = p * s[None, :]
            du = u @ (gaps * (ps + _t(ps)))
            if m > n:
                dav = tangent @ v
                du = du + (dav - u @ (_t(u) @ dav)) / s[None, :]
            return du
        sp = s[:, None] * p
        dv = v @ (gaps * (sp + _t(sp)))
        if n > m:
            dau = _t(tangent) @ u
            dv = dv + (dau - v @ (_t(v) @ dau)) / s[None, :]
        return _t(dv)

    def _apply_transpose(self, cotangent: Array) -> Array:
        u, s, v = self.u, self.s, _t(self.vt)
        m, n = self.in_shape
        if self.part == "s":
            return u @ (cotangent[:, None] * _t(v))
        gaps = _svd_gaps(s)
        if self.part == "u":
            g = gaps * (_t(u) @ cotangent)
            d_p = (g + _t(g)) * s[None, :]
            result = u @ d_p @ _t(v)
            if m > n:
                scaled = cotangent / s[None, :]
                result = result + (scaled - u @ (_t(u) @ scaled)) @ _t(v)
            return result
        d_v = _t(cotangent)  # the cotangent of dV = dVt^T
        g = gaps * (_t(v) @ d_v)
        d_p = s[:, None] * (g + _t(g))
        result = u @ d_p @ _t(v)
        if n > m:
            scaled = d_v / s[None, :]
            result = result + _t((scaled - v @ (_t(v) @ scaled)) @ _t(u))
        return result


@pointwise("svd")
def _svd(ctx, eqn, ins, ops, outs):
    a = ins[0]
    m, n = a.shape[-2:]
    if a.ndim != 2 or (eqn.params.get("full_matrices") and m != n and len(outs) > 1):
        raise NoRule("other than a thin SVD of one matrix")
    subset = eqn.params.get("subset_by_index")
    if subset is not None and tuple(subset) != (0, min(m, n)):
        raise NoRule("for a subset of the singular values")
    if len(outs) == 1:  # singular values only
        s = outs[0]
        u, _, vt = jnp.linalg.svd(a, full_matrices=False)  # (U, s, Vt), as jnp orders them
        parts = ((s, "s"),)
    else:
        s, u, vt = outs
        parts = ((s, "s"), (u, "u"), (vt, "vt"))
    return [
        compose(SVDTangent(tuple(y.shape), tuple(a.shape), y.dtype.name, u, s, vt, part), ops[0])
        for y, part in parts
    ]


@pytree(("lower", "upper", "permutation"), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class LUTangent(maps._Map):
    """dA -> the tangent of the packed LU factors of a square A (P A = L U), as JAX's rule:
    X = P dA, Y = L^{-1} X U^{-1}, dLU = L tril(Y, -1) + triu(Y) U; its transpose
    written out (the permutation's transpose puts the rows back)."""

    lower: Array
    upper: Array
    permutation: Array
    layout: Layout = "numerator"

    def _apply(self, tangent: Array) -> Array:
        lower, upper = self.lower, self.upper
        x = tangent[self.permutation]
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
        return jnp.zeros_like(d_x).at[self.permutation].set(d_x)


@pointwise("lu")
def _lu(ctx, eqn, ins, ops, outs):
    a = ins[0]
    packed, _, permutation = outs
    m, n = a.shape[-2:]
    if a.ndim != 2 or m != n:
        raise NoRule("of a rectangular or batched matrix")
    lower = jnp.tril(packed, -1) + jnp.eye(n, dtype=packed.dtype)
    upper = jnp.triu(packed)
    shape = tuple(packed.shape)
    tangent = LUTangent(shape, tuple(a.shape), packed.dtype.name, lower, upper, permutation)
    return [compose(tangent, ops[0]), None, None]
