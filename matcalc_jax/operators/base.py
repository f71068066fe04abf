"""The operator interface, its algebra, and the generic composites.

Every structured Jacobian is a ``JacobianOperator``: a linear map from tangents of
``in_shape`` to tangents of ``out_shape``. The algebra is registered per type, so a new type
brings its rules beside itself and nothing here is edited:

- unary rules are methods a type overrides (``transpose``, ``diagonal``, ``trace``,
  ``logdet``, ``solve``, ``scaled``); the defaults here are correct for any map and work on
  the dense matrix, the fallback for a type without a cheaper rule;
- composition and sums dispatch on both operand types through ``composition_rule`` and
  ``addition_rule``; a pair without a rule gives the lazy ``Composition`` or
  ``Sum``. Lookups walk the two types' MROs once per pair of types and are cached, so
  the algebra costs a dictionary lookup per operation at trace time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core.chunks import assemble, check_chunk_size
from matcalc_jax.core.layout import Layout, check_layout, from_numerator
from matcalc_jax.core.precision import in_working_precision
from matcalc_jax.operators.singular import check_solution


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def storage(op: Any) -> int:
    """The number of array entries an operator stores (all its pytree leaves)."""
    leaves = jax.tree_util.tree_leaves(op)
    return sum(size_of(getattr(leaf, "shape", np.shape(leaf))) for leaf in leaves)


def size_of(shape: tuple[int, ...]) -> int:
    """The number of entries of an array of ``shape``."""
    return int(np.prod(shape, dtype=np.int64))


def check_tangent(op: JacobianOperator, name: str, value: ArrayLike, shape: tuple) -> Array:
    """``value`` as an array, or ``ValueError`` naming the operator and method unless it has
    ``shape``."""
    array = jnp.asarray(value)
    if tuple(array.shape) != tuple(shape):
        raise ValueError(
            f"{type(op).__name__}.{name}: argument has shape {tuple(array.shape)}; "
            f"expected {tuple(shape)}"
        )
    return array


def is_concrete(*trees: Any) -> bool:
    """Whether every leaf of ``trees`` is a concrete array (nothing is being traced)."""
    return all(
        isinstance(leaf, (jax.Array, np.ndarray)) and not isinstance(leaf, jax.core.Tracer)
        for leaf in jax.tree_util.tree_leaves(trees)
    )


class BatchOfOperatorsError(ValueError):
    """A method was called on a batch of operators (one returned from ``jax.vmap``)."""


def refuse_a_batch(op: Any, what: str) -> None:
    """``BatchOfOperatorsError`` if ``op`` is a batch of operators: its arrays have more
    axes than its structure records, which every method would read as more entries."""
    batch = op.__dict__.get("_batch") if hasattr(op, "__dict__") else None
    if batch is not None:
        name, call = type(op).__name__, "to_dense" if what.startswith("_") else what
        axes = "1 axis" if batch == 1 else f"{batch} axes"
        raise BatchOfOperatorsError(
            f"{name}.{call}: this {name} is a batch of operators (its arrays have {axes} "
            "more than its structure records), as jax.vmap returns one or a lax.scan "
            "stacks it; its methods would read the batch as more entries. Call "
            f"{call} inside a vmap over it, jax.vmap(lambda J: J.{call}(...))(Js), or take "
            "the Jacobian of the batched function, matcalc_jax.jacobian(jax.vmap(f))(xs)."
        )


def _refuses_a_batch(method: Callable) -> Callable:
    """``method(op, ...)``, refused on a batch of operators (``refuse_a_batch``)."""
    if getattr(method, "refuses_a_batch", False):
        return method
    what = method.__name__

    @functools.wraps(method)
    def checked(op: Any, *args: Any, **kwargs: Any) -> Any:
        refuse_a_batch(op, what)
        return method(op, *args, **kwargs)

    checked.refuses_a_batch = True  # type: ignore[attr-defined]
    return checked


#: The methods that read an operator's arrays as its shapes say: refused on a batch.
READ_AS_ONE = (
    "mv", "vm", "rmv", "_numerator", "to_dense", "diagonal", "trace", "logdet", "solve",
    "transpose", "scaled", "with_layout",
)  # fmt: skip


def matrix_of(
    apply: Callable[[Array], Array], out_shape: tuple, in_shape: tuple, dtype: Any
) -> Array:
    """The numerator-layout matrix of the linear map ``apply``: its columns are ``apply`` of
    the unit vectors of ``in_shape`` in ``dtype``, one ``jax.vmap``-ped call."""
    n = size_of(in_shape)
    basis = jnp.eye(n, dtype=dtype).reshape((n, *in_shape))
    columns = jax.vmap(apply)(basis).reshape(n, size_of(out_shape))  # sizes: one may be 0
    return jnp.moveaxis(columns, 0, -1).reshape(tuple(out_shape) + tuple(in_shape))


#: The products a real operator extends to complex vectors (``complex_extended``).
COMPLEX_EXTENDED = ("mv", "vm")


def complex_extended(method: Callable) -> Callable:
    """``method(op, vector)`` (``mv``, ``vm``) of a real, complex-linear operator on a complex
    vector as its matrix acts on one: J (a + ib) = J a + i J b. Written for real vectors, a
    method may cast its result to the operator's real dtype and drop the imaginary part
    (``DiagonalPlusLowRank``), or run a JAX program of real tangents."""
    if getattr(method, "complex_extended", False):
        return method

    @functools.wraps(method)
    def run(self: Any, vector: ArrayLike) -> Array:
        if (
            jnp.iscomplexobj(vector)
            and not jnp.issubdtype(self.dtype, jnp.complexfloating)
            and self.complex_linear()
        ):
            real, imaginary = method(self, jnp.real(vector)), method(self, jnp.imag(vector))
            return real + 1j * imaginary
        return method(self, vector)

    run.complex_extended = True  # type: ignore[attr-defined]
    return run


#: Set while an eager ``solve`` runs: the solves it makes (a composite's factors, the
#: check's own probes) are the outer solve's, checked once, by it.
_SOLVING = threading.local()


def checked_solve(method: Callable) -> Callable:
    """``solve(op, rhs)`` that, called on concrete arrays, raises a ``ValueError`` for a
    singular op (``singular.check_solution``, named by ``op.solve_names()``) instead of
    returning the finite x that does not solve the system an LU's rounded zero pivot gives;
    where ``op.refuses_every_singular_solve`` (a Hessian's), also for a NaN solution or a
    condition number past 1 / (16 eps).
    Under a trace the solution is what the factorization gives, as ``jnp.linalg.solve``."""
    if getattr(method, "checked_solve", False):
        return method

    @functools.wraps(method)
    def run(self: Any, rhs: ArrayLike) -> Array:
        if getattr(_SOLVING, "inside", False):
            return method(self, rhs)
        _SOLVING.inside = True
        try:
            solution = method(self, rhs)
            call, matrix, symbol = self.solve_names()
            solve = functools.partial(method, self)
            check_solution(
                call, matrix, symbol, self, jnp.asarray(rhs), solution, solve,
                every_singular=self.refuses_every_singular_solve,
            )  # fmt: skip
        finally:
            _SOLVING.inside = False
        return solution

    run.checked_solve = True  # type: ignore[attr-defined]
    return run


def one_program_when_eager(method: Callable) -> Callable:
    """``method(op, *arrays)`` as one compiled program when called on concrete arrays.

    Called eagerly, JAX compiles each operation of a product separately (a composite's ``mv``
    is a dozen of them); under this wrapper the whole method is one program, compiled once
    per operator structure and shapes. Under a trace (``jit``, ``vmap``, the transform) the
    method runs as written."""
    if getattr(method, "one_program_when_eager", False):
        return method
    compiled = on_graph(method)

    @functools.wraps(method)
    def run(self: Any, *args: Any) -> Any:
        refuse_a_batch(self, method.__name__)
        if is_concrete_graph(self, args):
            return compiled(self, *args)
        return method(self, *args)

    run.one_program_when_eager = True  # type: ignore[attr-defined]
    return run


def on_graph(method: Callable, static_argnums: tuple[int, ...] = ()) -> Callable:
    """``jax.jit(method, static_argnums)`` for ``method(op, *args)``, with the operator's
    graph passed as it is: each node and array once.

    ``jax.jit`` flattens an operator as a tree, so a node reached on several paths (the
    Jacobian every branch of a ``cond`` starts from, a Hessian's factors of its gradient)
    is copied once per path: the expm Hessian's 37 arrays arrive as 3425, and the traced
    copies are densified one by one. Here the arrays go in once each, and the graph is
    rebuilt from them inside the trace with its sharing, so ``to_dense`` densifies a shared
    node once. The graph's recipe (each node's one-level tree structure and references) is
    static, kept on the operator (``kept_on``)."""
    shifted = tuple(i + 1 for i in static_argnums)  # after (recipe, arrays), not op

    def rebuilt(recipe: _Recipe, arrays: list, *args: Any) -> Any:
        return method(_rebuild(recipe, arrays), *args)

    compiled = jax.jit(rebuilt, static_argnums=(0, *shifted))

    @functools.wraps(method)
    def run(op: Any, *args: Any) -> Any:
        recipe, arrays = _graph(op)
        return compiled(recipe, arrays, *args)

    return run


def is_concrete_graph(op: Any, args: tuple = ()) -> bool:
    """``is_concrete(op, args)``, reading each of the operator's arrays once (its graph,
    kept on it), not once per path: a Hessian whose nodes are shared may flatten to
    millions of leaves."""
    if not is_concrete(args):
        return False
    return is_concrete(_graph(op)[1])


def _graph(op: Any) -> tuple[_Recipe, list]:
    """``_graph_of(op)``, kept on the operator."""
    return kept_on(op, "graph", lambda: _graph_of(op))


def _graph_of(root: Any) -> tuple[_Recipe, list]:
    """``(recipe, arrays)``: the nodes of ``root``'s graph, children first, each once by
    identity, as ``(treedef, references)`` (its one-level tree structure, a reference per
    leaf: ``(0, i)`` the array ``arrays[i]``, ``(1, j)`` the node ``recipe[j]``); each array
    once by identity. Iterative: a graph may be deeper than Python's recursion limit."""
    node_index: dict[int, int] = {}
    array_index: dict[int, int] = {}
    recipe: list[tuple] = []
    arrays: list[Any] = []
    stack: list[tuple[Any, list | None]] = [(root, None)]
    while stack:
        node, parts = stack.pop()
        if id(node) in node_index:
            continue
        if parts is None:  # first visit: its children go first
            parts = _one_level(node)
            stack.append((node, parts))
            stack.extend((p, None) for p in parts if isinstance(p, JacobianOperator))
            continue
        references = []
        for part in parts:
            if isinstance(part, JacobianOperator):
                references.append((1, node_index[id(part)]))
            else:
                index = array_index.get(id(part))
                if index is None:
                    index = array_index[id(part)] = len(arrays)
                    arrays.append(part)
                references.append((0, index))
        node_index[id(node)] = len(recipe)
        recipe.append(
            (jax.tree_util.tree_structure(node, is_leaf=_child_of(node)), tuple(references))
        )
    return _Recipe(tuple(recipe)), arrays


class _Recipe:
    """A graph's recipe as a static argument of ``jax.jit``: its hash computed once (an
    eager ``mv`` would otherwise hash every node's tree structure on each call)."""

    __slots__ = ("_hash", "nodes")

    def __init__(self, nodes: tuple) -> None:
        self.nodes = nodes
        self._hash = hash(nodes)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, _Recipe) and self._hash == other._hash and self.nodes == other.nodes
        )


def _child_of(node: Any) -> Callable[[Any], bool]:
    return lambda x: x is not node and isinstance(x, JacobianOperator)


def _one_level(node: Any) -> list:
    """The leaves of ``node`` with its operator children as leaves."""
    return jax.tree_util.tree_leaves(node, is_leaf=_child_of(node))


def _rebuild(recipe: _Recipe, arrays: list) -> Any:
    """The graph ``_graph_of`` described, each node built once from ``arrays``."""
    built: list[Any] = []
    for treedef, references in recipe.nodes:
        parts = [built[i] if kind == 1 else arrays[i] for kind, i in references]
        built.append(treedef.unflatten(parts))
    return built[-1]


def tree_signature(value: Any) -> tuple:
    """``value``'s structure as a tree and its leaves' shapes, dtypes and weak types, read
    over its graph (``_graph_of``), each node once: a node is numbered at its first place in
    the tree, so equal trees number alike whatever they share (as a tree, an RK4 step's
    Jacobians have a leaf per path)."""
    recipe, arrays = _graph_of(value)
    leaves = [
        (tuple(a.shape), jnp.dtype(a.dtype), bool(getattr(a, "weak_type", False))) for a in arrays
    ]
    numbers: dict[tuple, int] = {}
    of_node: list[int] = []
    for treedef, references in recipe.nodes:  # children first
        parts = tuple(of_node[i] if kind == 1 else leaves[i] for kind, i in references)
        of_node.append(numbers.setdefault((treedef, parts), len(numbers)))
    return of_node[-1], tuple(numbers)


class Shared:
    """A value holding operators (a list, a tuple, an operator), as a pytree whose leaves
    are its arrays each once, rebuilt with the sharing of its graphs. Passed into or
    returned from ``jax.jit`` as a tree, a graph shared by many paths (the Jacobians of a
    Runge-Kutta step, whose stages share the earlier ones) flattens to a leaf per path and
    compiles as many outputs: an RK4 step in a ``lax.scan`` took over 2 minutes and 10 GB."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _flatten_shared(shared: Shared) -> tuple[list, _Recipe]:
    recipe, arrays = _graph_of(shared.value)
    return arrays, recipe


jax.tree_util.register_pytree_node(
    Shared, _flatten_shared, lambda recipe, arrays: Shared(_rebuild(recipe, list(arrays)))
)


#: The methods of an operator that run as one program each when called eagerly (besides
#: ``to_dense``, whose layout and chunk size are compile-time arguments). Not ``solve``: an
#: eager solve checks the values (a singular Hessian is an error), which a program cannot.
EAGER_AS_ONE_PROGRAM = ("mv", "vm", "diagonal", "trace", "logdet")


def pytree(
    data: tuple[str, ...], meta: tuple[str, ...], *, as_graph: bool = False
) -> Callable[[type], type]:
    """Class decorator: the class as a frozen dataclass and a JAX pytree whose leaves are the
    ``data`` fields (arrays, operators) and whose static part is the ``meta`` fields. Its
    ``EAGER_AS_ONE_PROGRAM`` methods (its own or inherited) run as one program each when
    called eagerly (``one_program_when_eager``).

    ``as_graph``, for a class holding one operator (``data`` one field): its leaves are the
    held graph's arrays, each once, and it is rebuilt with its sharing (``_graph_of``). A
    Hessian's factors share the gradient's nodes: as a tree, a two-step RK4 loop's Hessian
    has 1.9 million leaves, and one returned from ``jax.jit`` came back with every shared
    node copied once per path (its ``to_dense`` densified each copy)."""

    def register(cls: type) -> type:
        cls = dataclasses.dataclass(frozen=True)(cls)
        if as_graph:
            _register_as_graph(cls, *data, meta)
        else:
            _register_with_ranks(cls, data, meta)
        for name in COMPLEX_EXTENDED:
            setattr(cls, name, complex_extended(getattr(cls, name)))
        for name in EAGER_AS_ONE_PROGRAM:
            setattr(cls, name, one_program_when_eager(getattr(cls, name)))
        cls.solve = checked_solve(cls.solve)
        return cls

    return register


def _ranks(children: Any) -> Any:
    """The number of axes of each array (or number) among an operator's children, nested
    as they are; ``None`` for an operator."""
    if isinstance(children, (tuple, list)):
        return tuple(_ranks(c) for c in children)
    if isinstance(children, JacobianOperator):
        return None
    return getattr(children, "ndim", None) if hasattr(children, "shape") else np.ndim(children)


def _batch_of(children: Any, ranks: Any) -> int | None:
    """How many axes ``children`` have beyond the ``ranks`` they were flattened with (a
    batch added by ``jax.vmap``, or a ``lax.scan``'s stacking), or ``None``."""
    if isinstance(children, JacobianOperator):
        return children.__dict__.get("_batch")
    if isinstance(children, (tuple, list)):
        if not isinstance(ranks, tuple) or len(ranks) != len(children):
            return None
        found = (_batch_of(c, r) for c, r in zip(children, ranks, strict=True))
        return next((b for b in found if b is not None), None)
    rank = getattr(children, "ndim", None)
    if rank is None or not isinstance(ranks, int) or rank <= ranks:
        return None  # a placeholder leaf (vmap's axis specs), or no batch
    return rank - ranks


class _Ranks:
    """Each child array's number of axes, carried in an operator's tree structure but not
    part of its equality: a structure is the same whatever its arrays' ranks, as for any
    pytree (``Diagonal(0)`` is a ``jax.vmap`` axis spec for a ``Diagonal``)."""

    __slots__ = ("ranks",)

    def __init__(self, ranks: Any) -> None:
        self.ranks = ranks

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Ranks)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"ranks{self.ranks}"


def _mark_batch(op: Any, batch: int | None, ranks: Any) -> Any:
    """``op`` rebuilt from a tree whose arrays had ``ranks`` axes: it flattens with them
    again, and with a ``batch`` (that many axes more) it is marked a batch of operators,
    whose methods refuse it (``_refuses_a_batch``) and which ``jax.vmap`` over it hands
    one operator at a time."""
    if ranks is not None:
        op.__dict__["_ranks"] = ranks
    if batch is not None:
        op.__dict__["_batch"] = batch
    return op


def _holds_placeholders(children: Any) -> bool:
    """Whether an operator's ``children`` hold something other than arrays where arrays
    go: ``jax.vmap``'s axis specs (an int, ``None``), what ``tree_map`` or equinox's
    filters put there, or an operator rebuilt from such."""
    if isinstance(children, JacobianOperator):
        return bool(children.__dict__.get("_placeholders"))
    if isinstance(children, (tuple, list)):
        return any(_holds_placeholders(c) for c in children)
    return not hasattr(children, "shape")


def _unchecked(cls: type, fields: dict[str, Any]) -> Any:
    """``cls(**fields)`` without its ``__post_init__``: a batch of operators being rebuilt,
    whose arrays have the batch's axes, which a check of its shapes (a ``Sum``'s terms
    alike) would read as one operator's, or a tree of placeholders (axis specs), which
    has no shapes to check."""
    op = object.__new__(cls)
    for field in dataclasses.fields(cls):
        if field.name in fields:
            value = fields[field.name]
        elif field.default is not dataclasses.MISSING:
            value = field.default
        else:
            value = field.default_factory()  # type: ignore[misc]
        object.__setattr__(op, field.name, value)
    return op


def _register_with_ranks(cls: type, data: tuple[str, ...], meta: tuple[str, ...]) -> None:
    """``cls`` as a pytree of its ``data`` fields (children) and static ``meta`` fields,
    whose structure also records each child array's number of axes: one rebuilt from
    arrays with more (``jax.vmap`` returning an operator stacks its arrays) is a batch of
    operators, marked so (a ``Diagonal`` of stacked values would read the batch as more
    entries: a trace summed over the batch)."""

    keys = [jax.tree_util.GetAttrKey(name) for name in data]

    def flatten(op: Any) -> tuple[list, tuple]:
        children = [getattr(op, name) for name in data]
        ranks = _Ranks(op.__dict__.get("_ranks") or _ranks(children))
        return children, (tuple(getattr(op, name) for name in meta), ranks)

    def flatten_with_keys(op: Any) -> tuple[list, tuple]:
        children, aux = flatten(op)
        return list(zip(keys, children, strict=True)), aux

    def unflatten(aux: tuple, children: Any) -> Any:
        values, ranks = aux[0], aux[1].ranks
        children = list(children)
        fields = dict(zip(data, children, strict=True)) | dict(zip(meta, values, strict=True))
        batch = _batch_of(children, ranks)
        if batch is None and not _holds_placeholders(children):
            return _mark_batch(cls(**fields), None, ranks)
        op = _unchecked(cls, fields)
        if batch is None:  # a tree of axis specs or tree_map's placeholders, not arrays
            op.__dict__["_placeholders"] = True
        return _mark_batch(op, batch, ranks)

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)


def _register_as_graph(cls: type, held: str, meta: tuple[str, ...]) -> None:
    """``cls`` as a pytree whose leaves are the arrays of its ``held`` operator's graph,
    each once, and whose static part is the graph's recipe and the ``meta`` fields."""

    def flatten(op: Any) -> tuple[list, tuple]:
        recipe, arrays = _graph(getattr(op, held))
        return arrays, (recipe, tuple(getattr(op, name) for name in meta))

    def unflatten(aux: tuple, arrays: Any) -> Any:
        recipe, values = aux
        arrays = list(arrays)
        inner = _rebuild(recipe, arrays)
        # Its graph is the one it was rebuilt from: read again by identity, equal leaves
        # that are not arrays (tree_map's or equinox's filters' True, vmap's 0) would be one
        inner.__dict__.setdefault("_graph", (recipe, arrays))
        op = cls(**{held: inner}, **dict(zip(meta, values, strict=True)))
        return _mark_batch(op, getattr(inner, "__dict__", {}).get("_batch"), None)

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)


try:  # the current trace: a dense matrix is reused only where it was traced
    from jax._src.core import trace_ctx as _trace_context
except ImportError:  # a JAX without it: every shared operator is densified again
    _trace_context = None

_SHARED = threading.local()


@contextlib.contextmanager
def _dense_once() -> Iterator[None]:
    """Within it (one ``to_dense``), an operator reached on several paths of a lazy graph
    (the Jacobian every branch of a traced ``cond`` starts from) is densified once: its
    ``_numerator`` is kept by identity and trace. Without it, nested conds made the work
    grow as the number of paths (``jit`` of an expm Hessian: 170 s, now 4 s)."""
    if getattr(_SHARED, "numerators", None) is not None or _trace_context is None:
        yield
        return
    _SHARED.numerators = {}
    try:
        yield
    finally:
        _SHARED.numerators = None


@contextlib.contextmanager
def keeping_width() -> Iterator[None]:
    """Within it, a cast's transpose (``ChangeType``) keeps the wider of its two float
    types: rows pulled back to build a structure (a low-rank factor ``B^T V``, a dense
    matrix by rows) keep the float64 digits of a map from float32 values, which
    ``jax.jacfwd`` has (it pushes the float32 unit tangents forward, exactly), where
    ``jax.vjp`` rounds its cotangent to float32. A user's ``vm`` is ``jax.vjp``'s."""
    before = getattr(_SHARED, "keep_width", False)
    _SHARED.keep_width = True
    try:
        yield
    finally:
        _SHARED.keep_width = before


def keeps_width() -> bool:
    """Whether the calling thread is inside ``keeping_width``."""
    return getattr(_SHARED, "keep_width", False)


def _once_per_trace(method: Callable[..., Array]) -> Callable[..., Array]:
    """``method(op, *args)`` kept by the identities of the operator and the arguments, and
    the trace, within one ``to_dense`` (``_dense_once``) or the outermost such call.

    A shared part of a lazy graph is reached on many paths: ``_numerator`` densifies it
    once, not once per path (nested conds of an expm Hessian), and ``mv`` / ``vm`` push a
    vector through it once (the terms of a sum meet one tangent at a common inner factor:
    a flax LSTM's Hessian made 11,001 ``mv`` on 93 nodes). Operator, arguments and trace
    are held in the memo, so their ids stay theirs while it lives."""
    name = method.__name__

    @functools.wraps(method)
    def once(op: Any, *args: Any) -> Array:
        memo = getattr(_SHARED, "numerators", None)
        if memo is None:
            if _trace_context is None:
                return method(op, *args)
            with _dense_once():  # the outermost call keeps the memo for those it makes
                return once(op, *args)
        trace = _trace_context.trace
        held = (op, *args)
        key = (name, keeps_width(), *map(id, held))
        kept = memo.get(key)
        if kept is not None and kept[1] is trace and all(map(operator.is_, kept[0], held)):
            return kept[2]
        value = method(op, *args)
        memo[key] = (held, trace, value)
        return value

    once.once_per_trace = True
    return once


#: log|det| and a solve of dense matrices; float16 / bfloat16 in float32, rounded once
#: (jaxlib's CPU LAPACK has no half-precision LU).
log_abs_det = in_working_precision(lambda matrix: jnp.linalg.slogdet(matrix)[1])
dense_solve = in_working_precision(jnp.linalg.solve)


def kept_on(
    op: Any, name: str, compute: Callable[[], Any], keep: Callable[[Any], bool] | None = None
) -> Any:
    """``compute()``, kept on the (immutable) operator: a property of the whole graph below
    it, which compositions ask of every node they meet. With ``keep``, a value is kept only
    where ``keep(value)`` (an array computed under a trace belongs to that trace)."""
    kept = op.__dict__.get(f"_{name}")
    if kept is None:
        kept = compute()
        if keep is None or keep(kept):
            op.__dict__[f"_{name}"] = kept  # not a field: a frozen dataclass's __dict__ holds it
    return kept


class JacobianOperator:
    """A structured Jacobian: a linear map from tangents of ``in_shape`` to tangents of
    ``out_shape`` (see ``matcalc_jax.operators``)."""

    layout: Layout

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("_numerator", "mv", "vm"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "once_per_trace", False):
                setattr(cls, name, _once_per_trace(method))
        for name in READ_AS_ONE:
            if name in cls.__dict__:
                setattr(cls, name, _refuses_a_batch(cls.__dict__[name]))

    @property
    def out_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def in_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def dtype(self) -> Any:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``to_dense()`` in this operator's layout."""
        if self.layout == "numerator":
            return self.out_shape + self.in_shape
        return self.in_shape + self.out_shape

    def mv(self, tangent: ArrayLike) -> Array:
        """J v: a tangent of ``in_shape`` to a tangent of ``out_shape`` (what ``jax.jvp`` gives)."""
        raise NotImplementedError

    def vm(self, cotangent: ArrayLike) -> Array:
        """u^T J: a cotangent of ``out_shape`` to one of ``in_shape`` (what ``jax.vjp`` gives)."""
        raise NotImplementedError

    def rmv(self, cotangent: ArrayLike) -> Array:
        """J^T u, the same as ``vm``."""
        return self.vm(cotangent)

    def _numerator(self) -> Array:
        """The dense Jacobian in numerator layout, ``out_shape + in_shape``."""
        raise NotImplementedError

    def to_dense(self, layout: Layout | None = None, *, chunk_size: int | None = None) -> Array:
        """The dense Jacobian in ``layout`` (default: the operator's own).

        ``chunk_size=k`` builds it from ``k`` products at a time (``vm`` of unit cotangents
        when the output is the smaller side, ``mv`` of unit tangents otherwise, in a
        ``jax.lax.map`` loop): the same array, with intermediates bounded by ``k`` products
        instead of those of the whole matrix at once. ``None`` builds it in one piece.
        """
        layout = self.layout if layout is None else check_layout("to_dense", layout)
        chunk_size = check_chunk_size(f"{type(self).__name__}.to_dense", chunk_size)
        if is_concrete_graph(self):
            return _dense_program(self, layout, chunk_size)
        return self._dense(layout, chunk_size)

    def _dense(self, layout: Layout, chunk_size: int | None) -> Array:
        if chunk_size is None:
            with _dense_once():
                numerator = self._numerator()
        else:
            numerator = self._numerator_in_chunks(chunk_size)
        return from_numerator(numerator, len(self.out_shape), layout)

    def _numerator_in_chunks(self, chunk_size: int) -> Array:
        out_shape, in_shape = tuple(self.out_shape), tuple(self.in_shape)
        out_size, in_size = size_of(out_shape), size_of(in_shape)
        if out_size <= in_size and self._rows_are_its_matrix():  # rows u^T J, fewer
            with keeping_width():
                rows = assemble(
                    lambda u: self.vm(u.reshape(out_shape)).reshape(-1),
                    out_size, self.dtype, (in_size,), chunk_size, as_columns=False,
                )  # fmt: skip
            # jax.jacfwd's single rounding of the wider rows to the map's dtype
            rows = rows.astype(self.dtype)
        else:  # columns J v, as jax.jacfwd
            rows = assemble(
                lambda v: self.mv(v.reshape(in_shape)).reshape(-1),
                in_size, self.dtype, (out_size,), chunk_size, as_columns=True,
            )  # fmt: skip
        return rows.reshape(out_shape + in_shape)

    def _rows_are_its_matrix(self) -> bool:
        """True when the rows ``vm`` gives are those of the matrix ``mv`` applies: a real
        map that composes as a matrix. Not through complex values (``vm`` of a map from real
        tangents keeps a real part), a rounding (``vm`` rounds the cotangent, jax.jacfwd
        the tangent) or a backward rule not linear in its cotangent."""
        if not (
            jnp.issubdtype(self.dtype, jnp.floating)
            and not self.real_to_complex
            and self.composes_as_matrix()
            and self.commutes_with_scaling()
            and not self.narrows()
        ):
            return False
        cotangent = jax.ShapeDtypeStruct(tuple(self.out_shape), self.dtype)
        return jnp.issubdtype(jax.eval_shape(self.vm, cotangent).dtype, jnp.floating)

    def with_layout(self, layout: Layout) -> JacobianOperator:
        """The same map, arranged in ``layout`` by ``to_dense`` and read in its order by ``@``."""
        layout = check_layout("with_layout", layout)
        return dataclasses.replace(self, layout=layout)  # type: ignore[type-var]

    # ------------------------------------------------------------------ unary algebra

    def transpose(self) -> JacobianOperator:
        """J^T, the transpose of the map: ``J.T.mv(u) == J.vm(u)``, ``J.T.vm(v) == J.mv(v)``,
        and ``J.T.to_dense()`` is ``J.to_dense()`` with its out and in axes swapped (in the
        transposed map's dtype: of a map to a narrower type, ``jax.jacrev``'s rows)."""
        return Transposed(self)

    @property
    def T(self) -> JacobianOperator:  # noqa: N802
        return self.transpose()

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        """c J for a scalar c."""
        return Scaled(jnp.asarray(scale), self)

    def diagonal(self) -> Array:
        """The diagonal, of shape ``in_shape``; only for square operators (in = out shape)."""
        return jnp.diagonal(self._square_matrix("diagonal")).reshape(self.in_shape)

    def trace(self) -> Array:
        """tr J, the sum of the diagonal; only for square operators."""
        self._check_square("trace")
        return jnp.sum(self.diagonal())

    def logdet(self) -> Array:
        """log |det J| (NaN-free: -inf for a singular map); only for square operators."""
        return log_abs_det(self._square_matrix("logdet"))

    def solve(self, rhs: ArrayLike) -> Array:
        """x with J x = rhs (``rhs`` of ``out_shape``, x of ``in_shape``); only for square
        operators. Where J is singular: NaN (in a singular block only, for a block diagonal
        J) where the factorization meets an exact zero pivot; called outside ``jit``, a
        ``ValueError`` where it would return a finite x that does not solve the system (a
        step of iterative refinement changes it by half its norm: J singular to working
        precision), and under ``jit`` that x, as ``jnp.linalg.solve``."""
        matrix = self._square_matrix("solve")
        rhs = check_tangent(self, "solve", rhs, self.out_shape)
        return dense_solve(matrix, rhs.reshape(-1)).reshape(self.in_shape)

    def solve_names(self) -> tuple[str, str, str]:
        """How a singular ``solve``'s error names the call, the matrix and its symbol."""
        return type(self).__name__, "the operator", "J"

    #: False where ``solve`` answers an exact zero pivot with NaN (in that block only) and
    #: an eager solve refuses only a finite x that does not solve the system; True where it
    #: refuses every singular system (a Hessian's, a Gauss-Newton matrix's).
    refuses_every_singular_solve = False

    #: True where x_i = b_i / d_i, right to the last digit whatever the condition number
    #: (``Identity``, ``Diagonal``): the singular check asks no condition number of it.
    solved_entrywise = False

    def solve_structure(self) -> JacobianOperator:
        """The operator whose structure ``solve`` uses: itself, or the one held under a scale
        or a rounding to the program's dtypes."""
        return self

    def _square_matrix(self, what: str) -> Array:
        """The dense numerator Jacobian as an (n, n) matrix, for the default rules."""
        self._check_square(what)
        n = size_of(self.in_shape)
        with _dense_once():
            return self._numerator().reshape(n, n)

    def _check_square(self, what: str) -> None:
        if self.in_shape != self.out_shape:
            raise ValueError(
                f"{what}() of a {type(self).__name__} needs a square operator; got out shape "
                f"{self.out_shape} and in shape {self.in_shape}"
            )

    # -------------------------------------------------------------------- structure

    def children(self) -> tuple[JacobianOperator, ...]:
        """The operators this one is built from (none for a leaf type, and none for a type
        of the user's that is not a dataclass)."""
        if not dataclasses.is_dataclass(self):
            return ()
        found: list[JacobianOperator] = []
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            values = value if isinstance(value, tuple) else (value,)
            found.extend(v for v in values if isinstance(v, JacobianOperator))
        return tuple(found)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        """Pairs (output axis, input axis) along which the map mixes nothing: the Jacobian is
        block-diagonal along them (a map applied independently to each slice)."""
        return frozenset()

    #: True for a map that is real-linear only (a real part, a conjugate): a complex scalar
    #: does not commute with it.
    real_linear_only = False

    def complex_linear(self) -> bool:
        """True when ``J (c v) = c J v`` for complex scalars c as well as real ones."""
        return kept_on(self, "complex_linear", lambda: not self.real_linear_only and all(
            c.complex_linear() for c in self.children()
        ))  # fmt: skip

    #: True for a map that is linear only up to a rounding of its tangent
    #: (``reduce_precision``): a scalar does not commute with it, ``J (c v)`` rounds c v.
    rounds = False

    def commutes_with_scaling(self) -> bool:
        """True when ``J (c v) = c J v`` for real scalars c (every map but a rounding)."""
        return kept_on(self, "commutes_with_scaling", lambda: not self.rounds and all(
            c.commutes_with_scaling() for c in self.children()
        ))  # fmt: skip

    #: True for a cast to a float type of fewer digits (float32 to bfloat16): JAX rounds
    #: the tangent there, its transpose the cotangent.
    narrows_type = False

    def narrows(self) -> bool:
        """True when a cast to fewer digits is part of the map: c J v is then not J (c v)
        to the last digit of the narrower type, nor are ``vm``'s rows ``mv``'s matrix."""
        return kept_on(self, "narrows", lambda: self.narrows_type or any(
            c.narrows() for c in self.children()
        ))  # fmt: skip

    #: False for a map whose ``vm`` is not linear in its cotangent (``Pullback``: a
    #: ``custom_vjp``'s backward rule such as ``clip_gradient``'s, run as JAX runs it).
    linear_in_cotangent = True

    def composes_as_matrix(self) -> bool:
        """True when every map in this one has a ``vm`` linear in its cotangent. Where one
        has not, no matrix stands for it ((2 clip)'s rows are clip(2 e_i), not 2 clip(e_i)):
        ``compose`` and ``add`` then keep the graph as the program built it (no rule merges
        it, regroups it or moves a scale across it), so that ``vm`` hands each backward rule
        the cotangent JAX's transpose hands it."""
        return kept_on(self, "composes_as_matrix", lambda: self.linear_in_cotangent and all(
            c.composes_as_matrix() for c in self.children()
        ))  # fmt: skip

    @property
    def real_to_complex(self) -> bool:
        """True for a map from real tangents to complex ones (``x + 0i``, a real DFT, and
        what is composed after them): JAX's transpose of such a map (``vm``) keeps the real
        part of the matrix transpose's result, so ``vm`` is not the transpose of the matrix
        ``mv`` applies, and ``compose`` fuses no neighbour with it (see there); an operator
        built of others is one when any of them is."""
        return jnp.issubdtype(self.dtype, jnp.complexfloating) and any(
            c.real_to_complex for c in self.children()
        )

    #: True for the maps whose compositions keep nothing of the other side but its shape
    #: (the identity, the zero map): ``compose`` applies their rules to any operand.
    trivial_in_composition = False

    def describe(self) -> str:
        """A short note on the parameters, for ``print``."""
        return ""

    @property
    def fallbacks(self) -> tuple[str, ...]:
        """The parts derived by the autodiff fallback (see ``matcalc_jax.jacobian``)."""
        own = (self.describe(),) if getattr(self, "is_fallback", False) else ()
        return own + tuple(note for child in self.children() for note in child.fallbacks)

    def _lines(self, depth: int) -> list[str]:
        note = self.describe()
        head = (
            f"{'  ' * depth}{type(self).__name__}{' ' + note if note else ''}: "
            f"{_shape(self.out_shape)} <- {_shape(self.in_shape)}, "
            f"{jnp.dtype(self.dtype).name}, stores {storage(self)}"
        )
        return [head] + [line for c in self.children() for line in c._lines(depth + 1)]

    def __str__(self) -> str:
        """The structure as an indented tree: each part's type, shapes, dtype and the number
        of array entries it stores."""
        return "\n".join(self._lines(0))

    # ---------------------------------------------------------------------- operators

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Refused: ``np.asarray(J)`` made a 0-d array holding the operator."""
        raise TypeError(
            f"a {type(self).__name__} is a structured Jacobian, not an array: "
            "J.to_dense() gives its dense array"
        )

    def __matmul__(self, other: JacobianOperator) -> JacobianOperator:
        if not isinstance(other, JacobianOperator):
            return NotImplemented
        if self.layout != other.layout:
            raise ValueError(
                f"cannot compose a {self.layout}-layout {type(self).__name__} with a "
                f"{other.layout}-layout {type(other).__name__}; use .with_layout() first"
            )
        if self.layout == "numerator":
            return compose(self, other)
        return compose(other, self)

    def __add__(self, other: JacobianOperator) -> JacobianOperator:
        if not isinstance(other, JacobianOperator):
            return NotImplemented
        return add(self, other)

    def __mul__(self, scale: ArrayLike) -> JacobianOperator:
        scale = jnp.asarray(scale)
        if scale.ndim != 0:
            raise ValueError(
                f"{type(self).__name__} * c: c must be a scalar (an operator is scaled as a "
                f"whole); got an array of shape {tuple(scale.shape)}"
            )
        return times_scalar(self, scale)

    __rmul__ = __mul__

    def __neg__(self) -> JacobianOperator:
        return self.scaled(jnp.asarray(-1, self.dtype))


@dataclasses.dataclass(frozen=True)
class ShapedOperator(JacobianOperator):
    """An operator whose shapes and dtype are compile-time fields (``out_sizes``,
    ``in_sizes``, ``dtype_name``), for maps that store no array to read them from."""

    out_sizes: tuple[int, ...]
    in_sizes: tuple[int, ...]
    dtype_name: str

    out_shape = property(lambda self: tuple(self.out_sizes))
    in_shape = property(lambda self: tuple(self.in_sizes))
    dtype = property(lambda self: jnp.dtype(self.dtype_name))


for _name in READ_AS_ONE:  # the defaults, as the subclasses' own (__init_subclass__)
    if _name in JacobianOperator.__dict__:
        setattr(JacobianOperator, _name, _refuses_a_batch(JacobianOperator.__dict__[_name]))

#: ``to_dense`` of concrete operators as one compiled program (see ``one_program_when_eager``).
_dense_program = on_graph(JacobianOperator._dense, static_argnums=(1, 2))


# ------------------------------------------------------------------- binary algebra

_BinaryRule = Callable[[Any, Any], Any]
_COMPOSITION_RULES: dict[tuple[type, type], _BinaryRule] = {}
_SUM_RULES: dict[tuple[type, type], _BinaryRule] = {}


def composition_rule(outer: type, inner: type) -> Callable[[_BinaryRule], _BinaryRule]:
    """Register ``rule(outer, inner)`` as the composition of an ``outer`` after an ``inner``
    operator (subclasses included). A rule may return ``None`` for operands whose structure
    it cannot keep; the next rule that applies (for the operands' base types) is then tried,
    and the lazy ``Composition`` is used when none does."""

    def decorate(rule: _BinaryRule) -> _BinaryRule:
        _COMPOSITION_RULES[outer, inner] = rule
        _lookup.cache_clear()
        return rule

    return decorate


def addition_rule(left: type, right: type) -> Callable[[_BinaryRule], _BinaryRule]:
    """Register ``rule(left, right)`` as the sum of the two operator types (in this order;
    register both orders for a symmetric rule). ``None`` falls back to ``Sum``."""

    def decorate(rule: _BinaryRule) -> _BinaryRule:
        _SUM_RULES[left, right] = rule
        _lookup.cache_clear()
        return rule

    return decorate


@functools.cache
def _lookup(table: str, left: type, right: type) -> tuple[_BinaryRule, ...]:
    """The rules registered for a pair of types and their bases, most specific first."""
    rules = _COMPOSITION_RULES if table == "compose" else _SUM_RULES
    return tuple(
        rules[left_type, right_type]
        for left_type in left.__mro__
        for right_type in right.__mro__
        if (left_type, right_type) in rules
    )


def _first(table: str, left: JacobianOperator, right: JacobianOperator) -> Any:
    """The result of the first applicable rule (one that does not return ``None``)."""
    for rule in _lookup(table, type(left), type(right)):
        result = rule(left, right)
        if result is not None:
            return result
    return None


def compose(outer: JacobianOperator, inner: JacobianOperator) -> JacobianOperator:
    """dz/dx from dz/dy (``outer``) and dy/dx (``inner``), keeping the structure the
    registered rules know; layout-free (``@`` reads its operands in the layout's order and
    calls this)."""
    refuse_a_batch(outer, "compose")
    refuse_a_batch(inner, "compose")
    if outer.in_shape != inner.out_shape:
        raise ValueError(
            f"cannot compose: the outer {type(outer).__name__} takes {outer.in_shape} but the "
            f"inner {type(inner).__name__} gives {inner.out_shape}"
        )
    _check_same_layout("compose", outer, inner)
    if not (outer.composes_as_matrix() and inner.composes_as_matrix()):
        return Composition(outer, inner)
    if jnp.issubdtype(inner.dtype, jnp.complexfloating) and not outer.complex_linear():
        return Composition(outer, inner)  # the rules may move complex factors across outer
    trivial = outer.trivial_in_composition or inner.trivial_in_composition
    if not (outer.commutes_with_scaling() and inner.commutes_with_scaling()) and not trivial:
        # A rounding's map is not a matrix: round(U V^T v) is neither U round(V^T v) nor
        # round(U) V^T v, so no rule folds it into a neighbour's factors.
        return Composition(outer, inner)
    if (outer.real_to_complex or inner.real_to_complex) and not trivial:
        # The rules read a map's matrix transpose from its vm, which for a map from real
        # tangents keeps only the real part (sum(c x) with complex c: a row of Re(c)).
        return Composition(outer, inner)
    result = _first("compose", outer, inner)
    return Composition(outer, inner) if result is None else result


def add(left: JacobianOperator, right: JacobianOperator) -> JacobianOperator:
    """left + right, keeping the structure the registered rules know."""
    refuse_a_batch(left, "add")
    refuse_a_batch(right, "add")
    if (left.out_shape, left.in_shape) != (right.out_shape, right.in_shape):
        raise ValueError(
            f"cannot add a {type(right).__name__} ({right.out_shape} <- {right.in_shape}) to a "
            f"{type(left).__name__} ({left.out_shape} <- {left.in_shape})"
        )
    _check_same_layout("add", left, right)
    if not (left.composes_as_matrix() and right.composes_as_matrix()):
        return Sum((left, right))
    if not (left.commutes_with_scaling() and right.commutes_with_scaling()):
        return Sum((left, right))  # a rounding's map is not a matrix to merge (see compose)
    result = _first("sum", left, right)
    return Sum((left, right)) if result is None else result


def _check_same_layout(what: str, first: JacobianOperator, second: JacobianOperator) -> None:
    if first.layout != second.layout:
        raise ValueError(
            f"cannot {what} a {first.layout}-layout {type(first).__name__} and a "
            f"{second.layout}-layout {type(second).__name__}; use .with_layout() first"
        )


# ------------------------------------------------------------------------ composites


@pytree(("operator",), ())
class Transposed(JacobianOperator):
    """J^T of an operator with no cheaper transpose: ``mv`` is its ``vm`` and back."""

    operator: JacobianOperator

    layout = property(lambda self: self.operator.layout)  # type: ignore[assignment]
    out_shape = property(lambda self: self.operator.in_shape)
    in_shape = property(lambda self: self.operator.out_shape)

    @property
    def dtype(self) -> Any:
        """What ``mv`` returns: the held operator's ``vm`` of a cotangent of its dtype, as
        ``jax.vjp`` types it (real for the transpose of a map from real tangents to complex
        ones, complex for that of Im w, float32 for that of a cast from float32 to float16)."""
        return kept_on(self, "dtype", lambda: jnp.dtype(jax.eval_shape(
            self.operator.vm, jax.ShapeDtypeStruct(self.operator.out_shape, self.operator.dtype)
        ).dtype))  # fmt: skip

    def complex_linear(self) -> bool:
        # J^T of a map from real tangents keeps a real part (JAX's pairing): J^T (i u) is
        # not i J^T u, and no complex vector splits over it into real and imaginary parts.
        return kept_on(self, "complex_linear", lambda: self.operator.complex_linear() and not (
            self.operator.real_to_complex
        ))  # fmt: skip

    def mv(self, tangent: ArrayLike) -> Array:
        return self.operator.vm(tangent)

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.operator.mv(cotangent)

    def _numerator(self) -> Array:
        if not self.operator.complex_linear():
            # no complex matrix stands for the map (Im w, conj w, an inverse real DFT:
            # their matrix on real tangents is not their transpose's): the columns are
            # the transpose applied to the unit cotangents, J^T e_i = (e_i^T J)^T
            return matrix_of(self.mv, self.out_shape, self.in_shape, self.operator.dtype)
        return from_numerator(
            self.operator._numerator(), len(self.operator.out_shape), "denominator"
        )

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return Transposed(self.operator.with_layout(layout))

    def transpose(self) -> JacobianOperator:
        return self.operator

    def diagonal(self) -> Array:
        return self.operator.diagonal()

    def trace(self) -> Array:
        return self.operator.trace()

    def logdet(self) -> Array:
        return self.operator.logdet()

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return frozenset((i, o) for o, i in self.operator.batch_axes())


class Wrapped(JacobianOperator):
    """An operator that holds another (its ``operator`` field) and is that map: shapes,
    products, the dense matrix and the square functionals are the held operator's. A
    subclass adds what it carries (notes, a name) and says how it rebuilds itself
    (``with_layout``, ``transpose``)."""

    operator: JacobianOperator

    layout = property(lambda self: self.operator.layout)  # type: ignore[assignment]
    out_shape = property(lambda self: self.operator.out_shape)
    in_shape = property(lambda self: self.operator.in_shape)
    dtype = property(lambda self: self.operator.dtype)

    def mv(self, tangent: ArrayLike) -> Array:
        return self.operator.mv(tangent)

    def vm(self, cotangent: ArrayLike) -> Array:
        return self.operator.vm(cotangent)

    def _numerator(self) -> Array:
        return self.operator._numerator()

    def diagonal(self) -> Array:
        return self.operator.diagonal()

    def trace(self) -> Array:
        return self.operator.trace()

    def logdet(self) -> Array:
        return self.operator.logdet()

    def solve(self, rhs: ArrayLike) -> Array:
        return self.operator.solve(rhs)

    def solve_structure(self) -> JacobianOperator:
        return self.operator.solve_structure()

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return self.operator.batch_axes()


@pytree(("scale", "operator"), ())
class Scaled(JacobianOperator):
    """c J for a scalar c."""

    scale: Array
    operator: JacobianOperator

    def __post_init__(self) -> None:
        if isinstance(self.operator, JacobianOperator) and np.ndim(self.scale) != 0:
            raise ValueError(
                f"Scaled(scale, operator): scale must be a number (a 0-d array); got shape "
                f"{tuple(np.shape(self.scale))} (rows scaled by d: Diagonal(d) @ J)"
            )

    layout = property(lambda self: self.operator.layout)  # type: ignore[assignment]
    out_shape = property(lambda self: self.operator.out_shape)
    in_shape = property(lambda self: self.operator.in_shape)
    dtype = property(lambda self: jnp.result_type(self.scale, self.operator.dtype))

    def mv(self, tangent: ArrayLike) -> Array:
        return self.scale * self.operator.mv(tangent)

    def vm(self, cotangent: ArrayLike) -> Array:
        # (c J)^T u = J^T (c u): the scale meets the cotangent first, which matters for a
        # complex c and a J that ends in a real part. A complex c of a real J maps real
        # tangents to complex ones: JAX's transpose keeps the real part, J^T Re(c u).
        scaled = self.scale * jnp.asarray(cotangent)
        return self.operator.vm(jnp.real(scaled) if self._complex_of_real() else scaled)

    def _complex_of_real(self) -> bool:
        return jnp.iscomplexobj(self.scale) and not jnp.issubdtype(
            self.operator.dtype, jnp.complexfloating
        )

    @property
    def real_to_complex(self) -> bool:
        return self._complex_of_real() or self.operator.real_to_complex

    def _numerator(self) -> Array:
        return self.scale * self.operator._numerator()

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return Scaled(self.scale, self.operator.with_layout(layout))

    def transpose(self) -> JacobianOperator:
        # (c X)^T = c X^T for a complex c only where X is complex-linear on complex
        # tangents: not for a real part, nor for a map from real tangents (x + 0i, a real
        # DFT, a real X itself, which c makes complex), whose transpose keeps the real
        # part: Re(X^T (c u)) is not c Re(X^T u)
        if jnp.iscomplexobj(self.scale) and not (
            self.operator.complex_linear() and not self.real_to_complex
        ):
            return Transposed(self)
        return Scaled(self.scale, self.operator.transpose())

    def scaled(self, scale: ArrayLike) -> JacobianOperator:
        return Scaled(jnp.asarray(scale) * self.scale, self.operator)

    def diagonal(self) -> Array:
        return self.scale * self.operator.diagonal()

    def trace(self) -> Array:
        return self.scale * self.operator.trace()

    def logdet(self) -> Array:
        self._check_square("logdet")
        return size_of(self.in_shape) * jnp.log(jnp.abs(self.scale)) + self.operator.logdet()

    def solve(self, rhs: ArrayLike) -> Array:
        return self.operator.solve(rhs) / self.scale

    def solve_structure(self) -> JacobianOperator:
        return self.operator.solve_structure()

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return self.operator.batch_axes()

    def describe(self) -> str:
        return "" if self.scale.ndim else "c"


@pytree(("terms",), ())
class Sum(JacobianOperator):
    """J1 + J2 + ...: terms of the same shapes and layout."""

    terms: tuple[JacobianOperator, ...]

    def __post_init__(self) -> None:
        if not all(isinstance(t, JacobianOperator) for t in self.terms):
            return  # a pytree being rebuilt with placeholder leaves
        first = self.terms[0]
        for term in self.terms[1:]:
            if (term.out_shape, term.in_shape, term.layout) != (
                first.out_shape,
                first.in_shape,
                first.layout,
            ):
                raise ValueError(
                    f"cannot add a {term.layout}-layout {type(term).__name__} "
                    f"({term.out_shape} <- {term.in_shape}) to a {first.layout}-layout "
                    f"{type(first).__name__} ({first.out_shape} <- {first.in_shape})"
                )

    layout = property(lambda self: self.terms[0].layout)  # type: ignore[assignment]
    out_shape = property(lambda self: self.terms[0].out_shape)
    in_shape = property(lambda self: self.terms[0].in_shape)
    dtype = property(lambda self: jnp.result_type(*(t.dtype for t in self.terms)))

    def _each(self, method: Callable[[JacobianOperator], Any]) -> Any:
        return functools.reduce(operator.add, (method(t) for t in self.terms))

    def mv(self, tangent: ArrayLike) -> Array:
        return self._each(lambda t: t.mv(tangent))

    def vm(self, cotangent: ArrayLike) -> Array:
        return accumulated_vm(self, cotangent)

    def _numerator(self) -> Array:
        return self._each(lambda t: t._numerator())

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return Sum(tuple(t.with_layout(layout) for t in self.terms))

    def transpose(self) -> JacobianOperator:
        return Sum(tuple(t.transpose() for t in self.terms))

    def diagonal(self) -> Array:
        return self._each(lambda t: t.diagonal())

    def trace(self) -> Array:
        return self._each(lambda t: t.trace())

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        # Kept: a term shared by many paths (a recurrent net's Hessian) is asked once, not
        # once per path, a number that grows exponentially with the graph's depth.
        return kept_on(self, "batch_axes", self._batch_axes)

    def _batch_axes(self) -> frozenset[tuple[int, int]]:
        return frozenset.intersection(*(t.batch_axes() for t in self.terms))


@pytree(("outer", "inner"), ())
class Composition(JacobianOperator):
    """outer o inner: apply ``inner`` (dy/dx), then ``outer`` (dz/dy); lazy."""

    outer: JacobianOperator
    inner: JacobianOperator

    layout = property(lambda self: self.outer.layout)  # type: ignore[assignment]
    out_shape = property(lambda self: self.outer.out_shape)
    in_shape = property(lambda self: self.inner.in_shape)

    @property
    def dtype(self) -> Any:
        """What ``outer.mv`` returns: the outer map's dtype, complex when a complex-linear
        real map follows a complex one (a real part is not complex-linear: it stays real).
        Kept once computed: it reads the whole graph below, which may share nodes."""
        return kept_on(self, "dtype", self._promoted_dtype)

    def _promoted_dtype(self) -> Any:
        outer, inner = self.outer.dtype, self.inner.dtype
        if (
            jnp.issubdtype(inner, jnp.complexfloating)
            and not jnp.issubdtype(outer, jnp.complexfloating)
            and self.outer.complex_linear()
        ):
            return jnp.result_type(outer, inner)
        return outer

    def mv(self, tangent: ArrayLike) -> Array:
        return self.outer.mv(self.inner.mv(tangent))

    def vm(self, cotangent: ArrayLike) -> Array:
        return accumulated_vm(self, cotangent)

    def _numerator(self) -> Array:
        # Apply the outer operator to every column of the inner Jacobian: a broadcast for
        # a diagonal outer factor, one matrix product for a dense one.
        if size_of(self.inner.out_shape) == 0:  # through an empty intermediate: zero
            return jnp.zeros(self.out_shape + self.in_shape, self.dtype)
        inner = self.inner._numerator()
        columns = inner.reshape((*self.inner.out_shape, size_of(self.in_shape)))
        dense = jax.vmap(self.outer.mv, in_axes=-1, out_axes=-1)(columns)
        return dense.reshape(self.out_shape + self.in_shape)

    def with_layout(self, layout: Layout) -> JacobianOperator:
        return Composition(self.outer.with_layout(layout), self.inner.with_layout(layout))

    def transpose(self) -> JacobianOperator:
        return Composition(self.inner.transpose(), self.outer.transpose())

    def _factors_square(self) -> bool:
        """True when det and solve split over the factors: each a square real map. A real
        map through complex values (x -> x + 0i, then Re) has factors square as arrays
        but not as real maps (C^n is 2n real dimensions): the dense matrix decides."""
        return all(
            f.in_shape == f.out_shape
            and jnp.issubdtype(f.dtype, jnp.floating)
            and f.complex_linear()
            and f.commutes_with_scaling()  # a rounding is not linear: no det of its own
            and not f.real_to_complex
            for f in (self.outer, self.inner)
        )

    def logdet(self) -> Array:
        if self._factors_square():  # det(A B) = det(A) det(B)
            return self.outer.logdet() + self.inner.logdet()
        return super().logdet()

    def solve(self, rhs: ArrayLike) -> Array:
        if self._factors_square():
            return self.inner.solve(self.outer.solve(rhs))
        return super().solve(rhs)

    def batch_axes(self) -> frozenset[tuple[int, int]]:
        return kept_on(self, "batch_axes", self._batch_axes)  # kept, as a Sum's

    def _batch_axes(self) -> frozenset[tuple[int, int]]:
        inner = dict(self.inner.batch_axes())  # middle axis -> input axis
        return frozenset((o, inner[m]) for o, m in self.outer.batch_axes() if m in inner)


def accumulated_vm(root: JacobianOperator, cotangent: ArrayLike) -> Array:
    """u^T J for a graph of sums and compositions, by reverse accumulation.

    A shared part of the graph (the Jacobian of an intermediate that many terms use) meets
    one tangent in ``mv``, but in ``vm`` a different cotangent on every path to it: pushed
    down path by path, the work is the number of paths (exponential in an unrolled RK4).
    Here the forward structure is laid out once as nodes, each a map applied to the node
    that feeds it (a composition ``A o B`` is A's node fed by B's; a sum, the sum of its
    terms' nodes on one input), numbered so that a node's inputs come first; then each
    node's cotangent, summed over every consumer, goes through its map once:

        u_source += M^T u_node   for a node M(source), in reverse order.

    By linearity this is the same u^T J; each map's ``vm`` runs once per node."""
    nodes: list[tuple] = []  # ("map", op, source) | ("sum", sources) | ("scaled", c, source)
    numbered: dict[tuple[int, int], int] = {}  # (id of op, input node) -> its output node

    def node_of(op: JacobianOperator, source: int) -> int:
        key = (id(op), source)
        found = numbered.get(key)
        if found is not None:
            return found
        if type(op) is Composition:
            number = node_of(op.outer, node_of(op.inner, source))
        else:
            if type(op) is Sum:
                nodes.append(("sum", [node_of(term, source) for term in op.terms]))
            elif type(op) is Scaled and not op._complex_of_real():
                nodes.append(("scaled", op.scale, node_of(op.operator, source)))
            else:
                nodes.append(("map", op, source))
            number = len(nodes)  # node 0 is the input
        numbered[key] = number
        return number

    cotangents = {node_of(root, 0): jnp.asarray(cotangent)}

    def send(number: int, value: Array) -> None:
        held = cotangents.get(number)
        cotangents[number] = value if held is None else held + value

    for number in range(len(nodes), 0, -1):
        u = cotangents.pop(number, None)
        if u is None:
            continue
        kind, *parts = nodes[number - 1]
        if kind == "sum":
            for source in parts[0]:
                send(source, u)
        elif kind == "scaled":
            send(parts[1], parts[0] * u)
        else:
            send(parts[1], parts[0].vm(u))
    return cotangents[0]


@composition_rule(JacobianOperator, Composition)
def regroup_inner(outer: JacobianOperator, inner: Composition) -> JacobianOperator | None:
    # outer o (a o b) = (outer o a) o b when outer o a simplifies.
    merged = compose(outer, inner.outer)
    if isinstance(merged, Composition) and merged.outer is outer:
        return None
    return compose(merged, inner.inner)


@composition_rule(Composition, JacobianOperator)
def regroup_outer(outer: Composition, inner: JacobianOperator) -> JacobianOperator | None:
    # (a o b) o inner = a o (b o inner) when b o inner simplifies.
    merged = compose(outer.inner, inner)
    if isinstance(merged, Composition) and merged.inner is inner:
        return None
    return compose(outer.outer, merged)


def times_scalar(op: JacobianOperator, scale: ArrayLike) -> JacobianOperator:
    """c J for a scalar c: a complex c of a real J is kept as a ``Scaled`` (a type's own
    ``scaled`` may keep its real dtype, which would drop Im c)."""
    scale = jnp.asarray(scale)
    if jnp.iscomplexobj(scale) and not jnp.issubdtype(op.dtype, jnp.complexfloating):
        return Scaled(scale, op)
    return op.scaled(scale)


def _rescaled(op: JacobianOperator, scale: Array) -> JacobianOperator:
    """A scale moved out of a composition onto its result ``op``: a real one in ``op``'s
    dtype (a composition keeps the dtypes its maps give), a complex one as it is."""
    return times_scalar(op, scale if jnp.iscomplexobj(scale) else jnp.asarray(scale, op.dtype))


@composition_rule(Scaled, JacobianOperator)
def _scale_outside_outer(outer: Scaled, inner: JacobianOperator) -> JacobianOperator:
    return _rescaled(compose(outer.operator, inner), outer.scale)


@composition_rule(JacobianOperator, Scaled)
def _scale_outside_inner(outer: JacobianOperator, inner: Scaled) -> JacobianOperator | None:
    if jnp.iscomplexobj(inner.scale) and not outer.complex_linear():
        return None  # Re(c w) is not c Re(w)
    if not outer.commutes_with_scaling() or outer.narrows():
        return None  # round(c w) is not c round(w): a scale stored in bfloat16 is rounded
    return _rescaled(compose(outer, inner.operator), inner.scale)


def is_operator(value: Any) -> bool:
    """True for a structured Jacobian."""
    return isinstance(value, JacobianOperator)
