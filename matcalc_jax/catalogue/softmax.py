"""Catalogue declarations.

The softmax rule: diag(s) - s s^T."""

from __future__ import annotations

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import DIAGONAL_SIZES, Rule
from matcalc_jax.forms.softmax import softmax_jacobian, softmax_map

RULES = (
    Rule(
        id="softmax",
        fn=softmax_map,
        closed_form=softmax_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=lambda key, dtype, size: (draws.normal(key, (size,), dtype),),
    ),
)
