"""The catalogue: every rule, declared once, in one file per family.

A family file (``products.py``, ``chains.py``, ...) declares its rules in a tuple ``RULES``:
the instance maps, example draws, formulas, sources and benchmark sizes beside the closed
forms it imports from ``matcalc_jax.forms``. The catalogue's order is the declaration
order (families in the order of ``FAMILIES``), with the seed's rules first and the rest
of its appendix ("nndl") next, as the seed page has them.
"""

from __future__ import annotations

from collections.abc import Iterable

from matcalc_jax.catalogue import (
    affine,
    chains,
    elementwise,
    inverse,
    linear,
    objectives,
    products,
    softmax,
    traces,
)
from matcalc_jax.catalogue.corpus import PROGRAMS
from matcalc_jax.catalogue.record import Rule

#: The family modules, in catalogue order.
FAMILIES = (products, chains, linear, elementwise, softmax, affine, traces, objectives, inverse)
#: Sources that come first, in this order: the seed page, then the rest of its appendix.
_LEADING_SOURCES = ("seed", "nndl")


def _source_rank(rule: Rule) -> int:
    if rule.source in _LEADING_SOURCES:
        return _LEADING_SOURCES.index(rule.source)
    return len(_LEADING_SOURCES)


_RULES: tuple[Rule, ...] = tuple(
    sorted((r for family in FAMILIES for r in family.RULES), key=_source_rank)
)
_BY_ID: dict[str, Rule] = {r.id: r for r in _RULES + PROGRAMS}
if len(_BY_ID) != len(_RULES) + len(PROGRAMS):
    raise ImportError("two catalogue rules or programs share an id")


def rules() -> tuple[Rule, ...]:
    """Every rule of the catalogue: the seed's rules in the seed's order, then the appendix's,
    then the matrix-argument rules and objectives."""
    return _RULES


def programs() -> tuple[Rule, ...]:
    """The corpus: whole programs whose Jacobians the transform derives
    (``matcalc_jax.catalogue.corpus``), checked by the same harness as the rules."""
    return PROGRAMS


def rule(rule_id: str) -> Rule:
    """The rule or corpus program with id ``rule_id``; an unknown id raises ``KeyError``
    listing the known ids.

    >>> rule("linear").plain
    'd(Ax)/dx = A^T'
    """
    try:
        return _BY_ID[rule_id]
    except (KeyError, TypeError):
        known = ", ".join(_BY_ID)
        raise KeyError(f"unknown rule id {rule_id!r}; known ids: {known}") from None


def select(rule_ids: Iterable[str] | None = None) -> tuple[Rule, ...]:
    """The rules and programs with ``rule_ids``, in the order given, each once (every rule,
    then every program, for ``None``); one id may be passed as a string. An unknown id
    raises the ``KeyError`` of ``rule``; an empty selection is a ``ValueError``."""
    if rule_ids is None:
        return rules() + programs()
    ids = [rule_ids] if isinstance(rule_ids, str) else list(rule_ids)
    if not ids:
        raise ValueError(
            "no rule ids given; expected at least one (matcalc_jax.rules() lists them)"
        )
    return tuple(rule(rule_id) for rule_id in dict.fromkeys(ids))
