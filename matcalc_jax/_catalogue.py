"""The catalogue: every rule, the seed's first in the seed's order."""

from __future__ import annotations

from matcalc_jax import _chains, _elementwise, _linear, _products, _softmax
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

_BY_ID: dict[str, Rule] = {
    r.id: r
    for module in (_products, _chains, _linear, _elementwise, _softmax)
    for r in module.RULES
}
_ORDER = SEED_ORDER + APPENDIX_ORDER
assert sorted(_ORDER) == sorted(_BY_ID), "catalogue order and rule modules disagree"


def rules() -> tuple[Rule, ...]:
    """Every rule of the catalogue: the seed's rules in the seed's order, then the appendix's."""
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
