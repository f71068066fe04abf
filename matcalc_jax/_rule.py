"""The rule record: one matrix-calculus rule, its map, its closed form and its autodiff twins."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from matcalc_jax._layout import Layout, check_layout, from_numerator


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule of the catalogue.

    Attributes:
      id: stable snake_case id (``"linear"``).
      title: a short human name.
      formula: the formula in LaTeX as printed in its source (denominator layout for the seed).
      numerator_formula: the same derivative in numerator layout, in LaTeX.
      plain: a one-line plain-text form of ``formula`` for terminals.
      source: where the rule comes from (``"seed"``, ``"nndl"``).
      shapes: the shapes of the objects in ``formula``.
      fn: the map being differentiated, ``fn(*args) -> Array``.
      wrt: index of the positional argument of ``fn`` that is differentiated.
      closed_form: the hand-written Jacobian ``closed_form(*args, layout=...)``; never calls
        autodiff.
      structured_form: the same Jacobian as a structured operator (``matcalc_jax.Diagonal``,
        ``Kronecker``, ...), ``structured_form(*args, layout=...)``; never calls autodiff.
      public: the public function that implements the rule (``"matcalc_jax.linear_jacobian"``).
      make_example: ``make_example(key, dtype, size) -> tuple`` of valid arguments for ``fn``.
      default_size: the size used by ``example`` when none is given.
      notes: what the rule does with edge inputs (NaN, inf, domain boundaries).
    """

    id: str
    title: str
    formula: str
    numerator_formula: str
    plain: str
    source: str
    shapes: str
    fn: Callable[..., Array]
    wrt: int
    closed_form: Callable[..., Array]
    structured_form: Callable[..., Any]
    public: str
    make_example: Callable[[Array, Any, int], tuple[Array, ...]]
    default_size: int = 4
    notes: str = ""

    def jacobian(self, *args: Any, layout: Layout = "numerator") -> Array:
        """The hand-written closed-form Jacobian of ``fn`` with respect to ``args[wrt]``."""
        return self.closed_form(*args, layout=layout)

    def structured(self, *args: Any, layout: Layout = "numerator") -> Any:
        """The closed form as a structured Jacobian (a ``matcalc_jax.JacobianOperator``) of the
        tightest type the formula allows; ``.to_dense()`` gives :meth:`jacobian`'s array."""
        return self.structured_form(*args, layout=layout)

    def jacfwd(self, *args: Any, layout: Layout = "numerator") -> Array:
        """``jax.jacfwd`` of ``fn`` with respect to ``args[wrt]``, arranged in ``layout``."""
        return self._autodiff(jax.jacfwd, args, layout)

    def jacrev(self, *args: Any, layout: Layout = "numerator") -> Array:
        """``jax.jacrev`` of ``fn`` with respect to ``args[wrt]``, arranged in ``layout``."""
        return self._autodiff(jax.jacrev, args, layout)

    def example(self, key: Array, dtype: Any = jnp.float32, size: int | None = None) -> tuple:
        """Random valid arguments for ``fn``, of ``dtype``, drawn to be well conditioned.

        ``size`` sets the length of the differentiated argument (its side, for a matrix; for a
        scalar argument, the length of the intermediate vectors); ``None`` gives a small default.
        """
        size = self.default_size if size is None else int(size)
        if size < 1:
            raise ValueError(f"rule {self.id!r}: size={size}; expected a positive integer")
        if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
            raise TypeError(f"rule {self.id!r}: dtype={dtype}; expected a floating dtype")
        if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
            raise ValueError(
                f"rule {self.id!r}: dtype=float64 needs 64-bit mode; call "
                "jax.config.update('jax_enable_x64', True) first (JAX would silently give float32)"
            )
        return self.make_example(key, jnp.dtype(dtype), size)

    def _autodiff(self, transform: Callable, args: tuple, layout: Layout) -> Array:
        layout = check_layout(self.id, layout)
        jacobian = transform(self.fn, argnums=self.wrt)(*args)
        out_ndim = jacobian.ndim - jnp.ndim(args[self.wrt])
        return from_numerator(jacobian, out_ndim, layout)
