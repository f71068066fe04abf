"""Catalogue declarations.

The page's three important formulas: dx/dx = I, d(Ax)/dx = A^T, d(x^T A)/dx = A."""

from __future__ import annotations

from typing import Any

import jax
from jax import Array

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import DIAGONAL_SIZES, Rule
from matcalc_jax.core import validate
from matcalc_jax.forms.linear import (
    identity_jacobian,
    linear_jacobian,
    linear_map,
    linear_transposed_jacobian,
    linear_transposed_map,
)


def _linear_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    ka, kx = jax.random.split(key)
    return draws.matrix(ka, size + 1, size, dtype), draws.normal(kx, (size,), dtype)


def _linear_transposed_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    A, x = _linear_example(key, dtype, size)
    return x, A.T


RULES = (
    Rule(
        id="identity",
        fn=lambda x: validate.vector("identity", "x", x),
        closed_form=identity_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=lambda key, dtype, size: (draws.normal(key, (size,), dtype),),
    ),
    Rule(
        id="linear",
        fn=linear_map,
        wrt=1,
        closed_form=linear_jacobian,
        make_example=_linear_example,
    ),
    Rule(
        id="linear_transposed",
        fn=linear_transposed_map,
        closed_form=linear_transposed_jacobian,
        make_example=_linear_transposed_example,
    ),
)
