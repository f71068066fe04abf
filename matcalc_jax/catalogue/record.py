"""The rule record: one matrix-calculus rule, its map, its data, its hand-written forms, and
``jacfwd``/``jacrev``, the autodiff counterparts the design's contract names.

The other autodiff references the harness compares with (``jax.hessian``, the
Hessian-vector product) are in ``matcalc_jax.verification.references``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import inspect
import sys
import tomllib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from matcalc_jax.core.chunks import assemble, check_chunk_size
from matcalc_jax.core.layout import Layout, check_layout, from_numerator
from matcalc_jax.core.precision import in_working_precision
from matcalc_jax.operators import Dense

#: The text fields of a rule: given in its declaration, or read from its table in
#: ``rules.toml`` beside this file (the catalogue's rules give theirs there).
TEXT_FIELDS = ("title", "formula", "numerator_formula", "plain", "source", "shapes", "notes")
_OPTIONAL_TEXT = ("notes",)

#: Benchmark size sweeps (``Rule.bench_sizes``): the length of the differentiated argument, its
#: side for a matrix. Rules whose closed form or autodiff needs matrix-matrix products stop at
#: 2048; the others reach a 4096 x 4096 Jacobian, and the rules with a diagonal or diagonal-
#: plus-low-rank structure go on to 16384, where only the structured methods are timed. The
#: matrix chain rules build (size^4 and size^3) tensors, and jacfwd of a (p, q) argument
#: pushes a (pq, p, q) identity through the map, so they stop where those fit in memory.
VECTOR_SIZES = (64, 256, 1024, 4096)
DIAGONAL_SIZES = (64, 256, 1024, 4096, 16384)
MATMUL_SIZES = (64, 256, 1024, 2048)
MATRIX_SIZES = (8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule of the catalogue.

    Attributes:
      id: stable snake_case id (``"linear"``).
      title: a short human name. A declaration without one takes its text fields (title to
        notes, ``TEXT_FIELDS``) from the rule's table in ``rules.toml`` (``rule_text``).
      formula: the formula in LaTeX as printed in its source (denominator layout for the seed).
      numerator_formula: the same derivative in numerator layout, in LaTeX.
      plain: a one-line plain-text form of ``formula`` for terminals.
      source: where the rule comes from (``"seed"``, ``"nndl"``).
      shapes: the shapes of the objects in ``formula``.
      fn: the map being differentiated, ``fn(*args) -> Array``.
      make_example: ``make_example(key, dtype, size) -> tuple`` of valid arguments for ``fn``.
      closed_form: the hand-written Jacobian ``closed_form(*args, layout=...)``; never calls
        autodiff. Give it or ``gradient``; what is given wins over what is derived.
      gradient: for a rule whose map is scalar, the hand-written gradient ``gradient(*args)``
        (x's shape in both layouts): the closed and structured forms are made from it
        (``gradient_forms``).
      wrt: index of the positional argument of ``fn`` that is differentiated (default 0).
      structured_form: the same Jacobian as a structured operator (``matcalc_jax.Diagonal``,
        ``Kronecker``, ...), ``structured_form(*args, layout=...)``; never calls autodiff.
        Default: the closed form with ``structured=True`` where it takes that keyword, else
        ``name_operator`` beside a closed form ``name_jacobian`` in its module.
      public: the public function that implements the rule (``"matcalc_jax.linear_jacobian"``).
        Default: ``matcalc_jax.`` and the name of ``gradient`` or of the closed form, or the
        rule's id where the closed form's name is private (``_inner_jacobian``).
      default_size: the size used by ``example`` when none is given.
      bench_sizes: the sizes ``matcalc-jax bench`` sweeps.
      quick_size: the one size ``matcalc-jax bench --quick`` times (a dense Jacobian of four
        axes of it must stay small).
      notes: what the rule does with edge inputs (NaN, inf, domain boundaries).
      hessian_form: for a rule whose map is scalar, the hand-written Hessian
        ``hessian_form(*args)`` of shape ``x.shape + x.shape`` (symmetric, so the same in both
        layouts); ``None`` where the catalogue gives none. Never calls autodiff.
      structured_hessian_form: the same Hessian as a structured operator (``WeightedGram``,
        ``Kronecker``, ...) whose ``mv`` is the Hessian-vector product; ``None`` with
        ``hessian_form``. Default: ``hessian_form`` with ``structured=True``, where it takes
        that keyword.
    """

    id: str
    fn: Callable[..., Array]
    make_example: Callable[[Array, Any, int], tuple[Array, ...]]
    title: str = ""
    formula: str = ""
    numerator_formula: str = ""
    plain: str = ""
    source: str = ""
    shapes: str = ""
    closed_form: Callable[..., Array] | None = None
    gradient: Callable[..., Array] | None = None
    wrt: int = 0
    structured_form: Callable[..., Any] | None = None
    public: str = ""
    default_size: int = 4
    bench_sizes: tuple[int, ...] = VECTOR_SIZES
    quick_size: int = 16
    notes: str = ""
    hessian_form: Callable[..., Array] | None = None
    structured_hessian_form: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if not self.title:
            for name, value in rule_text(self.id).items():
                object.__setattr__(self, name, value)
        if self.closed_form is None and self.gradient is None:
            raise ValueError(f"rule {self.id!r}: give closed_form or gradient")
        if self.gradient is not None:  # what is given wins (as dataclasses.replace gives)
            closed, structured = gradient_forms(self.id, self.gradient)
            object.__setattr__(self, "closed_form", self.closed_form or closed)
            object.__setattr__(self, "structured_form", self.structured_form or structured)
        if self.hessian_form is not None and self.structured_hessian_form is None:
            object.__setattr__(self, "structured_hessian_form", _structured(self.hessian_form))
        if (self.hessian_form is None) != (self.structured_hessian_form is None):
            raise ValueError(f"rule {self.id!r}: give both Hessian forms or neither")
        if self.structured_form is None:
            twin = _structured(self.closed_form) or _operator_twin(self)
            object.__setattr__(self, "structured_form", twin)
        if not self.public:
            object.__setattr__(self, "public", _public_name(self))

    @property
    def has_hessian(self) -> bool:
        """True when the rule has a closed-form Hessian (its map is scalar)."""
        return self.hessian_form is not None

    def jacobian(self, *args: Any, layout: Layout = "numerator") -> Array:
        """The hand-written closed-form Jacobian of ``fn`` with respect to ``args[wrt]``.

        float16 and bfloat16 arguments are computed in float32 and the result rounded once
        (as for every method of the record that returns a derivative)."""
        return in_working_precision(self.closed_form)(*args, layout=layout)

    def structured(self, *args: Any, layout: Layout = "numerator") -> Any:
        """The closed form as a structured Jacobian (a ``matcalc_jax.JacobianOperator``) of the
        tightest type the formula allows; ``.to_dense()`` gives ``jacobian``'s array."""
        return in_working_precision(self.structured_form)(*args, layout=layout)

    def jacfwd(
        self, *args: Any, layout: Layout = "numerator", chunk_size: int | None = None
    ) -> Array:
        """``jax.jacfwd`` of ``fn`` with respect to ``args[wrt]``, arranged in ``layout``.

        ``chunk_size=k`` pushes ``k`` unit tangents at a time through one linearization
        (``jax.linearize``, then ``jax.lax.map`` with ``batch_size=k``) instead of all of them
        at once: the same Jacobian, intermediates ``k`` tangents wide.
        """
        chunk_size = check_chunk_size(f"rule {self.id!r} jacfwd", chunk_size)
        if chunk_size is None:
            return self._autodiff(jax.jacfwd, args, layout)
        return self._chunked(args, layout, chunk_size, forward=True)

    def jacrev(
        self, *args: Any, layout: Layout = "numerator", chunk_size: int | None = None
    ) -> Array:
        """``jax.jacrev`` of ``fn`` with respect to ``args[wrt]``, arranged in ``layout``.

        ``chunk_size=k`` pulls ``k`` unit cotangents at a time back through one ``jax.vjp``
        (``jax.lax.map`` with ``batch_size=k``): the same Jacobian, a smaller peak.
        """
        chunk_size = check_chunk_size(f"rule {self.id!r} jacrev", chunk_size)
        if chunk_size is None:
            return self._autodiff(jax.jacrev, args, layout)
        return self._chunked(args, layout, chunk_size, forward=False)

    def hessian(self, *args: Any) -> Array:
        """The hand-written Hessian of the scalar ``fn`` with respect to ``args[wrt]``, of
        shape ``x.shape + x.shape``; ``ValueError`` for a rule without one."""
        self.require_hessian("hessian")
        return in_working_precision(self.hessian_form)(*args)

    def hessian_operator(self, *args: Any) -> Any:
        """The Hessian as a structured operator; ``.mv(v)`` is the Hessian-vector product and
        ``.to_dense()`` equals ``hessian``."""
        self.require_hessian("hessian_operator")
        return in_working_precision(self.structured_hessian_form)(*args)

    def require_hessian(self, what: str) -> None:
        """Raise the ``ValueError`` of a rule without a closed-form Hessian, naming ``what``
        was asked for."""
        if not self.has_hessian:
            raise ValueError(
                f"rule {self.id!r} has no closed-form Hessian ({what}): its map is not scalar; "
                "the rules with one are [r.id for r in matcalc_jax.rules() if r.has_hessian]"
            )

    def example(self, key: Array, dtype: Any = jnp.float32, size: int | None = None) -> tuple:
        """Random valid arguments for ``fn``, of ``dtype``, drawn to be well conditioned.

        ``size`` sets the length of the differentiated argument (its side, for a matrix; for a
        scalar argument, the length of the intermediate vectors); ``None`` gives a small default.
        """
        size = self.default_size if size is None else int(size)
        self.check_example(dtype, size)
        return self.make_example(key, jnp.dtype(dtype), size)

    def check_example(self, dtype: Any, size: int) -> None:
        """Raise the error ``example`` would raise for ``dtype`` and ``size``, drawing
        nothing."""
        if size < 1:
            raise ValueError(f"rule {self.id!r}: size={size}; expected a positive integer")
        if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
            raise TypeError(f"rule {self.id!r}: dtype={dtype}; expected a floating dtype")
        if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
            raise ValueError(
                f"rule {self.id!r}: dtype=float64 needs 64-bit mode; call "
                "jax.config.update('jax_enable_x64', True) first (JAX would silently give float32)"
            )

    def _chunked(self, args: tuple, layout: Layout, chunk_size: int, forward: bool) -> Array:
        layout = check_layout(self.id, layout)
        before, x, after = args[: self.wrt], jnp.asarray(args[self.wrt]), args[self.wrt + 1 :]

        def fn(value: Array) -> Array:
            return self.fn(*before, value, *after)

        if forward:
            y, push = jax.linearize(fn, x)
            image = lambda v: push(v.reshape(x.shape)).reshape(-1)  # noqa: E731
            size, dtype = x.size, x.dtype
        else:
            y, pull = jax.vjp(fn, x)
            image = lambda u: pull(u.reshape(y.shape))[0].reshape(-1)  # noqa: E731
            size, dtype = y.size, y.dtype
        other = y.size if forward else x.size
        flat = assemble(image, size, dtype, (other,), chunk_size, as_columns=forward)
        jacobian = flat.reshape(y.shape + x.shape)
        return from_numerator(jacobian, y.ndim, layout)

    def _autodiff(self, transform: Callable, args: tuple, layout: Layout) -> Array:
        layout = check_layout(self.id, layout)
        jacobian = transform(self.fn, argnums=self.wrt)(*args)
        out_ndim = jacobian.ndim - jnp.ndim(args[self.wrt])
        return from_numerator(jacobian, out_ndim, layout)


@functools.cache
def _text_tables() -> dict[str, dict[str, Any]]:
    path = importlib.resources.files(__package__) / "rules.toml"
    return tomllib.loads(path.read_text(encoding="utf-8"))


def text_ids() -> tuple[str, ...]:
    """The rule ids with a table in ``rules.toml``, in its order."""
    return tuple(_text_tables())


def rule_text(rule_id: str) -> dict[str, str]:
    """The text fields of rule ``rule_id`` from its table in ``rules.toml``, each with its
    runs of white space (line breaks included) read as one space.

    A missing table, a missing or non-string field, or a field the record does not know is a
    ``ValueError`` naming the rule.
    """
    table = _text_tables().get(rule_id)
    if table is None:
        raise ValueError(
            f"rule {rule_id!r}: no title given and no [{rule_id}] table in "
            "matcalc_jax/catalogue/rules.toml; give the text fields in one or the other"
        )
    unknown = sorted(set(table) - set(TEXT_FIELDS))
    missing = [f for f in TEXT_FIELDS if f not in _OPTIONAL_TEXT and not table.get(f)]
    wrong = sorted(f for f, value in table.items() if not isinstance(value, str))
    if unknown or missing or wrong:
        raise ValueError(
            f"rule {rule_id!r}: its table in rules.toml has unknown fields {unknown}, lacks "
            f"{missing} or has non-string {wrong}; expected the string fields {TEXT_FIELDS} "
            f"({', '.join(_OPTIONAL_TEXT)} optional)"
        )
    return {name: " ".join(value.split()) for name, value in table.items()}


def _structured(form: Callable[..., Any]) -> Callable[..., Any] | None:
    """``form`` with ``structured=True``, where it takes that keyword; else None."""
    try:
        takes = "structured" in inspect.signature(form).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return None
    return functools.partial(form, structured=True) if takes else None


def _public_name(rule: Rule) -> str:
    """``matcalc_jax.`` and the name the rule's function is exported under: the gradient's
    or the closed form's own name, or the rule's id where that name is private."""
    name = (rule.gradient or rule.closed_form).__name__
    return f"matcalc_jax.{rule.id if name.startswith('_') else name}"


def _operator_twin(rule: Rule) -> Callable[..., Any]:
    """``name_operator`` from the module of the closed form ``name_jacobian``: the twin the
    forms' convention puts beside it; an error naming the rule where there is none."""
    name = getattr(rule.closed_form, "__name__", "")
    twin = None
    if name.endswith("_jacobian"):
        module = sys.modules.get(getattr(rule.closed_form, "__module__", ""))
        twin = getattr(module, name.removesuffix("_jacobian") + "_operator", None)
    if twin is None:
        raise ValueError(
            f"rule {rule.id!r}: structured_form not given and the closed form {name!r} has no "
            "'_operator' twin beside it (name_jacobian -> name_operator); pass structured_form"
        )
    return twin


def gradient_forms(
    rule_id: str, gradient: Callable[..., Array]
) -> tuple[Callable[..., Array], Callable[..., Dense]]:
    """The closed and structured forms of a rule whose map is scalar, from its gradient.

    A scalar-by-x derivative has x's shape in both layouts, so ``layout`` is only checked;
    the structured form is the gradient held in a ``Dense`` with no output axes.
    """

    def closed(*args: Any, layout: Layout = "numerator") -> Array:
        check_layout(rule_id, layout)
        return gradient(*args)

    def structured(*args: Any, layout: Layout = "numerator") -> Dense:
        layout = check_layout(rule_id, layout)
        return Dense(gradient(*args), 0, layout)

    return closed, structured
