"""Second order: ``hessian``, ``laplacian`` and ``gauss_newton`` of any JAX program.

The Hessian of a scalar f is the Jacobian of its gradient: ``hessian(f)`` interprets the
program ``jax.grad(f)`` builds with the transform (``matcalc_jax.jacobian``), so the
structure comes from the program, with no per-program case:

- a GLM loss l(X w): the gradient is X^T l'(X w), its Jacobian X^T diag(l'') X, a
  ``WeightedGram`` that stores X and the n weights;
- a separable sum sum_i g(x_i): ``Diagonal``; a chained objective (Rosenbrock, finite
  differences): ``Banded``, a few diagonals at fixed offsets;
- softmax cross-entropy in the logits: ``DiagonalPlusLowRank``, diag(s) - s s^T;
- a per-example sum over a vmapped batch: ``BlockDiagonal``, one block an example.

After the interpretation, ``simplify`` rebuilds the operator with the algebra's rules, and
reads what only a symmetric matrix allows: a selection between diagonals (``where`` in a
loss) is the diagonal it selects, sums sharing an inner factor share it, a map on vectors
made of a few shifted diagonals is ``Banded``.

``gauss_newton(model, loss)`` is J^T H_loss J, kept as its two factors: ``mv`` is one
product with J, one with H_loss and one with J^T; ``diagonal`` is exact, from the m rows of
J (m the model's output size).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.banded import banded
from matcalc_jax.operators.base import (
    Composition,
    JacobianOperator,
    Scaled,
    Sum,
    Wrapped,
    add,
    check_tangent,
    compose,
    is_operator,
    keeping_width,
    pytree,
    size_of,
)
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.programs import InProgramDtypes
from matcalc_jax.operators.selection import Select
from matcalc_jax.transform import first_order

__all__ = ["GaussNewton", "Hessian", "gauss_newton", "hessian", "laplacian", "simplify"]


# ------------------------------------------------------------------------ simplify


def simplify(op: JacobianOperator) -> JacobianOperator:
    """The same matrix, rebuilt bottom-up with the algebra's rules: a ``Select`` whose
    branches are diagonals (or constant) becomes the ``Diagonal`` it selects, and each
    sum and composition is formed again with ``add`` and ``compose`` (so a sum of terms
    sharing an inner factor, a diagonal after a diagonal, X^T D X meet their rules). A
    shared part is rebuilt once, so that parts the program used twice stay one object."""
    memo: dict[int, JacobianOperator] = {}
    bands: dict[int, tuple] = {}  # each node's band, read once (band_of)

    def rebuild(node: JacobianOperator) -> JacobianOperator:
        key = id(node)
        if key not in memo:
            memo[key] = _rebuilt(node, rebuild, bands)
        return memo[key]

    result = rebuild(op)
    band = banded(result, bands)
    return result if band is None else band


def _rebuilt(
    node: JacobianOperator, rebuild: Callable[[Any], Any], bands: dict[int, tuple]
) -> JacobianOperator:
    if isinstance(node, Select):
        branches = [None if b is None else rebuild(b) for b in node.branches]
        if all(b is None or isinstance(b, Diagonal) for b in branches):
            shape = node.out_shape
            values = jax.lax.select_n(
                jnp.broadcast_to(node.predicate, shape),
                *(jnp.zeros(shape, node.dtype) if b is None else b.values for b in branches),
            )
            return Diagonal(values, node.layout)
        return node
    if isinstance(node, Composition):
        return compose(rebuild(node.outer), rebuild(node.inner))
    if isinstance(node, Sum):
        terms = [rebuild(t) for t in node.terms]
        total = functools.reduce(add_sharing, terms)
        band = banded(total, bands)
        return total if band is None else band
    if isinstance(node, Scaled):
        inner = rebuild(node.operator)
        return node if inner is node.operator else inner.scaled(node.scale)
    if isinstance(node, InProgramDtypes):
        return dataclasses.replace(node, operator=rebuild(node.operator))
    return node


def _innermost(op: JacobianOperator) -> tuple[JacobianOperator | None, JacobianOperator]:
    """``op`` as ``prefix o last`` with ``last`` its innermost factor (``prefix`` None when
    ``op`` is not a composition); a scale stays with the prefix."""
    if isinstance(op, Scaled) and jnp.ndim(op.scale) == 0:
        prefix, last = _innermost(op.operator)
        return (None, op) if prefix is None else (prefix.scaled(op.scale), last)
    if not isinstance(op, Composition):
        return None, op
    prefix, last = _innermost(op.inner)
    return (op.outer if prefix is None else compose(op.outer, prefix)), last


def add_sharing(left: JacobianOperator, right: JacobianOperator) -> JacobianOperator:
    """left + right, with an innermost factor the two terms share (the same object: a part
    of the program both terms were derived through) taken out: A C + B C = (A + B) C, so
    that the sum of the prefixes can meet its rules (two diagonals add)."""
    left_prefix, left_last = _innermost(left)
    right_prefix, right_last = _innermost(right)
    if left_prefix is not None and right_prefix is not None and left_last is right_last:
        return compose(add_sharing(left_prefix, right_prefix), left_last)
    return add(left, right)


# ------------------------------------------------------------------------- Hessian


@pytree(("operator",), ("name",), as_graph=True)
class Hessian(Wrapped):
    """The Hessian of a scalar function, d^2 f / dx^2: a map on tangents of x's shape
    (symmetric unless a ``custom_vjp``'s backward rule is not its function's derivative),
    holding the structured operator the transform derived (``operator``).

    ``to_dense()`` has shape ``x.shape + x.shape`` and equals ``jax.hessian``; ``mv`` is the
    Hessian-vector product (``jax.jvp`` of ``jax.grad``); ``diagonal``, ``trace``,
    ``logdet`` (log|det H|: -inf at an exact zero pivot, the LU's finite value where only
    rounding hides the singularity) and ``solve`` come from the structure.
    ``solve`` of a singular H, called outside ``jit``, raises ``ValueError``; under ``jit``
    it returns what the factorization gives (inf or NaN entries), as ``jnp.linalg.solve``.
    """

    operator: JacobianOperator
    name: str = "f"
    refuses_every_singular_solve = True

    def mv(self, tangent: ArrayLike) -> Array:
        return self.operator.mv(check_tangent(self, "mv", tangent, self.in_shape))

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.operator.vm(check_tangent(self, "vm", cotangent, self.out_shape))

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return Hessian(self.operator.with_layout(layout), self.name)

    def transpose(self) -> JacobianOperator:
        # The transposed map, not ``self``: a custom_vjp whose backward rule is not its
        # function's derivative has a Hessian that is not symmetric (jax.hessian's too).
        return Hessian(self.operator.transpose(), self.name)

    def solve(self, rhs: ArrayLike) -> Array:
        return self.operator.solve(check_tangent(self, "solve", rhs, self.out_shape))

    def solve_names(self) -> tuple[str, str, str]:
        return f"hessian({self.name})", "the Hessian", "H"

    def describe(self) -> str:
        return f"of {self.name}"


def _name(f: Any) -> str:
    return getattr(f, "__name__", type(f).__name__)


def _check_scalar(what: str, name: str, out: Any, role: str = "f") -> None:
    leaves, structure = jax.tree_util.tree_flatten(out)
    if (
        len(leaves) != 1
        or not jax.tree_util.treedef_is_leaf(structure)  # {"loss": x}: a container of one
        or leaves[0].shape != ()
        or not jnp.issubdtype(leaves[0].dtype, jnp.floating)
    ):
        got = jax.tree_util.tree_map(lambda leaf: f"{leaf.dtype}{list(leaf.shape)}", out)
        expected = (
            "a real float array (a scalar, or a field: a Laplacian per entry)"
            if what == "laplacian"
            else "a real scalar (a float array of shape ())"
        )
        raise TypeError(
            f"matcalc_jax.{what}({name}): {role} returns {got}; expected {expected}; of a "
            f"pytree output, differentiate one leaf (lambda x: {role}(x)[key])"
        )


def _check_arguments(what: str, name: str, args: tuple[Any, ...], argnums: Any) -> None:
    indices = first_order.check_argnums(argnums, len(args), what)
    for index in indices:
        for path, leaf in jax.tree_util.tree_flatten_with_path(args[index])[0]:
            first_order.check_leaf(name, index, path, leaf, what)


def hessian(
    f: Callable[..., Any],
    argnums: int | tuple[int, ...] = 0,
    *,
    has_aux: bool = False,
    ravel: bool = False,
) -> Callable[..., Any]:
    """The structured Hessian of a scalar ``f`` in its arguments ``argnums``.

    ``hessian(f, argnums)(*args)`` is the Jacobian of ``jax.grad(f, argnums)``, derived by
    the transform from that program (never by ``jax.hessian``) and simplified (see the
    module docstring). For one array argument it is a ``Hessian`` operator: ``to_dense()``
    equals ``jax.hessian(f, argnums)(*args)`` (shape ``x.shape + x.shape``), ``mv`` the
    Hessian-vector product, ``diagonal``, ``trace``, ``logdet`` and ``solve`` from the
    structure, and ``print(H)`` shows it. For pytree arguments or a tuple ``argnums`` the
    result is arranged as ``jax.hessian`` arranges its arrays (a block for each pair of
    leaves); ``ravel=True`` gives instead one ``Hessian`` on the flattened vector
    (``ravel_pytree`` order). ``has_aux`` as in JAX: the result is ``(H, aux)``.

    Raises ``TypeError`` when ``f`` does not return a real scalar, or an argument in
    ``argnums`` is not a real floating-point array (an integer or complex one).

    Example::

        >>> import jax.numpy as jnp, matcalc_jax as mj
        >>> H = mj.hessian(lambda x: jnp.sum(jnp.sin(x)))(jnp.arange(3.0))
        >>> type(H.operator).__name__, H.to_dense().shape
        ('Diagonal', (3, 3))
    """
    validate.function("hessian", "f", f)
    return _hessian(f, argnums, has_aux=has_aux, ravel=ravel, what="hessian", name=_name(f))


def _hessian(
    f: Callable[..., Any],
    argnums: int | tuple[int, ...] = 0,
    *,
    has_aux: bool = False,
    ravel: bool = False,
    what: str,
    name: str,
    role: str = "f",
) -> Callable[..., Any]:
    """``hessian``, its errors naming ``matcalc_jax.<what>(<name>)`` and ``f`` as ``role``
    (``laplacian`` and ``gauss_newton``'s loss build on it)."""

    @functools.wraps(f)
    def hessian_of_f(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(what, name, args, argnums)
        program = functools.partial(f, **kwargs) if kwargs else f  # not differentiated
        out = jax.eval_shape(program, *args)
        return _hessian_at(program, args, out, argnums, has_aux, ravel, what, name, role)

    return hessian_of_f


def _hessian_at(
    program: Callable[..., Any],
    args: tuple[Any, ...],
    out: Any,
    argnums: int | tuple[int, ...],
    has_aux: bool,
    ravel: bool,
    what: str,
    name: str,
    role: str = "f",
) -> Any:
    """``hessian(program)(*args)`` for arguments already checked and the output's shapes
    ``out`` already read (``jax.eval_shape``)."""
    _check_scalar(what, name, out[0] if has_aux else out, role)
    grad = jax.grad(program, argnums, has_aux=has_aux)

    @functools.wraps(grad)
    def gradient(*arguments: Any) -> Any:
        try:
            return grad(*arguments)
        except (ValueError, TypeError, NotImplementedError) as error:
            # f itself traced already (its shapes): what fails here is JAX's reverse mode
            # (a while_loop, a fori_loop with traced bounds), whose message names neither
            raise type(error)(
                f"matcalc_jax.{what}: jax.grad({name}), whose Jacobian the Hessian is, "
                f"cannot be built: {error}"
            ) from error

    result = first_order.jacobian(gradient, argnums, has_aux=has_aux, ravel=ravel)(*args)
    H, aux = result if has_aux else (result, None)
    H = jax.tree_util.tree_map(simplify, H, is_leaf=is_operator)
    if is_operator(H) and H.in_shape == H.out_shape:
        H = Hessian(H, name)
    return (H, aux) if has_aux else H


def laplacian(f: Callable[..., Any], argnums: int = 0) -> Callable[..., Array]:
    """The Laplacian of ``f``, tr(d^2 f / dx^2) = sum_i d^2 f / dx_i^2, exact: the trace of
    ``hessian(f)``'s structure (O(n) for a diagonal or banded Hessian, the weights times the
    squared row norms for X^T diag(w) X) without the n x n matrix where the structure
    allows. A pytree argument is traced over all its leaves.

    Of an ``f`` returning a float array of shape S (a vector field, as a PINN's velocity),
    an array of shape S: each output's Laplacian, the trace of the Hessian of ``u . f(x)``
    for each unit ``u``, one program ``jax.vmap``-ped over the units (m outputs cost m
    Hessians' traces)."""
    validate.function("laplacian", "f", f)
    if not isinstance(argnums, int) or isinstance(argnums, bool):
        raise TypeError(
            f"matcalc_jax.laplacian: argnums={argnums!r} is not an int; the Laplacian is "
            "taken in one argument"
        )
    name = _name(f)

    def trace(program: Callable[..., Any], args: tuple[Any, ...], out: Any) -> Array:
        return _hessian_at(program, args, out, argnums, False, True, "laplacian", name).trace()

    @functools.wraps(f)
    def laplacian_of_f(*args: Any, **kwargs: Any) -> Array:
        _check_arguments("laplacian", name, args, argnums)
        program = functools.partial(f, **kwargs) if kwargs else f
        out = jax.eval_shape(program, *args)  # f traced once for its shapes
        field = isinstance(out, jax.ShapeDtypeStruct) and out.shape != ()
        if not (field and jnp.issubdtype(out.dtype, jnp.floating)):
            return trace(program, args, out)  # a scalar, or the error naming the output
        size = size_of(out.shape)
        units = jnp.eye(size, dtype=out.dtype).reshape((size, *out.shape))
        scalar = jax.ShapeDtypeStruct((), out.dtype)

        def of_one_output(unit: Array) -> Array:
            def weighted(*arguments: Any) -> Array:
                return jnp.sum(unit * program(*arguments))

            return trace(weighted, args, scalar)

        return jax.vmap(of_one_output)(units).reshape(out.shape)

    return laplacian_of_f


# --------------------------------------------------------------------- Gauss-Newton


@pytree(("jacobian", "curvature"), ())
class GaussNewton(JacobianOperator):
    """J^T H J: the Gauss-Newton (generalized Gauss-Newton) matrix of a loss of a model's
    output, with J the model's Jacobian in its parameters and H the loss's Hessian in the
    output. Kept as the two factors: ``mv(v)`` is J^T (H (J v)), one Jacobian-vector
    product, one product with H, one vector-Jacobian product; ``diagonal`` is exact,
    sum_ab J_ai H_ab J_bi from the m rows of J (m the output size); ``to_dense`` forms
    J^T H J from the dense J."""

    jacobian: JacobianOperator
    curvature: JacobianOperator
    refuses_every_singular_solve = True

    layout = property(lambda self: self.jacobian.layout)  # type: ignore[assignment]
    out_shape = property(lambda self: self.jacobian.in_shape)
    in_shape = property(lambda self: self.jacobian.in_shape)
    dtype = property(lambda self: jnp.result_type(self.jacobian.dtype, self.curvature.dtype))

    def mv(self, tangent: ArrayLike) -> Array:
        tangent = check_tangent(self, "mv", tangent, self.in_shape)
        forward = self.jacobian.mv(tangent).astype(self.curvature.dtype)
        return self.jacobian.vm(self.curvature.mv(forward).astype(self.jacobian.dtype))

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.mv(check_tangent(self, "vm", cotangent, self.out_shape))

    def _rows(self) -> Array:
        """J as (m, n): the m rows u^T J for the unit cotangents u (jax.jacfwd's, the float64
        digits of a model of float32 parameters kept: ``keeping_width``)."""
        m = size_of(self.jacobian.out_shape)
        basis = jnp.eye(m, dtype=self.dtype).reshape((m, *self.jacobian.out_shape))
        with keeping_width():
            rows = jax.vmap(self.jacobian.vm)(basis)
        return rows.reshape(m, size_of(self.jacobian.in_shape))

    def _numerator(self) -> Array:
        rows = self._rows()
        curvature = self.curvature.to_dense("numerator").reshape(rows.shape[0], rows.shape[0])
        dense = rows.T @ (curvature @ rows)
        return dense.reshape(self.out_shape + self.in_shape)

    def transpose(self) -> JacobianOperator:
        return self

    def diagonal(self) -> Array:
        rows = self._rows()
        m = rows.shape[0]
        if isinstance(self.curvature, Diagonal):
            weighted = self.curvature.values.reshape(m, 1) * rows
        else:
            weighted = self.curvature.to_dense("numerator").reshape(m, m) @ rows
        return jnp.sum(rows * weighted, axis=0).reshape(self.in_shape)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        """(a, a) where J keeps its input axis a apart as an output axis o (a model applied
        to each example) that H keeps apart too: J^T H J is block diagonal along a."""
        kept = {o for o, i in self.curvature.batch_axes() if o == i}
        return frozenset((a, a) for o, a in self.jacobian.batch_axes() if o in kept)

    def _rank_deficient(self) -> bool:
        """J^T H J has rank at most m, J's output size: singular when m < n."""
        return size_of(self.jacobian.out_shape) < size_of(self.jacobian.in_shape)

    def logdet(self) -> Array:
        if self._rank_deficient():  # exactly -inf, where the LU of J^T H J rounds
            return jnp.full((), -jnp.inf, jnp.finfo(self.dtype).dtype)
        return super().logdet()

    def solve(self, rhs: ArrayLike) -> Array:
        """x with J^T H J x = rhs. Singular when J has fewer outputs than inputs: NaN under
        ``jit``, outside it a ``ValueError``, as a singular ``hessian``'s solve."""
        rhs = check_tangent(self, "solve", rhs, self.out_shape)
        if self._rank_deficient():
            return jnp.full(self.in_shape, jnp.nan, jnp.result_type(self.dtype, rhs))
        return super().solve(rhs)

    def solve_names(self) -> tuple[str, str, str]:
        return "gauss_newton(...)", "J^T H J", "G"

    def describe(self) -> str:
        return "J^T H J"


def gauss_newton(
    model: Callable[..., Any],
    loss: Callable[[Any], Array],
    argnums: int = 0,
) -> Callable[..., GaussNewton]:
    """The Gauss-Newton matrix J^T H_loss J of ``loss(model(params, *rest))`` in ``params``.

    ``gauss_newton(model, loss, argnums)(*args)``: J is ``jacobian(model, argnums)`` at
    ``args``, H_loss is ``hessian(loss)`` at the model's output ``y = model(*args)``; both
    are derived by the transform and kept structured. ``loss`` takes the output alone
    (close over targets: ``lambda y: cross_entropy(y, labels)``) and returns a real scalar.
    Pytree parameters and outputs are handled on their flattened vectors
    (``ravel_pytree`` order): ``mv`` then takes and returns flat vectors.

    The result is a symmetric ``GaussNewton`` operator: ``mv`` at the cost of a forward
    product with J, one with H and a backward product with J^T, an exact ``diagonal()`` and
    ``trace()``, ``to_dense()`` equal to ``J^T H J`` from ``jax.jacfwd`` and ``jax.hessian``.
    """
    if not isinstance(argnums, int) or isinstance(argnums, bool):
        raise TypeError(
            f"matcalc_jax.gauss_newton: argnums={argnums!r} is not an int; pass the "
            "parameters as one argument (a pytree is fine)"
        )
    validate.function("gauss_newton", "model", model)
    validate.function("gauss_newton", "loss", loss)
    name = _name(model)

    @functools.wraps(model)
    def gauss_newton_of_model(*args: Any) -> GaussNewton:
        _check_arguments("gauss_newton", name, args, argnums)

        def with_output(*inner: Any) -> Any:
            y = model(*inner)
            return y, y

        shapes = jax.eval_shape(model, *args)
        pytrees = not all(
            jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(tree))
            for tree in (args[argnums], shapes)
        )
        outputs = jax.tree_util.tree_leaves(shapes)
        if not all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in outputs):
            got = [f"{leaf.dtype}{list(leaf.shape)}" for leaf in outputs]
            raise TypeError(
                f"matcalc_jax.gauss_newton({name}): model returns {got}; expected real "
                "floating-point outputs (the loss is differentiated in them)"
            )
        J, y = first_order.jacobian(with_output, argnums, has_aux=True, ravel=pytrees)(*args)
        loss_hessian = _hessian(
            loss, ravel=pytrees, what="gauss_newton", name=_name(loss), role="loss"
        )
        H = loss_hessian(y)
        operator = H.operator if isinstance(H, Hessian) else H
        return GaussNewton(J, operator)

    return gauss_newton_of_model
