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
    COOKBOOK,
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


_PRML = "Bishop, Pattern Recognition and Machine Learning (2006)"

RULES = (
    Rule(
        id="quadratic_form",
        gradient=objectives.quadratic_form_gradient,
        hessian_form=objectives.quadratic_form_hessian,
        title="Quadratic form",
        formula=r"\frac{\partial \mathbf{x}^{\mathrm{T}} A \mathbf{x}}{\partial \mathbf{x}}"
        r"=\left(A+A^{\mathrm{T}}\right) \mathbf{x}",
        numerator_formula=r"\left(A+A^{\mathrm{T}}\right) \mathbf{x},\ "
        r"\nabla^2=A+A^{\mathrm{T}}",
        plain="d(x^T A x)/dx = (A + A^T) x; Hessian A + A^T",
        source=f"{COOKBOOK} eq. (81)",
        shapes="x in R^n, A in R^{n x n}",
        fn=objectives.quadratic_form,
        bench_sizes=MATMUL_SIZES,
        make_example=_quadratic_example,
    ),
    Rule(
        id="least_squares",
        gradient=objectives.least_squares_gradient,
        hessian_form=objectives.least_squares_hessian,
        title="Least squares",
        formula=r"\frac{\partial\|A \mathbf{x}-\mathbf{b}\|^{2}}{\partial \mathbf{x}}"
        r"=2 A^{\mathrm{T}}(A \mathbf{x}-\mathbf{b})",
        numerator_formula=r"2 A^{\mathrm{T}}(A \mathbf{x}-\mathbf{b}),\ "
        r"\nabla^2=2 A^{\mathrm{T}} A",
        plain="d||Ax - b||^2/dx = 2 A^T (Ax - b); Hessian 2 A^T A",
        source=f"{COOKBOOK} eq. (84) with W = I",
        shapes="A in R^{m x n}, x in R^n, b in R^m",
        fn=objectives.least_squares,
        bench_sizes=MATMUL_SIZES,
        make_example=_least_squares_example,
    ),
    Rule(
        id="logistic_regression",
        gradient=objectives.logistic_regression_gradient,
        hessian_form=objectives.logistic_regression_hessian,
        title="Logistic regression",
        formula=r"\nabla E(\mathbf{w})=\Phi^{\mathrm{T}}(\mathbf{y}-\mathbf{t}),\ "
        r"H=\Phi^{\mathrm{T}} R \Phi",
        numerator_formula=r"X^{\mathrm{T}}(\mathbf{s}-\mathbf{y}),\ "
        r"\nabla^2=X^{\mathrm{T}} \operatorname{diag}(\mathbf{s} \odot(1-\mathbf{s})) X,\ "
        r"\mathbf{s}=\sigma(X \mathbf{w})",
        plain="gradient X^T (s - y); Hessian X^T diag(s(1-s)) X, s = sigma(Xw)",
        source=f"{_PRML} sec. 4.3.2-4.3.3",
        shapes="w in R^d, X in R^{n x d}, y in [0, 1]^n; loss sum log(1 + e^z) - y z, z = X w",
        fn=objectives.logistic_regression_loss,
        bench_sizes=MATMUL_SIZES,
        make_example=_logistic_example,
        notes="Loss, gradient and Hessian are finite for any finite logits (logaddexp; "
        "s(1 - s) by logistic_prime, accurate in the tails).",
    ),
    Rule(
        id="softmax_cross_entropy",
        gradient=objectives.softmax_cross_entropy_gradient,
        hessian_form=objectives.softmax_cross_entropy_hessian,
        title="Softmax cross-entropy",
        formula=r"\frac{\partial \mathcal{L}}{\partial \mathbf{z}}"
        r"=\operatorname{softmax}(\mathbf{z})-\mathbf{t}",
        numerator_formula=r"\textstyle\sum_k t_k\, \mathbf{p}-\mathbf{t},\ "
        r"\nabla^2=\textstyle\sum_k t_k \left(\operatorname{diag}(\mathbf{p})-\mathbf{p} "
        r"\mathbf{p}^{\mathrm{T}}\right),\ \mathbf{p}=\operatorname{softmax}(\mathbf{z})",
        plain="dL/dz = softmax(z) - t; Hessian diag(p) - p p^T (targets summing to one)",
        source=f"{_PRML} sec. 4.3.4",
        shapes="z in R^K, t in R^K (one-hot or a probability vector); L = -sum t log softmax(z)",
        fn=objectives.softmax_cross_entropy,
        bench_sizes=DIAGONAL_SIZES,
        make_example=_cross_entropy_example,
        notes="Max-shifted (log_softmax): finite for any finite logits.",
    ),
)
