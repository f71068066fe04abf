"""Contraction: a linear map written as one Einstein sum with a constant core.

``Contraction(core, (i, c, o))`` maps a tangent v with axes labelled ``i`` to
``einsum(f"{i},{c}->{o}", v, core)``. One type covers every linear map that only contracts,
broadcasts, reduces and permutes axes against a constant:

- ``dot_general`` with one constant operand (``A x``, ``x A``, ``A X``, ``X B``, batched
  products): the constant is the core;
- ``transpose``, ``reduce_sum``, ``broadcast_in_dim``, ``squeeze``: no core at all, only
  labels (a letter of ``i`` missing from ``o`` is summed, a letter of ``o`` missing from
  ``i`` and ``c`` is broadcast);
- ``diag(d)``: every letter in all three strings.

A letter in both ``i`` and ``o`` is an axis the map does not mix: the Jacobian is
block-diagonal along it (an identity factor when the core lacks it, a batch of blocks when
the core has it). Two contractions compose into one when that costs at most one pass over
the larger core and stores less (``transpose`` after ``A x``, a sum after ``diag(d)``,
``x^T A``; see ``_worth_merging``); ``X -> A X`` and ``X -> X B`` make a
``Kronecker``; a rank-one contraction (a sum, a broadcast) becomes a ``LowRank``;
otherwise the composition stays lazy and stores only the factors, so ``diag(d) W`` keeps d
and W.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import (
    Composition,
    JacobianOperator,
    ShapedOperator,
    add,
    addition_rule,
    check_tangent,
    compose,
    composition_rule,
    pytree,
    size_of,
)
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.gram import WeightedGram
from matcalc_jax.operators.kronecker import Kronecker
from matcalc_jax.operators.low_rank import LowRank

LETTERS = string.ascii_letters
Spec = tuple[str, str, str]


def einsum(operands: list[tuple[Array, str]], out: str, sizes: dict[str, int], dtype: Any) -> Array:
    """``einsum`` of labelled operands into the labels ``out``; a label of ``out`` that no
    operand has is broadcast (``jnp.einsum`` cannot create an axis)."""
    present = {letter for _, labels in operands for letter in labels}
    kept = "".join(letter for letter in out if letter in present)
    if not operands:
        result = jnp.ones((), dtype)
    elif len(operands) == 1 and operands[0][1] == kept:
        result = operands[0][0]
    else:
        formula = ",".join(labels for _, labels in operands) + "->" + kept
        result = jnp.einsum(formula, *(array for array, _ in operands))
    if kept != out:
        positions = [k for k, letter in enumerate(out) if letter not in present]
        result = jnp.expand_dims(result, positions)
        result = jnp.broadcast_to(result, tuple(sizes[letter] for letter in out))
    return result.astype(dtype)


@pytree(("core",), ("spec", "in_sizes", "out_sizes", "dtype_name", "layout"))
class Contraction(ShapedOperator):
    """v -> einsum(v, core) with labels ``spec = (in, core, out)``; ``core`` may be ``None``
    (a map that only permutes, sums and broadcasts axes). See the module docstring."""

    core: Array | None
    spec: Spec
    layout: Layout = "numerator"

    @property
    def sizes(self) -> dict[str, int]:
        ins, core, outs = self.spec
        sizes = dict(zip(ins, self.in_sizes, strict=True))
        sizes |= dict(zip(outs, self.out_sizes, strict=True))
        if self.core is not None:
            sizes |= dict(zip(core, self.core.shape, strict=True))
        return sizes

    def _operands(self, array: Array, labels: str) -> list[tuple[Array, str]]:
        core = [] if self.core is None else [(self.core, self.spec[1])]
        return [(array, labels), *core]

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        ins, _, outs = self.spec
        return einsum(self._operands(tangent, ins), outs, self.sizes, self._image(tangent))

    def vm(self, cotangent: ArrayLike) -> Array:
        cotangent = check_tangent(self, "vm", cotangent, self.out_shape)
        ins, _, outs = self.spec
        return einsum(self._operands(cotangent, outs), ins, self.sizes, self._image(cotangent))

    def _image(self, vector: Array) -> Any:
        """The dtype of a product: the map's, complex for a complex vector (a real map
        applied to complex values, as a dense matrix would be; casting back to the real
        dtype dropped the imaginary part)."""
        if jnp.iscomplexobj(vector) and not jnp.issubdtype(self.dtype, jnp.complexfloating):
            return jnp.result_type(self.dtype, vector.dtype)
        return self.dtype

    def _numerator(self) -> Array:
        ins, core, outs = self.spec
        sizes = self.sizes
        free = iter(letter for letter in LETTERS if letter not in ins + core + outs)
        operands = [] if self.core is None else [(self.core, core)]
        in_labels = ""
        for letter in ins:
            if letter in outs:  # not mixed along this axis: a Kronecker delta
                twin = next(free)
                sizes[twin] = sizes[letter]
                operands.append((jnp.eye(sizes[letter], dtype=self.dtype), letter + twin))
                in_labels += twin
            else:
                in_labels += letter
        return einsum(operands, outs + in_labels, sizes, self.dtype)

    def transpose(self) -> JacobianOperator:
        ins, core, outs = self.spec
        return Contraction(
            self.in_sizes, self.out_sizes, self.dtype_name, self.core, (outs, core, ins),
            self.layout,
        )  # fmt: skip

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        """c J: a core no larger than a tangent absorbs the scale (one cheap pass); a
        matrix core stays as it is under a lazy ``Scaled``, so that building the scale costs
        no pass over it and the core stays the object the program holds (X^T D X is then
        recognized as a ``WeightedGram``)."""
        if self.core is None or self.core.size > max(
            size_of(self.in_shape), size_of(self.out_shape)
        ):
            return super().scaled(scale)
        core = jnp.asarray(scale, self.dtype) * self.core
        return dataclasses.replace(self, core=core)

    def diagonal(self) -> Array:
        self._check_square("diagonal")
        ins, core, outs = self.spec
        if self.core is None or any(
            letter in outs and outs.index(letter) != ins.index(letter) for letter in ins
        ):
            return super().diagonal()
        # The diagonal pairs output axis k with input axis k: label both alike and sum.
        sizes = self.sizes
        rename = dict(zip(outs, ins, strict=True))
        core_labels = "".join(rename.get(letter, letter) for letter in core)
        return einsum([(self.core, core_labels)], ins, sizes, self.dtype).reshape(self.in_shape)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        ins, _, outs = self.spec
        return frozenset(
            (outs.index(letter), ins.index(letter)) for letter in ins if letter in outs
        )

    def describe(self) -> str:
        ins, core, outs = self.spec
        return f"{ins},{core}->{outs}" if self.core is not None else f"{ins}->{outs}"


def contraction(
    core: Array | None,
    spec: Spec,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    dtype: Any,
    layout: Layout = "numerator",
) -> Contraction:
    """A ``Contraction`` with its labels renamed to a canonical order (``a``, ``b``, ...
    as they first appear in in, core, out), so equal maps have equal labels."""
    ins, core_labels, outs = spec
    order = dict.fromkeys(ins + core_labels + outs)
    rename = dict(zip(order, LETTERS, strict=False))
    ins, core_labels, outs = ("".join(rename[c] for c in s) for s in (ins, core_labels, outs))
    return Contraction(
        tuple(out_shape), tuple(in_shape), jnp.dtype(dtype).name, core, (ins, core_labels, outs),
        layout,
    )  # fmt: skip


def from_diagonal(op: Diagonal) -> Contraction:
    """diag(d) as a contraction: every label in the input, the core and the output."""
    labels = LETTERS[: op.values.ndim]
    return contraction(
        op.values, (labels, labels, labels), op.in_shape, op.out_shape, op.dtype, op.layout
    )


def _core_size(op: Contraction) -> int:
    return 0 if op.core is None else size_of(op.core.shape)


def _worth_merging(
    inner: Contraction, outer: Contraction, keep: str, letters: str, sizes: dict[str, int]
) -> bool:
    """Merge two cores only when it costs at most one pass over the larger and stores less:
    a relabelling (one side has no core), a row times a matrix (``x^T A``), a diagonal times
    a diagonal. A diagonal times a dense factor, or two dense factors, stay apart: building
    ``diag(d) W`` costs a pass over W that the lazy form never pays (its ``mv`` is the
    program's own ``W v`` then ``d *``), and ``W2 W1`` costs a matrix product."""
    new = size_of(tuple(sizes[c] for c in keep))
    sizes_in = (_core_size(inner), _core_size(outer))
    if inner.core is None or outer.core is None:
        return new <= sum(sizes_in)
    work = size_of(tuple(sizes[c] for c in dict.fromkeys(letters)))
    return work <= max(sizes_in) and (new < max(sizes_in) or new <= min(sizes_in))


def merge(outer: Contraction, inner: Contraction) -> Contraction | None:
    """outer o inner as one contraction, or ``None`` when keeping them apart is cheaper (see
    ``_worth_merging``)."""
    x_labels, inner_core, y_labels = inner.spec
    outer_y, outer_core, outer_z = outer.spec
    sizes = inner.sizes
    used = set(x_labels + inner_core + y_labels)
    free = iter(letter for letter in LETTERS if letter not in used)
    rename = dict(zip(outer_y, y_labels, strict=True))
    for letter in outer_core + outer_z:
        if letter not in rename:
            rename[letter] = next(free)
    outer_core = "".join(rename[c] for c in outer_core)
    z_labels = "".join(rename[c] for c in outer_z)
    for letter, size in outer.sizes.items():
        sizes[rename[letter]] = size
    operands = []
    if inner.core is not None:
        operands.append((inner.core, inner_core))
    if outer.core is not None:
        operands.append((outer.core, outer_core))
    labelled = set(x_labels + inner_core + outer_core + z_labels)
    # An intermediate axis the inner map broadcasts and the outer map sums: a factor of its
    # size, which a plain einsum would drop.
    factor = size_of(tuple(sizes[c] for c in y_labels if c not in labelled))
    keep = "".join(dict.fromkeys(c for c in inner_core + outer_core if c in x_labels + z_labels))
    if not _worth_merging(inner, outer, keep, inner_core + outer_core, sizes):
        return None
    dtype = jnp.result_type(inner.dtype, outer.dtype)
    core = None
    if operands or factor != 1:
        core = einsum(operands, keep, sizes, dtype)
        if factor != 1:
            core = core * jnp.asarray(factor, dtype)
    return contraction(
        core, (x_labels, keep, z_labels), inner.in_shape, outer.out_shape, dtype, outer.layout
    )


@composition_rule(Contraction, Contraction)
@composition_rule(Contraction, Diagonal)
@composition_rule(Diagonal, Contraction)
def _merge_or_kronecker(
    outer: JacobianOperator, inner: JacobianOperator
) -> JacobianOperator | None:
    """One contraction if the cores allow, else a Kronecker map; ``None`` passes to the
    rules below (a rank-one side becomes low rank), then to the lazy composition."""
    if isinstance(outer, Contraction) and isinstance(inner, Contraction):
        gram = weighted_gram(outer, None, inner)
        if gram is not None:
            return gram
    as_contraction = [
        from_diagonal(op) if isinstance(op, Diagonal) else op for op in (outer, inner)
    ]
    merged = merge(*as_contraction)
    return merged if merged is not None else _kronecker_product(*as_contraction)


def _canonical(spec: Spec) -> Spec:
    rename = dict(zip(dict.fromkeys("".join(spec)), LETTERS, strict=False))
    ins, core, outs = ("".join(rename[c] for c in part) for part in spec)
    return ins, core, outs


def weighted_gram(
    outer: Contraction, middle: Diagonal | None, inner: Contraction
) -> WeightedGram | None:
    """K^T diag(w) K as ``WeightedGram(X, w)`` when ``inner`` is v -> X v for a matrix X
    (its core) and ``outer`` is u -> X^T u with the same core; ``middle`` None is w = 1.
    The Hessian of a loss of X w reaches this form: its gradient is X^T l'(X w)."""
    ins, core, outs = inner.spec
    if inner.core is None or outer.core is not inner.core:
        return None
    if len(ins) != 1 or len(outs) != 1 or sorted(core) != sorted(ins + outs):
        return None
    if _canonical(outer.spec) != _canonical((outs, core, ins)):
        return None
    if middle is not None and middle.values.shape != tuple(inner.out_shape):
        return None
    X = einsum([(inner.core, core)], outs + ins, inner.sizes, inner.dtype)
    weights = jnp.ones(inner.out_shape, X.dtype) if middle is None else middle.values
    return WeightedGram(X, weights, outer.layout)


@composition_rule(Contraction, JacobianOperator)
def _contraction_after(outer: Contraction, inner: JacobianOperator) -> JacobianOperator | None:
    low_rank = as_low_rank(outer)
    if low_rank is not None:  # u v^T J = u (J^T v)^T: one product with J
        return compose(low_rank, inner)
    return None


@composition_rule(Contraction, Composition)
def _gram_after(outer: Contraction, inner: Composition) -> JacobianOperator | None:
    # K^T o (diag(w) o K)
    if isinstance(inner.outer, Diagonal) and isinstance(inner.inner, Contraction):
        return weighted_gram(outer, inner.outer, inner.inner)
    return None


@composition_rule(Composition, Contraction)
def _gram_before(outer: Composition, inner: Contraction) -> JacobianOperator | None:
    # (K^T o diag(w)) o K
    if isinstance(outer.outer, Contraction) and isinstance(outer.inner, Diagonal):
        return weighted_gram(outer.outer, outer.inner, inner)
    return None


@composition_rule(JacobianOperator, Contraction)
def _contraction_before(outer: JacobianOperator, inner: Contraction) -> JacobianOperator | None:
    low_rank = as_low_rank(inner)
    if low_rank is not None:
        return compose(outer, low_rank)
    return None


@addition_rule(Contraction, Contraction)
def _add_contractions(left: Contraction, right: Contraction) -> JacobianOperator | None:
    if (
        left.spec == right.spec
        and left.core is not None
        and right.core is not None
        and left.core.shape == right.core.shape
    ):
        dtype = jnp.result_type(left.dtype, right.dtype).name
        return dataclasses.replace(left, core=left.core + right.core, dtype_name=dtype)
    return _add_low_rank(left, right)


@addition_rule(Contraction, JacobianOperator)
@addition_rule(JacobianOperator, Contraction)
def _add_low_rank(left: JacobianOperator, right: JacobianOperator) -> JacobianOperator | None:
    # A rank-one contraction joins the other term as low rank (diag + u v^T, for softmax).
    low = [as_low_rank(op) if isinstance(op, Contraction) else None for op in (left, right)]
    if low[0] is None and low[1] is None:
        return None
    return add(low[0] or left, low[1] or right)


def as_low_rank(op: Contraction) -> LowRank | None:
    """A contraction that mixes no axis of its input with its output through the core, u v^T,
    as ``LowRank`` of rank one (a sum, a broadcast, a row or column vector); else
    ``None``."""
    ins, core, outs = op.spec
    if set(ins) & set(outs) or (set(core) & set(ins) and set(core) & set(outs)):
        return None
    if set(core) - set(ins) - set(outs):
        return None
    sizes = op.sizes
    operands = [] if op.core is None else [(op.core, core)]
    in_part = [(a, c) for a, c in operands if c and set(c) <= set(ins)]
    out_part = [(a, c) for a, c in operands if not (c and set(c) <= set(ins))]
    u = einsum(out_part, outs, sizes, op.dtype)
    v = einsum(in_part, ins, sizes, op.dtype)
    return LowRank(u[..., None], v[..., None], op.layout)


def matrix_factor(op: Contraction) -> tuple[str, Array] | None:
    """``("left", A)`` for X -> A X or ``("right", B)`` for X -> X B on matrices (a
    constant factor of a Kronecker form), else ``None``."""
    ins, core, outs = op.spec
    if op.core is None or len(ins) != 2 or len(outs) != 2 or len(core) != 2:
        return None
    row, column = ins
    if outs[1] == column and row in core and outs[0] in core and outs[0] not in ins:
        return "left", einsum([(op.core, core)], outs[0] + row, op.sizes, op.dtype)
    if outs[0] == row and column in core and outs[1] in core and outs[1] not in ins:
        return "right", einsum([(op.core, core)], column + outs[1], op.sizes, op.dtype)
    return None


def _side(op: JacobianOperator) -> str:
    if isinstance(op, Kronecker):
        return "kronecker"
    factor = matrix_factor(op) if isinstance(op, Contraction) else None
    return "" if factor is None else factor[0]


def _kronecker(op: JacobianOperator) -> Kronecker | None:
    if isinstance(op, Kronecker):
        return op if op.B.ndim == 2 else None
    factor = matrix_factor(op) if isinstance(op, Contraction) else None
    if factor is None:
        return None
    side, matrix = factor
    p, q = op.in_shape
    if side == "left":
        return Kronecker(matrix, jnp.eye(q, dtype=matrix.dtype), op.layout)
    return Kronecker(jnp.eye(p, dtype=matrix.dtype), matrix, op.layout)


@composition_rule(Kronecker, Contraction)
@composition_rule(Contraction, Kronecker)
def _kronecker_product(outer: JacobianOperator, inner: JacobianOperator) -> JacobianOperator | None:
    """A X after X B (or the reverse) is the Kronecker map X -> A X B: its logdet and solves
    come from the factors. Only when one side is a left and the other a right factor (two
    left factors merge into one contraction instead)."""
    sides = [_side(outer), _side(inner)]
    if "" in sides or (sides[0] == sides[1] != "kronecker"):
        return None
    left, right = _kronecker(outer), _kronecker(inner)
    if left is None or right is None:
        return None
    return Kronecker(left.A @ right.A, right.B @ left.B, outer.layout)
