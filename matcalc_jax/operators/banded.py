"""Banded: a square map on vectors with a few non-zero diagonals, sum_k shift_{o_k}(diag(d_k)).

Chained objectives (Rosenbrock's ``x[1:] - x[:-1]**2``, finite-difference smoothness
penalties) have Hessians that couple only neighbours: a handful of diagonals at fixed
offsets. ``Banded`` stores those diagonals, O(k n) for k offsets, never the n x n matrix.

Entry (i, i + o_k) is ``values[k, i]``; positions whose column i + o_k falls outside the
matrix hold 0. ``band_of`` reads a band from an operator built of diagonals, slices and
paddings (what the transform derives for such programs), and ``banded`` turns it into a
``Banded`` operator (a ``Diagonal`` when the only offset is 0).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import (
    Composition,
    JacobianOperator,
    Scaled,
    Sum,
    check_tangent,
    pytree,
)
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.identity import Identity
from matcalc_jax.operators.index_maps import Embed, Restrict
from matcalc_jax.operators.zero import Zero

#: The most diagonals a band keeps; a map with more is left as it is.
MAX_OFFSETS = 32

#: A band: (out size, in size, {offset: values of the out size}).
Band = tuple[int, int, dict[int, Array]]


def shift(v: Array, offset: int) -> Array:
    """w with w[i] = v[i + offset], 0 where i + offset is outside v."""
    n = v.shape[0]
    if offset == 0:
        return v
    if abs(offset) >= n:
        return jnp.zeros_like(v)
    zeros = jnp.zeros((abs(offset),), v.dtype)
    if offset > 0:
        return jnp.concatenate([v[offset:], zeros])
    return jnp.concatenate([zeros, v[:offset]])


@pytree(("values",), ("offsets", "layout"))
class Banded(JacobianOperator):
    """sum_k shift_{o_k}(diag(d_k)) on vectors of length n: entry (i, i + offsets[k]) is
    ``values[k, i]``. ``mv`` and ``vm`` cost O(k n), ``diagonal`` and ``trace`` are read
    from offset 0; ``to_dense`` writes the k n entries into an n x n array; ``solve`` and
    ``logdet`` use that dense matrix (a banded factorization is not implemented)."""

    values: Array  # (k, n)
    offsets: tuple[int, ...]
    layout: Layout = "numerator"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.values.shape[1],)

    in_shape = out_shape

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        terms = [d * shift(tangent, o) for d, o in zip(self.values, self.offsets, strict=True)]
        return sum(terms[1:], terms[0])

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = check_tangent(self, "vm", cotangent, self.out_shape)
        # (u^T H)_j = sum_k u_{j - o_k} d_k[j - o_k]
        terms = [shift(cotangent * d, -o) for d, o in zip(self.values, self.offsets, strict=True)]
        return sum(terms[1:], terms[0])

    def _numerator(self) -> Array:
        n = self.values.shape[1]
        rows, cols, picks = [], [], []
        for k, o in enumerate(self.offsets):
            i = np.arange(max(0, -o), min(n, n - o))
            rows.append(i)
            cols.append(i + o)
            picks.append(k * n + i)
        rows, cols, picks = (np.concatenate(a) for a in (rows, cols, picks))
        entries = self.values.reshape(-1)[picks]
        return jnp.zeros((n, n), self.dtype).at[rows, cols].set(entries)

    def transpose(self) -> JacobianOperator:
        # H^T[i, i - o] = H[i - o, i] = d[i - o]
        values = jnp.stack([shift(d, -o) for d, o in zip(self.values, self.offsets, strict=True)])
        return Banded(values, tuple(-o for o in self.offsets), self.layout)

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        return Banded(jnp.asarray(scale) * self.values, self.offsets, self.layout)

    def diagonal(self) -> Array:
        if 0 not in self.offsets:
            return jnp.zeros(self.in_shape, self.dtype)
        return self.values[self.offsets.index(0)]

    def trace(self) -> Array:
        return jnp.sum(self.diagonal())

    def describe(self) -> str:
        return "offsets " + ",".join(str(o) for o in self.offsets)


def _one_dimensional(op: JacobianOperator) -> bool:
    return len(op.out_shape) == 1 and len(op.in_shape) == 1


def band_of(op: JacobianOperator, memo: dict[int, tuple] | None = None) -> Band | None:
    """``op`` as a band, when it is built of diagonals, identities, contiguous slices and
    paddings of vectors by sums, scales and compositions; else ``None``.

    ``memo`` (by node) keeps each node's band across calls: a graph whose nodes are shared
    is read once per node, not once per path (a Hessian's sums, asked one by one by
    ``simplify``, walked 13 million paths of a graph of a few hundred nodes)."""
    memo = {} if memo is None else memo
    kept = memo.get(id(op))
    if kept is None or kept[0] is not op:
        kept = memo[id(op)] = (op, _band(op, memo))  # op held: its id stays its own
    return kept[1]


def _band(op: JacobianOperator, memo: dict[int, tuple]) -> Band | None:
    if not _one_dimensional(op):
        return None
    (m,), (n,) = op.out_shape, op.in_shape
    if isinstance(op, Diagonal):
        return m, n, {0: op.values}
    if isinstance(op, Banded):
        return m, n, dict(zip(op.offsets, op.values, strict=True))
    if isinstance(op, Identity):
        return m, n, {0: np.ones((m,), op.dtype)}
    if isinstance(op, Zero):
        return m, n, {}
    if isinstance(op, Restrict) and op.config[0][2] == 0:  # out[i] = in[i + lo]
        return m, n, {op.config[0][0]: np.ones((m,), op.dtype)}
    if isinstance(op, Embed) and op.config[0][2] == 0:  # out[i] = in[i - lo]
        lo = op.config[0][0]
        inside = (np.arange(m) - lo >= 0) & (np.arange(m) - lo < n)
        return m, n, {-lo: inside.astype(op.dtype)}
    if isinstance(op, Scaled) and jnp.ndim(op.scale) == 0:
        band = band_of(op.operator, memo)
        if band is None:
            return None
        return m, n, {o: op.scale * d for o, d in band[2].items()}
    if isinstance(op, Sum):
        merged: dict[int, Array] = {}
        for term in op.terms:
            band = band_of(term, memo)
            if band is None:
                return None
            for o, d in band[2].items():
                merged[o] = merged[o] + d if o in merged else d
        return (m, n, merged) if len(merged) <= MAX_OFFSETS else None
    if isinstance(op, Composition):
        outer = band_of(op.outer, memo)
        inner = None if outer is None else band_of(op.inner, memo)
        if outer is None or inner is None:
            return None
        composed: dict[int, Array] = {}
        for a, da in outer[2].items():
            for b, db in inner[2].items():
                # (A B)[i, i + a + b] = A[i, i + a] B[i + a, i + a + b]
                term = da * _resize(shift(_resize(db, max(m, db.shape[0])), a), m)
                composed[a + b] = composed[a + b] + term if a + b in composed else term
        return (m, n, composed) if len(composed) <= MAX_OFFSETS else None
    return None


def _resize(v: Array, size: int) -> Array:
    """v cut or padded with zeros to ``size`` entries."""
    if v.shape[0] >= size:
        return v[:size]
    return jnp.concatenate([v, jnp.zeros((size - v.shape[0],), v.dtype)])


def banded(op: JacobianOperator, memo: dict[int, tuple] | None = None) -> JacobianOperator | None:
    """A square map on vectors as ``Banded`` (or ``Diagonal`` for one offset 0) when
    ``band_of`` reads it (with ``memo``); else ``None``."""
    if not _one_dimensional(op) or op.out_shape != op.in_shape:
        return None
    band = band_of(op, memo)
    if band is None:
        return None
    _, n, diagonals = band
    offsets = tuple(sorted(o for o in diagonals if -n < o < n))
    if not offsets:
        return Zero(op.out_shape, op.in_shape, jnp.dtype(op.dtype).name)
    if offsets == (0,):
        return Diagonal(diagonals[0].astype(op.dtype), op.layout)
    values = jnp.stack([jnp.broadcast_to(diagonals[o], (n,)).astype(op.dtype) for o in offsets])
    return Banded(values, offsets, op.layout)
