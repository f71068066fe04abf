"""Catalogue declarations.

Scalar objectives with closed-form gradients and Hessians: quadratic form, least
squares, logistic regression, softmax cross-entropy.
"""

from __future__ import annotations

from typing import Any

import jax
from jax import Array

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import (
    DIAGONAL_SIZES,
    MATMUL_SIZES,
    Rule,
)
from matcalc_jax.forms import objectives


def _quadratic_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    kx, ka = jax.random.split(key)
    return draws.normal(kx, (size,), dtype), draws.matrix(ka, size, size, dtype)


def _least_squares_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, ka, kb = jax.random.split(key, 3)
    m = size + 3
    return (
        draws.normal(kx, (size,), dtype),
        draws.matrix(ka, m, size, dtype),
        draws.normal(kb, (m,), dtype),
    )


def _logistic_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    """w (d,), X (d + 3, d) with rows of norm about one (logits of order one), 0/1 labels."""
    kw, kx, ky = jax.random.split(key, 3)
    n = size + 3
    labels = draws.bernoulli(ky, (n,), dtype)
    return draws.normal(kw, (size,), dtype), draws.matrix(kx, n, size, dtype), labels


def _cross_entropy_example(key: Array, dtype: Any, size: int) -> tuple[Array, Array]:
    """Logits z (K,) and soft targets t = softmax of other logits (a probability vector)."""
    kz, kt = jax.random.split(key)
    return draws.normal(kz, (size,), dtype), jax.nn.softmax(draws.normal(kt, (size,), dtype))


RULES = (
    Rule(
        id="quadratic_form",
        gradient=objectives.quadratic_form_gradient,
        hessian_form=objectives.quadratic_form_hessian,
        fn=objectives.quadratic_form,
        bench_sizes=MATMUL_SIZES,
        make_example=_quadratic_example,
    ),
    Rule(
        id="least_squares",
        gradient=objectives.least_squares_gradient,
        hessian_form=objectives.least_squares_hessian,
        fn=objectives.least_squares,
        bench_sizes=MATMUL_SIZES,
        make_example=_least_squares_example,
    ),
    Rule(
        id="logistic_regression",
        gradient=objectives.logistic_regression_gradient,
        hessian_form=objectives.logistic_regression_hessian,
        fn=objectives.logistic_regression_loss,
        bench_sizes=MATMUL_SIZES,
        make_example=_logistic_example,
    ),
    Rule(
        id="softmax_cross_entropy",
        gradient=objectives.softmax_cross_entropy_gradient,
        hessian_form=objectives.softmax_cross_entropy_hessian,
        fn=objectives.softmax_cross_entropy,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_cross_entropy_example,
    ),
)
