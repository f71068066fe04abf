"""The second-order autodiff references a rule's closed forms are checked against.

The rule record (``matcalc_jax.catalogue.record.Rule``) holds a rule's map, its data, its
hand-written forms and the contract's ``jacfwd``/``jacrev``; what JAX's autodiff gives for
its Hessian lives here, beside the harness that compares the two and the benchmarks that
time them:

- ``jax_hessian``: ``jax.hessian`` (forward over reverse);
- ``jax_hvp``: the forward-over-reverse Hessian-vector product ``jax.jvp(jax.grad(fn))``.
"""

from __future__ import annotations

from typing import Any

import jax
from jax import Array

from matcalc_jax.catalogue.record import Rule


def jax_hessian(rule: Rule, *args: Any) -> Array:
    """``jax.hessian`` (forward over reverse) of ``rule.fn`` with respect to
    ``args[rule.wrt]``; ``ValueError`` for a rule without a closed-form Hessian."""
    rule.require_hessian("jax_hessian")
    return jax.hessian(rule.fn, argnums=rule.wrt)(*args)


def jax_hvp(rule: Rule, *args: Any, tangent: Any) -> Array:
    """Autodiff's Hessian-vector product, forward over reverse: ``jax.jvp`` of
    ``jax.grad(rule.fn)`` in the direction ``tangent`` (of ``args[rule.wrt]``'s shape)."""
    rule.require_hessian("jax_hvp")
    before, after = args[: rule.wrt], args[rule.wrt + 1 :]

    def gradient(x: Array) -> Array:
        return jax.grad(rule.fn, argnums=len(before))(*before, x, *after)

    return jax.jvp(gradient, (args[rule.wrt],), (tangent,))[1]
