"""``jacobian(f)``: the structured Jacobian of any JAX program.

The program is traced to a jaxpr and interpreted (``.interpreter``) with the catalogue's
rules as its primitives (``.rules``): the chain rule composes, the product rule combines
dependent factors, ``diag(f'(x))`` covers every elementwise map, and the operator algebra
(``matcalc_jax.operators``) keeps what the rules produce as compact as a hand-written
closed form: softmax comes out as ``diag(s) - s s^T``, ``A X B`` by X as its two factors, a
per-example map over a batch as its blocks. No autodiff is called (``jacfwd``, ``jacrev``,
``grad``, ``jvp``, ``vjp``), except for a primitive without a rule when the caller opts into
``fallback="autodiff"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.sharding import batch_like
from matcalc_jax.operators.base import Composition, JacobianOperator, Sum, compose
from matcalc_jax.operators.block_diagonal import BlockDiagonal
from matcalc_jax.operators.identity import Identity
from matcalc_jax.operators.zero import Zero
from matcalc_jax.transform import rules
from matcalc_jax.transform.interpreter import FALLBACKS, Context, UnsupportedPrimitiveError
from matcalc_jax.transform.maps import ChangeType, Select, WithFallbacks
from matcalc_jax.transform.registry import COMPLEX

__all__ = ["UnsupportedPrimitiveError", "jacobian", "supported_primitives"]


def supported_primitives() -> tuple[str, ...]:
    """The JAX primitives the transform has a rule for."""
    return rules.supported()


def _check_argnums(argnums: Any, count: int) -> int:
    if isinstance(argnums, bool) or not isinstance(argnums, int):
        raise TypeError(
            f"matcalc_jax.jacobian: argnums={argnums!r} is not an int; expected the index of "
            "one positional argument"
        )
    if not -count <= argnums < count:
        raise ValueError(
            f"matcalc_jax.jacobian: argnums={argnums} is out of range for {count} positional "
            "argument(s)"
        )
    return argnums % count


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
    f: Callable[..., Any], argnums: int = 0, *, fallback: str | None = None
) -> Callable[..., JacobianOperator]:
    """The structured Jacobian of ``f`` with respect to its argument ``argnums``.

    ``jacobian(f, argnums)(*args)`` returns a ``matcalc_jax.JacobianOperator`` J in
    numerator layout, built from ``f``'s program without autodiff:

    - ``J.to_dense()`` equals ``jax.jacfwd(f, argnums)(*args)``;
    - ``J.mv(v)`` equals ``jax.jvp`` and ``J.vm(u)`` equals ``jax.vjp`` along ``argnums``;
    - ``J.diagonal()``, ``J.trace()``, ``J.logdet()`` (log|det J|) for square Jacobians, from
      the structure where it allows (O(n) for a diagonal);
    - ``print(J)`` shows the structure: operator types, shapes, dtype, stored entries.

    Args:
      f: a function of arrays returning one array, traceable by ``jax.make_jaxpr``.
      argnums: the index of the positional argument to differentiate, a float array.
      fallback: ``None`` (the default): a primitive without a rule raises
        ``UnsupportedPrimitiveError``, naming it and where it sits in ``f``.
        ``"autodiff"``: such a primitive's local Jacobian comes from JAX's ``jvp`` / ``vjp``
        of that primitive alone, lazily, and is listed in ``J.fallbacks``.

    Returns:
      a function of ``f``'s arguments that returns the Jacobian operator; it can be called
      under ``jax.jit`` (the operator is a pytree).

    Example::

        >>> import jax.numpy as jnp, matcalc_jax as mj
        >>> J = mj.jacobian(lambda x: jnp.tanh(x) * 2.0)(jnp.arange(3.0))
        >>> type(J).__name__, J.logdet().shape
        ('Diagonal', ())
    """
    if fallback not in FALLBACKS:
        raise ValueError(
            f"matcalc_jax.jacobian: fallback={fallback!r} is not a fallback; expected one of "
            f"{FALLBACKS}"
        )
    name = getattr(f, "__name__", type(f).__name__)

    @functools.wraps(f)
    def jacobian_of_f(*args: ArrayLike) -> JacobianOperator:
        index = _check_argnums(argnums, len(args))
        x = args[index]
        if not hasattr(x, "shape") and not isinstance(x, (int, float)):
            raise TypeError(
                f"matcalc_jax.jacobian({name}): argument {index} is a {type(x).__name__}; "
                "expected an array"
            )
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise TypeError(
                f"matcalc_jax.jacobian({name}): argument {index} is a complex argument "
                f"({x.dtype}); the transform differentiates real arguments: pass the real "
                "and imaginary parts as real arrays"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"matcalc_jax.jacobian({name}): argument {index} has dtype {x.dtype}; expected "
                "a floating-point array"
            )
        args = (*args[:index], x, *args[index + 1 :])
        closed, out_shape = jax.make_jaxpr(f, return_shape=True)(*args)
        if not isinstance(out_shape, jax.ShapeDtypeStruct):
            raise TypeError(
                f"matcalc_jax.jacobian({name}): f returns "
                f"{jax.tree_util.tree_structure(out_shape)}; expected a single array"
            )
        leaves = jax.tree_util.tree_leaves(args)
        position = len(jax.tree_util.tree_leaves(args[:index]))
        operators = [None] * len(leaves)
        operators[position] = Identity(tuple(x.shape), x.dtype.name)
        on_missing = rules.fallback if fallback == "autodiff" else None
        ctx = Context(rules.RULES, rules.RELEVANT, on_missing, complex_rules=frozenset(COMPLEX))
        values = [jnp.asarray(leaf) for leaf in leaves]
        _, (op,) = ctx.run(closed.jaxpr, closed.consts, values, operators)
        out_dtype = jnp.dtype(out_shape.dtype)
        if op is None:
            op = Zero(tuple(out_shape.shape), tuple(x.shape), out_dtype.name)
        if op.dtype != out_dtype:  # a wider intermediate (a float16 solve runs in float32)
            shape = tuple(out_shape.shape)
            op = compose(ChangeType(shape, shape, out_dtype.name, jnp.dtype(op.dtype).name), op)
        op = _blocks(op, x)
        if ctx.fallbacks:
            op = WithFallbacks(op, tuple(dict.fromkeys(ctx.fallbacks)))
        return op

    return jacobian_of_f
