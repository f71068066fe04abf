"""Catalogue declarations.

The elementwise rules: diag(f'(x)) with f = tanh, the logistic function (scalar and
vector), and the appendix's power, exp, log and general logistic.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from matcalc_jax.catalogue import draws
from matcalc_jax.catalogue.record import DIAGONAL_SIZES, Rule
from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout
from matcalc_jax.forms import activations
from matcalc_jax.forms.elementwise import (
    diagonal_operator,
    elementwise_jacobian,
    exp_jacobian,
    log_jacobian,
    logistic_general,
    logistic_general_jacobian,
    logistic_jacobian,
    logistic_scalar_jacobian,
    power_jacobian,
)


def _tanh_derivative(x: Array) -> Array:
    """tanh'(x) = sech^2(x), exact in the tails (never 1 - tanh^2)."""
    return activations.tanh_prime(validate.vector("elementwise", "x", x))


def _tanh_map(x: Array) -> Array:
    return jnp.tanh(validate.vector("elementwise", "x", x))


def _tanh_jacobian(x: Array, *, layout: Layout = "numerator") -> Array:
    return elementwise_jacobian(_tanh_derivative(x), layout=layout)


def _one_vector(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    return (draws.normal(key, (size,), dtype),)


def _one_scalar(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    return (draws.normal(key, (), dtype),)


def _power_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, kr = jax.random.split(key)
    return (
        draws.uniform(kx, (size,), dtype, 0.5, 2.0),
        draws.uniform(kr, (), dtype, -1.5, 2.5),
    )


def _positive_vector(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    return (draws.uniform(key, (size,), dtype, 0.5, 3.0),)


def _logistic_general_example(key: Array, dtype: Any, size: int) -> tuple[Array, ...]:
    kx, kl, kk, k0 = jax.random.split(key, 4)
    return (
        draws.normal(kx, (size,), dtype),
        draws.uniform(kl, (), dtype, 0.5, 2.0),
        draws.uniform(kk, (), dtype, 0.5, 1.5),
        draws.normal(k0, (), dtype),
    )


RULES = (
    Rule(
        id="elementwise",
        fn=_tanh_map,
        closed_form=_tanh_jacobian,
        structured_form=diagonal_operator("elementwise", _tanh_derivative),
        public="matcalc_jax.elementwise_jacobian",
        bench_sizes=DIAGONAL_SIZES,
        make_example=_one_vector,
    ),
    Rule(
        id="logistic_scalar",
        fn=lambda x: jax.nn.sigmoid(validate.scalar("logistic_scalar", "x", x)),
        closed_form=logistic_scalar_jacobian,
        make_example=_one_scalar,
    ),
    Rule(
        id="logistic_vector",
        fn=lambda x: jax.nn.sigmoid(validate.vector("logistic_vector", "x", x)),
        closed_form=logistic_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_one_vector,
    ),
    Rule(
        id="power",
        fn=lambda x, r: validate.vector("power", "x", x) ** validate.scalar("power", "r", r),
        closed_form=power_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_power_example,
    ),
    Rule(
        id="exp",
        fn=lambda x: jnp.exp(validate.vector("exp", "x", x)),
        closed_form=exp_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_one_vector,
    ),
    Rule(
        id="log",
        fn=lambda x: jnp.log(validate.vector("log", "x", x)),
        closed_form=log_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_positive_vector,
    ),
    Rule(
        id="logistic_general",
        fn=lambda x, L, k, x0: logistic_general(
            validate.vector("logistic_general", "x", x), L, k, x0
        ),
        closed_form=logistic_general_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_logistic_general_example,
    ),
)
