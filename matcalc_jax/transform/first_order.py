"""``jacobian(f)``: the argument checks, the interpretation of ``f``'s program for each
differentiated leaf, and the arrangement of the operators as ``jax.jacfwd`` arranges its
arrays (see ``matcalc_jax.transform``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.extend import core as jex_core

from matcalc_jax.core import validate
from matcalc_jax.core.sharding import batch_like
from matcalc_jax.operators.base import Composition, JacobianOperator, Sum, compose
from matcalc_jax.operators.block_diagonal import BlockDiagonal
from matcalc_jax.operators.block_matrix import BlockMatrix
from matcalc_jax.operators.identity import Identity
from matcalc_jax.operators.index_maps import ChangeType
from matcalc_jax.operators.programs import FromCotangents, WithFallbacks, in_program_dtypes
from matcalc_jax.operators.selection import Select
from matcalc_jax.operators.zero import Zero
from matcalc_jax.transform import (  # each module registers its rules
    control_flow,
    convolution,
    cumulative,
    indexing,
    linear_algebra,
    rules,
)
from matcalc_jax.transform.interpreter import FALLBACKS, Context
from matcalc_jax.transform.registry import COMPLEX

__all__ = ["check_argnums", "check_leaf", "jacobian"]

#: The primitives whose rules hold for complex values (all families are registered above).
COMPLEXES = frozenset(COMPLEX)
#: The families of rules, imported for the rules they register.
_FAMILIES = (control_flow, convolution, cumulative, indexing, linear_algebra)


def check_argnums(argnums: Any, count: int, what: str = "jacobian") -> tuple[int, ...]:
    """``argnums`` as a tuple of indices into ``count`` positional arguments; errors name
    ``matcalc_jax.<what>``."""
    indices = argnums if isinstance(argnums, tuple) else (argnums,)
    if not indices or any(isinstance(k, bool) or not isinstance(k, int) for k in indices):
        raise TypeError(
            f"matcalc_jax.{what}: argnums={argnums!r} is not an int or a tuple of ints; "
            "expected the index (or indices) of positional arguments"
        )
    for k in indices:
        if not -count <= k < count:
            raise ValueError(
                f"matcalc_jax.{what}: argnums={argnums} is out of range for {count} "
                "positional argument(s)"
            )
    normalized = tuple(k % count for k in indices)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"matcalc_jax.{what}: argnums={argnums} repeats an argument")
    return normalized


def check_leaf(name: str, index: int, path: Any, leaf: Any, what: str = "jacobian") -> Array:
    """A differentiated leaf as a real floating-point array, or a clear ``TypeError`` naming
    ``matcalc_jax.<what>(name)``."""
    where = f"argument {index}" + (jax.tree_util.keystr(path) if path else "")
    if not hasattr(leaf, "shape") and not isinstance(leaf, (int, float)):
        raise TypeError(
            f"matcalc_jax.{what}({name}): {where} is a {type(leaf).__name__}; expected an "
            "array (or a pytree of arrays)"
        )
    leaf = jnp.asarray(leaf)
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
        raise TypeError(
            f"matcalc_jax.{what}({name}): {where} is a complex argument ({leaf.dtype}); the "
            "transform differentiates real arguments: pass the real and imaginary parts as "
            "real arrays"
        )
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
        raise TypeError(
            f"matcalc_jax.{what}({name}): {where} has dtype {leaf.dtype}; expected a "
            "floating-point array (as jax.jacfwd; pass integers as an argument not in argnums)"
        )
    return leaf


def _blocks(op: JacobianOperator, x: Array) -> JacobianOperator:
    """A lazy Jacobian that is block-diagonal along a leading batch axis, as its blocks: the
    m columns of every block at once, from m products with the basis repeated over the
    batch (not N m, as a dense method needs). The basis is split over devices like the batch
    ``x``, so that a sharded batch's blocks are computed where its examples are."""
    if not isinstance(op, (Composition, Sum, Select)):
        return op
    if len(op.in_shape) != 2 or len(op.out_shape) != 2 or (0, 0) not in op.batch_axes():
        return op
    if op.in_shape[0] != op.out_shape[0]:
        return op
    batch, width = op.in_shape
    basis = jnp.broadcast_to(jnp.eye(width, dtype=op.dtype), (batch, width, width))
    basis = batch_like(basis, x)  # x has the in shape (N, m)
    blocks = jax.vmap(op.mv, in_axes=1, out_axes=-1)(basis)  # (N, n, m): column j at [..., j]
    return BlockDiagonal(blocks, op.layout)


def jacobian(
    f: Callable[..., Any],
    argnums: int | tuple[int, ...] = 0,
    *,
    has_aux: bool = False,
    ravel: bool = False,
    fallback: str | None = None,
) -> Callable[..., Any]:
    """The structured Jacobian of ``f`` with respect to its arguments ``argnums``.

    ``jacobian(f, argnums)(*args, **kwargs)`` (keyword arguments are passed to ``f``, not
    differentiated, as by ``jax.jacfwd``) returns ``matcalc_jax.JacobianOperator`` objects in
    numerator layout, built from ``f``'s program without autodiff, arranged as
    ``jax.jacfwd(f, argnums)(*args)`` arranges its arrays: for one array in and one array
    out, one operator J; for pytrees, a pytree with the output's structure whose leaves are
    pytrees with the argument's structure (a tuple of them for a tuple ``argnums``), each
    leaf the operator of one output leaf in one input leaf, keeping its own structure.

    - ``J.to_dense()`` equals the matching array of ``jax.jacfwd(f, argnums)(*args)``;
    - ``J.mv(v)`` equals ``jax.jvp`` and ``J.vm(u)`` equals ``jax.vjp``;
    - ``J.diagonal()``, ``J.trace()``, ``J.logdet()`` (log|det J|) for square Jacobians, from
      the structure where it allows (O(n) for a diagonal);
    - ``print(J)`` shows the structure: operator types, shapes, dtype, stored entries.

    Args:
      f: a function of arrays and pytrees of arrays, traceable by ``jax.make_jaxpr``,
        returning an array or a pytree of arrays (with ``has_aux``: a pair ``(out, aux)``).
      argnums: the index of the positional argument to differentiate, or a tuple of them;
        the differentiated arguments are real floating-point arrays or pytrees of them.
      has_aux: as in JAX: ``f`` returns ``(out, aux)``; the result is ``(J, aux)``.
      ravel: return one ``BlockMatrix`` operator on the flattened vectors instead of the
        pytree: inputs and outputs ravelled and concatenated in
        ``jax.flatten_util.ravel_pytree`` order, for ``mv`` / ``vm`` / ``solve`` /
        ``logdet`` of the whole.
      fallback: ``None`` (the default): a primitive without a rule raises
        ``UnsupportedPrimitiveError``, naming it and where it sits in ``f``.
        ``"autodiff"``: such a primitive's local Jacobian comes from JAX's ``jvp`` / ``vjp``
        of that primitive alone, lazily, and is listed in ``J.fallbacks``.

    Returns:
      a function of ``f``'s arguments that returns the Jacobian (``(J, aux)`` with
      ``has_aux``); it can be called under ``jax.jit`` (the operators are pytrees).

    Example::

        >>> import jax.numpy as jnp, matcalc_jax as mj
        >>> J = mj.jacobian(lambda x: jnp.tanh(x) * 2.0)(jnp.arange(3.0))
        >>> type(J).__name__, J.logdet().shape
        ('Diagonal', ())
        >>> params = {"w": jnp.ones(3), "b": jnp.zeros(())}
        >>> tree = mj.jacobian(lambda p, x: jnp.tanh(p["w"] * x + p["b"]))(params, jnp.ones(3))
        >>> sorted(tree), type(tree["w"]).__name__, tree["b"].shape
        (['b', 'w'], 'Diagonal', (3,))
    """
    validate.function("jacobian", "f", f)
    if fallback not in FALLBACKS:
        raise ValueError(
            f"matcalc_jax.jacobian: fallback={fallback!r} is not a fallback; expected one of "
            f"{FALLBACKS}"
        )
    name = getattr(f, "__name__", type(f).__name__)

    @functools.wraps(f)
    def jacobian_of_f(*args: Any, **kwargs: Any) -> Any:
        indices = check_argnums(argnums, len(args))
        args = list(args)
        for index in indices:
            pairs, tree = jax.tree_util.tree_flatten_with_path(args[index])
            checked = [check_leaf(name, index, path, leaf) for path, leaf in pairs]
            args[index] = jax.tree_util.tree_unflatten(tree, checked)
        # keyword arguments are passed to f, not differentiated (as by jax.jacfwd)
        program = functools.partial(f, **kwargs) if kwargs else f
        closed, out_shape = jax.make_jaxpr(program, return_shape=True)(*args)
        if has_aux:
            if not (isinstance(out_shape, (tuple, list)) and len(out_shape) == 2):
                raise TypeError(
                    f"matcalc_jax.jacobian({name}, has_aux=True): f returns "
                    f"{jax.tree_util.tree_structure(out_shape)}; expected a pair (out, aux)"
                )
            out_shape, aux_shape = out_shape
        out_leaves, out_tree = jax.tree_util.tree_flatten(out_shape)
        # Which flat inputs are differentiated: (position among all leaves, leaf).
        starts = np.cumsum([0] + [len(jax.tree_util.tree_leaves(a)) for a in args])
        values = [jnp.asarray(leaf) for leaf in jax.tree_util.tree_leaves(args)]
        inputs = [k for index in indices for k in range(starts[index], starts[index + 1])]
        on_missing = rules.fallback if fallback == "autodiff" else None
        grid = []  # grid[j][i]: output leaf i in input leaf j
        dtypes = _inexact_dtypes(closed.jaxpr)  # one dtype: no cast to fold, nothing to round
        results = None
        for k in inputs:
            x = values[k]
            seeds = [None] * len(values)
            seeds[k] = Identity(tuple(x.shape), x.dtype.name)
            ctx = Context(rules.RULES, rules.RELEVANT, on_missing, complex_rules=COMPLEXES)
            results, out_ops = ctx.run(closed.jaxpr, closed.consts, values, seeds)
            notes = tuple(dict.fromkeys(ctx.fallbacks))
            grid.append(
                [
                    _finish(op, shape, x, notes, dtypes)
                    for op, shape in zip(out_ops, out_leaves, strict=False)
                ]
            )
        if results is None:  # nothing to differentiate (empty pytrees)
            results = jex_core.jaxpr_as_fun(closed)(*values)
        per_output = [[column[i] for column in grid] for i in range(len(out_leaves))]
        if ravel:
            if not per_output or not inputs:
                raise ValueError(f"matcalc_jax.jacobian({name}, ravel=True): nothing to ravel")
            J = BlockMatrix(tuple(tuple(row) for row in per_output))
        else:
            in_trees = [jax.tree_util.tree_structure(args[index]) for index in indices]
            J = jax.tree_util.tree_unflatten(
                out_tree, [_arrange(row, in_trees, argnums) for row in per_output]
            )
        if has_aux:
            aux_leaves = results[len(out_leaves) :]
            return J, jax.tree_util.tree_unflatten(
                jax.tree_util.tree_structure(aux_shape), aux_leaves
            )
        return J

    return jacobian_of_f


def _inexact_dtypes(jaxpr: Any) -> frozenset:
    """The float and complex dtypes of every value a program computes, in its calls,
    branches and loop bodies too."""
    found: set = set()

    def walk(program: Any) -> None:
        for eqn in program.eqns:
            for var in eqn.outvars:
                dtype = getattr(var.aval, "dtype", None)
                if dtype is not None and jnp.issubdtype(dtype, jnp.inexact):
                    found.add(jnp.dtype(dtype))
            for param in eqn.params.values():
                for inner in _programs_in(param):
                    walk(inner)

    walk(jaxpr)
    return frozenset(found)


def _programs_in(param: Any) -> list[Any]:
    """The programs an equation's parameter holds (a body, a tuple of branches)."""
    if isinstance(param, jex_core.ClosedJaxpr):
        return [param.jaxpr]
    if isinstance(param, jex_core.Jaxpr):
        return [param]
    if isinstance(param, (tuple, list)):
        return [inner for item in param for inner in _programs_in(item)]
    return []


def _arrange(row: list[Any], in_trees: list[Any], argnums: Any) -> Any:
    """One output leaf's operators in the arguments' structure (a tuple for tuple argnums)."""
    pieces, offset = [], 0
    for tree in in_trees:
        pieces.append(jax.tree_util.tree_unflatten(tree, row[offset : offset + tree.num_leaves]))
        offset += tree.num_leaves
    return tuple(pieces) if isinstance(argnums, tuple) else pieces[0]


def _finish(
    op: Any, out: Any, x: Array, notes: tuple[str, ...], dtypes: frozenset
) -> JacobianOperator:
    """The Jacobian of one output leaf ``out`` in the input leaf ``x`` as returned: a
    ``Zero`` where it does not depend on x, cast to the output's dtype, a block-diagonal
    map as its blocks, its products rounded to the program's dtypes where it computes
    wider (read only when the program's values, ``dtypes``, are not all of x's dtype),
    the fallback's notes kept."""
    out_dtype = jnp.dtype(out.dtype)
    if not jnp.issubdtype(out_dtype, jnp.inexact):
        out_dtype = x.dtype  # an integer output: a zero Jacobian, in the argument's dtype
        op = None
    if op is None:
        op = Zero(tuple(out.shape), tuple(x.shape), out_dtype.name)
    if op.dtype != out_dtype:  # a wider intermediate (a float16 solve runs in float32)
        shape = tuple(out.shape)
        op = compose(ChangeType(shape, shape, out_dtype.name, jnp.dtype(op.dtype).name), op)
    op = _blocks(op, x)
    if not op.composes_as_matrix():  # a Pullback inside: the matrix is jax.jacrev's
        op = FromCotangents(op)
    one_dtype = dtypes <= {x.dtype} and out_dtype == x.dtype
    if not one_dtype and jnp.issubdtype(x.dtype, jnp.inexact):
        op = in_program_dtypes(op, x.dtype, out_dtype)
    return WithFallbacks(op, notes) if notes else op
