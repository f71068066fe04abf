"""Rules for the factorizations and solves of a matrix that depends on the argument:
``triangular_solve`` and ``tridiagonal_solve`` in their matrices, ``lu``, ``qr``, ``svd``,
``cholesky`` and ``eigh``; the
matrix-calculus rules JAX's own ``jvp`` rules evaluate (``jax/_src/lax/linalg.py``), each a
lazy map with its transpose written out (``matcalc_jax.operators.matrix_functions``), never
the dense Jacobian.

=====================  =====================================================================
primitive              the Jacobian in the matrix (tangent dA)
=====================  =====================================================================
``triangular_solve``   X = op(A)^{-1} B:  dX = -op(A)^{-1} op(mask(dA)) X  (left side), the
                       mask the triangle the solve reads; with B's part, the existing solve
``tridiagonal_solve``  X = T^{-1} B:  dX = T^{-1} (dB - dT X), dT X a sum over the three
                       diagonals of dv_i X_{i+k} (k = -1, 0, 1)
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
from jax import lax

from matcalc_jax.operators.base import compose
from matcalc_jax.operators.index_maps import Static
from matcalc_jax.operators.matrix_functions import (
    CholeskyTangent,
    EighTangent,
    LUTangent,
    QRTangent,
    SVDTangent,
    TriangularProduct,
    TridiagonalProduct,
)
from matcalc_jax.operators.solves import TriangularSolve, TridiagonalSolve
from matcalc_jax.transform.interpreter import NoRule
from matcalc_jax.transform.registry import pointwise, total


@pointwise("triangular_solve", linear=lambda carried: not carried[0])
def _triangular_solve(ctx, eqn, ins, ops, outs):
    a, b = ins
    y = outs[0]
    if eqn.params.get("conjugate_a") and jnp.iscomplexobj(a):
        raise NoRule("with a conjugated complex matrix")
    params = Static(tuple(sorted(eqn.params.items())))
    solve = TriangularSolve(tuple(y.shape), tuple(b.shape), y.dtype.name, a, params)
    terms = [None if ops[1] is None else compose(solve, ops[1])]
    if ops[0] is not None:  # dX = -op(A)^{-1} (op(dA) X) (left), -(X op(dA)) op(A)^{-1} (right)
        moved = TriangularProduct(
            tuple(y.shape), tuple(a.shape), y.dtype.name, y, Static(dict(eqn.params))
        )
        terms.append(compose(solve, compose(moved, ops[0])).scaled(jnp.asarray(-1, y.dtype)))
    return [total(terms)]


@pointwise("tridiagonal_solve", linear=lambda carried: not any(carried[:3]))
def _tridiagonal_solve(ctx, eqn, ins, ops, outs):
    dl, d, du, b = ins
    x = outs[0]
    params = Static(tuple(sorted(eqn.params.items())))
    solve = TridiagonalSolve(tuple(x.shape), tuple(b.shape), x.dtype.name, dl, d, du, params)
    terms = [None if ops[3] is None else compose(solve, ops[3])]
    zero = jnp.zeros_like(x[..., :1, :])
    moved = (  # X's rows where each diagonal meets them: X[i - 1], X[i], X[i + 1]
        jnp.concatenate([zero, x[..., :-1, :]], axis=-2),
        x,
        jnp.concatenate([x[..., 1:, :], zero], axis=-2),
    )
    for diagonal, op, rows in zip(ins[:3], ops[:3], moved, strict=True):
        if op is not None:  # dX = -T^{-1} (dT X)
            product = TridiagonalProduct(tuple(x.shape), tuple(diagonal.shape), x.dtype.name, rows)
            terms.append(compose(solve, compose(product, op)).scaled(jnp.asarray(-1, x.dtype)))
    return [total(terms)]


@pointwise("cholesky")
def _cholesky(ctx, eqn, ins, ops, outs):
    factor = jnp.tril(outs[0])
    shape = tuple(factor.shape)
    return [compose(CholeskyTangent(shape, shape, factor.dtype.name, factor), ops[0])]


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


@pointwise("qr")
def _qr(ctx, eqn, ins, ops, outs):
    x = ins[0]
    q, r = outs[:2]
    m, n = x.shape[-2:]
    if eqn.params.get("pivoting") or eqn.params.get("full_matrices") or m < n:
        raise NoRule("other than a thin QR of a tall or square matrix without pivoting")
    parts = [
        QRTangent(tuple(y.shape), tuple(x.shape), y.dtype.name, q, r, part)
        for y, part in ((q, "q"), (r, "r"))
    ]
    return [compose(part, ops[0]) for part in parts]


@pointwise("svd")
def _svd(ctx, eqn, ins, ops, outs):
    a = ins[0]
    m, n = a.shape[-2:]
    if eqn.params.get("full_matrices") and m != n and len(outs) > 1:
        raise NoRule("other than a thin SVD")
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


@pointwise("lu")
def _lu(ctx, eqn, ins, ops, outs):
    a = ins[0]
    packed, _, permutation = outs
    m, n = a.shape[-2:]
    if m != n:
        raise NoRule("of a rectangular matrix")
    lower = jnp.tril(packed, -1) + jnp.eye(n, dtype=packed.dtype)
    upper = jnp.triu(packed)
    shape = tuple(packed.shape)
    tangent = LUTangent(shape, tuple(a.shape), packed.dtype.name, lower, upper, permutation)
    return [compose(tangent, ops[0]), None, None]
