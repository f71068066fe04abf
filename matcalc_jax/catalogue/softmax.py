"""Catalogue declarations.

The softmax rule: diag(s) - s s^T."""

from __future__ import annotations

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import DIAGONAL_SIZES, Rule
from matcalc_jax.forms.softmax import softmax_jacobian, softmax_map

RULES = (
    Rule(
        id="softmax",
        title="Softmax",
        formula=r"\frac{\partial \operatorname{softmax}(\mathbf{x})}{\partial \mathbf{x}}"
        r"=\operatorname{diag}(\operatorname{softmax}(\mathbf{x}))"
        r"-\operatorname{softmax}(\mathbf{x}) \operatorname{softmax}(\mathbf{x})^{\mathrm{T}}",
        numerator_formula=r"\operatorname{diag}(\mathbf{s})-\mathbf{s} \mathbf{s}^{\mathrm{T}},"
        r"\ \mathbf{s}=\operatorname{softmax}(\mathbf{x})",
        plain="d softmax(x)/dx = diag(s) - s s^T",
        source="nndl",
        shapes="x in R^K",
        fn=softmax_map,
        closed_form=softmax_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=lambda key, dtype, size: (draws.normal(key, (size,), dtype),),
        notes="x_k = -inf gives a zero row and column k; an all -inf x gives NaN, like softmax.",
    ),
)
