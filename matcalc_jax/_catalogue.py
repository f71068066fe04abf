"""The catalogue: every rule, the seed's first in the seed's order, then the rest of its
appendix, then the matrix-argument rules and objectives with Hessians."""

from __future__ import annotations

from matcalc_jax import (
    _affine,
    _chains,
    _elementwise,
    _inverse,
    _linear,
    _objectives,
    _products,
    _softmax,
    _traces,
)
from matcalc_jax._rule import Rule

SEED_ORDER = (
    "product_inner",
    "product_bilinear",
    "product_scalar_vector",
    "chain_vector",
    "chain_matrix_trace",
    "chain_matrix_vector",
    "chain_scalar",
    "identity",
    "linear",
    "linear_transposed",
    "elementwise",
    "logistic_scalar",
    "logistic_vector",
)
APPENDIX_ORDER = ("sum", "power", "exp", "log", "logistic_general", "softmax")
MATRIX_ORDER = (
    "affine_matrix",
    "linear_layer",
    "linear_layer_input",
    "linear_layer_bias",
    "trace_linear",
    "trace_quadratic",
    "frobenius",
    "quadratic_form",
    "least_squares",
    "inverse",
    "det",
    "logdet",
    "solve",
    "solve_rhs",
    "logistic_regression",
    "softmax_cross_entropy",
)

_BY_ID: dict[str, Rule] = {
    r.id: r
    for module in (
        _products,
        _chains,
        _linear,
        _elementwise,
        _softmax,
        _affine,
        _traces,
        _inverse,
        _objectives,
    )
    for r in module.RULES
}
_ORDER = SEED_ORDER + APPENDIX_ORDER + MATRIX_ORDER
assert sorted(_ORDER) == sorted(_BY_ID), "catalogue order and rule modules disagree"


def rules() -> tuple[Rule, ...]:
    """Every rule of the catalogue: the seed's rules in the seed's order, then the appendix's,
    then the matrix-argument rules and objectives."""
    return tuple(_BY_ID[rule_id] for rule_id in _ORDER)


def rule(rule_id: str) -> Rule:
    """The rule with id ``rule_id``; an unknown id raises ``KeyError`` listing the known ids.

    >>> rule("linear").plain
    'd(Ax)/dx = A^T'
    """
    try:
        return _BY_ID[rule_id]
    except (KeyError, TypeError):
        raise KeyError(f"unknown rule id {rule_id!r}; known ids: {', '.join(_ORDER)}") from None
