"""``jacobian(f)``: the structured Jacobian of any JAX program.

The program is traced to a jaxpr and interpreted (``.interpreter``) with the catalogue's
rules as its primitives (``.rules``): the chain rule composes, the product rule combines
dependent factors, ``diag(f'(x))`` covers every elementwise map, and the operator algebra
(``matcalc_jax.operators``) keeps what the rules produce as compact as a hand-written
closed form: softmax comes out as ``diag(s) - s s^T``, ``A X B`` by X as its two factors, a
per-example map over a batch as its blocks. No autodiff is called (``jacfwd``, ``jacrev``,
``grad``, ``jvp``, ``vjp``), except for a primitive without a rule when the caller opts into
``fallback="autodiff"``.

``first_order`` holds ``jacobian``; ``second_order`` builds ``hessian``, ``laplacian`` and
``gauss_newton`` on it (the Hessian is the Jacobian of the gradient program).
"""

from __future__ import annotations

from matcalc_jax.transform import rules
from matcalc_jax.transform.first_order import jacobian
from matcalc_jax.transform.interpreter import UnsupportedPrimitiveError
from matcalc_jax.transform.second_order import (
    GaussNewton,
    Hessian,
    gauss_newton,
    hessian,
    laplacian,
)

__all__ = [
    "GaussNewton",
    "Hessian",
    "UnsupportedPrimitiveError",
    "gauss_newton",
    "hessian",
    "jacobian",
    "laplacian",
    "supported_primitives",
]


def supported_primitives() -> tuple[str, ...]:
    """The JAX primitives the transform has a rule for."""
    return rules.supported()
