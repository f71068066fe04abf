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


_EDGES_LOGISTIC = (
    "Finite x never gives NaN or inf (computed as e/(1+e)^2 with e = exp(-|x|)); x = +-inf "
    "gives 0; NaN gives NaN. In float64 the value at x = 37.4 is about 5.8e-17, where "
    "sigma(x)(1 - sigma(x)) and jax.grad(jax.nn.sigmoid) give exactly 0."
)

RULES = (
    Rule(
        id="elementwise",
        title="Elementwise vector function",
        formula=r"\frac{\partial f(\mathbf{x})}{\partial \mathbf{x}}"
        r"=\left[\frac{\partial f(x_j)}{\partial x_i}\right]_{K \times K}"
        r"=\operatorname{diag}\left(f^{\prime}(\mathbf{x})\right)",
        numerator_formula=r"\operatorname{diag}\left(f^{\prime}(\mathbf{x})\right)",
        plain="df(x)/dx = diag(f'(x))",
        source="seed",
        shapes="x in R^K, z_k = f(x_k); catalogue instance f = tanh",
        fn=_tanh_map,
        closed_form=_tanh_jacobian,
        structured_form=diagonal_operator("elementwise", _tanh_derivative),
        public="matcalc_jax.elementwise_jacobian",
        bench_sizes=DIAGONAL_SIZES,
        make_example=_one_vector,
        notes="NaN in f'(x_k) appears at J[k, k] only; off-diagonal entries are exact zeros.",
    ),
    Rule(
        id="logistic_scalar",
        title="Logistic function, scalar",
        formula=r"\sigma^{\prime}(x)=\sigma(x)(1-\sigma(x))",
        numerator_formula=r"\sigma(x)(1-\sigma(x))",
        plain="sigma'(x) = sigma(x)(1 - sigma(x))",
        source="seed",
        shapes="x scalar (0-d array)",
        fn=lambda x: jax.nn.sigmoid(validate.scalar("logistic_scalar", "x", x)),
        closed_form=logistic_scalar_jacobian,
        make_example=_one_scalar,
        notes=_EDGES_LOGISTIC,
    ),
    Rule(
        id="logistic_vector",
        title="Logistic function, vector",
        formula=r"\sigma^{\prime}(\mathbf{x})"
        r"=\operatorname{diag}(\sigma(\mathbf{x}) \odot(1-\sigma(\mathbf{x})))",
        numerator_formula=r"\operatorname{diag}(\sigma(\mathbf{x}) \odot(1-\sigma(\mathbf{x})))",
        plain="sigma'(x) = diag(sigma(x) . (1 - sigma(x)))",
        source="seed",
        shapes="x in R^K",
        fn=lambda x: jax.nn.sigmoid(validate.vector("logistic_vector", "x", x)),
        closed_form=logistic_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_one_vector,
        notes=_EDGES_LOGISTIC,
    ),
    Rule(
        id="power",
        title="Power, elementwise",
        formula=r"\frac{\partial x^{r}}{\partial x}=r x^{r-1}",
        numerator_formula=r"\operatorname{diag}\left(r\,\mathbf{x}^{r-1}\right)",
        plain="d(x^r)/dx = diag(r x^(r-1))",
        source="nndl",
        shapes="x in R^K (positive), r scalar",
        fn=lambda x, r: validate.vector("power", "x", x) ** validate.scalar("power", "r", r),
        closed_form=power_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_power_example,
        notes="x_k = 0 with r < 1 gives inf at J[k, k]; r = 0 gives the zero matrix.",
    ),
    Rule(
        id="exp",
        title="Exponential, elementwise",
        formula=r"\frac{\partial \exp (x)}{\partial x}=\exp (x)",
        numerator_formula=r"\operatorname{diag}\left(\exp(\mathbf{x})\right)",
        plain="d exp(x)/dx = diag(exp(x))",
        source="nndl",
        shapes="x in R^K",
        fn=lambda x: jnp.exp(validate.vector("exp", "x", x)),
        closed_form=exp_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_one_vector,
        notes="Overflows to inf where exp(x) does (x > 88.7 in float32).",
    ),
    Rule(
        id="log",
        title="Logarithm, elementwise",
        formula=r"\frac{\partial \log x}{\partial x}=\frac{1}{x}",
        numerator_formula=r"\operatorname{diag}\left(1/\mathbf{x}\right)",
        plain="d log(x)/dx = diag(1/x)",
        source="nndl",
        shapes="x in R^K, x > 0",
        fn=lambda x: jnp.log(validate.vector("log", "x", x)),
        closed_form=log_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_positive_vector,
        notes="x_k = 0 gives +inf at J[k, k].",
    ),
    Rule(
        id="logistic_general",
        title="General logistic function, elementwise",
        formula=r"\frac{\partial}{\partial x}\frac{L}{1+\exp (-k(x-x_{0}))}"
        r"=\frac{k}{L} f(x)(L-f(x))",
        numerator_formula=r"\operatorname{diag}\left(L k\,"
        r"\sigma^{\prime}(k(\mathbf{x}-x_0))\right)",
        plain="f'(x) = diag((k/L) f(x)(L - f(x)))",
        source="nndl",
        shapes="x in R^K; L, k, x0 scalars",
        fn=lambda x, L, k, x0: logistic_general(
            validate.vector("logistic_general", "x", x), L, k, x0
        ),
        closed_form=logistic_general_jacobian,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_logistic_general_example,
        notes="Stable in the tails like logistic_prime: no NaN or inf for finite arguments.",
    ),
)
