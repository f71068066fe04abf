"""Catalogue declarations.

The inverse, the determinant, the log-determinant and the two derivatives of a solve."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
from jax import Array

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import MATRIX_SIZES, Rule
from matcalc_jax.forms.inverse import (
    det_gradient,
    det_map,
    inverse_jacobian,
    inverse_map,
    logdet_gradient,
    logdet_map,
    solve_jacobian,
    solve_map,
    solve_rhs_jacobian,
)


def _square_example(key: Array, dtype: Any, size: int) -> tuple[Array]:
    return (draws.well_conditioned(key, size, dtype),)


def _solve_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    ka, kb = jax.random.split(key)
    return draws.well_conditioned(ka, size, dtype), draws.normal(kb, (size,), dtype)


RULES = (
    Rule(
        id="inverse",
        fn=inverse_map,
        closed_form=inverse_jacobian,
        bench_sizes=MATRIX_SIZES,
        quick_size=4,
        make_example=_square_example,
    ),
    Rule(
        id="det",
        fn=det_map,
        gradient=det_gradient,
        bench_sizes=MATRIX_SIZES,
        quick_size=8,
        make_example=_square_example,
    ),
    Rule(
        id="logdet",
        fn=logdet_map,
        gradient=logdet_gradient,
        bench_sizes=MATRIX_SIZES,
        quick_size=8,
        make_example=_square_example,
    ),
    Rule(
        id="solve",
        fn=solve_map,
        closed_form=solve_jacobian,
        bench_sizes=MATRIX_SIZES,
        quick_size=8,
        make_example=_solve_example,
    ),
    Rule(
        id="solve_rhs",
        fn=partial(solve_map, rule_id="solve_rhs"),
        wrt=1,
        closed_form=solve_rhs_jacobian,
        bench_sizes=(64, 256, 1024),
        make_example=_solve_example,
    ),
)
