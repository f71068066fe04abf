r"""The inverse, the determinant, the log-determinant and linear solves.

All four come from one differential, d(X^{-1}) = -X^{-1} (dX) X^{-1} (Matrix Cookbook
eq. (40)), and Jacobi's formula d det(X) = det(X) tr(X^{-1} dX):

- d(X^{-1})_kl / dX_ij = -(X^{-1})_ki (X^{-1})_jl, the map V -> -X^{-1} V X^{-1};
- d det(X) / dX = det(X) X^{-T}, the transposed adjugate;
- d log det(X) / dX = X^{-T};
- for y = A^{-1} b: dy/db = A^{-1} and dy_k/dA_ij = -(A^{-1})_ki y_j.

Singular inputs. A closed form that needs X^{-1} checks the reciprocal condition number
rcond = 1 / (||X||_1 ||X^{-1}||_1), which is cheap once X^{-1} is known. When
rcond < eps of the dtype, X is singular to working precision and X^{-1} has no correct
digits: the result is then NaN in every entry (under ``jax.jit`` a value cannot raise), never a
silent garbage gradient. Above that, the error of X^{-1} grows like eps / rcond, as for any
method. The determinant needs no inverse: its gradient, the transposed adjugate, is smooth
everywhere and is computed from the SVD when X is near singular, so it stays exact at
singular X (where det(X) X^{-T} would be 0 * inf).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from matcalc_jax.core import validate
from matcalc_jax.core.layout import Layout, check_layout
from matcalc_jax.core.precision import in_working_precision
from matcalc_jax.forms.affine import matrix_product_jacobian
from matcalc_jax.operators import Dense, Kronecker


def _one_norm(M: Array) -> Array:
    return jnp.max(jnp.sum(jnp.abs(M), axis=0), initial=0.0)


def reciprocal_condition(X: ArrayLike, X_inverse: ArrayLike) -> Array:
    """rcond = 1 / (||X||_1 ||X^{-1}||_1), between 0 (singular) and 1 (orthogonal-like).

    NaN or infinite entries in ``X_inverse`` (what an LU of a singular matrix gives) give 0.
    """
    X, X_inverse = jnp.asarray(X), jnp.asarray(X_inverse)
    rcond = 1 / (_one_norm(X) * _one_norm(X_inverse))
    return jnp.where(jnp.isfinite(rcond), rcond, jnp.zeros((), rcond.dtype))


def is_singular(X: ArrayLike, X_inverse: ArrayLike) -> Array:
    """True when X is singular to working precision: rcond < eps of the dtype."""
    X = jnp.asarray(X)
    return ~(reciprocal_condition(X, X_inverse) >= jnp.finfo(X.dtype).eps)


def checked_inverse(rule_id: str, name: str, X: ArrayLike) -> Array:
    """X^{-1} for a square X, all NaN where X is singular to working precision."""
    X = validate.square(rule_id, name, X)
    X_inverse = jnp.linalg.inv(X)
    return jnp.where(is_singular(X, X_inverse), jnp.full_like(X_inverse, jnp.nan), X_inverse)


def _lu_factor(X: Array) -> tuple[Array, Array, Array]:
    """One LU of a square X, for det(X) and X^{-T} together.

    Returns (the parity of the row swaps as +-1, the diagonal of U, X^{-T}), so that
    det(X) = parity * prod(diagonal).
    """
    n = X.shape[0]
    lu, pivots = jax.scipy.linalg.lu_factor(X)
    swaps = jnp.sum(pivots != jnp.arange(n, dtype=pivots.dtype))
    parity = jnp.where(swaps % 2 == 0, 1, -1).astype(X.dtype)
    inverse_transposed = jax.scipy.linalg.lu_solve(
        (lu, pivots), jnp.eye(n, dtype=X.dtype), trans=1
    )  # solves X^T Z = I
    return parity, jnp.diagonal(lu), inverse_transposed


# ------------------------------------------------------------------------ X^{-1}


@in_working_precision
def inverse_map(X: ArrayLike) -> Array:
    """X^{-1} for a square X."""
    return jnp.linalg.inv(validate.square("inverse", "X", X))


@in_working_precision
def inverse_jacobian(X: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """d(X^{-1})/dX: d(X^{-1})_kl / dX_ij = -(X^{-1})_ki (X^{-1})_jl.

    Numerator layout (n, n, n, n) indexed [k, l, i, j]; denominator layout [i, j, k, l].
    NaN everywhere when X is singular to working precision (see the module docstring).
    The structured form ``Kronecker(-X^{-1}, X^{-1})`` applies V -> -X^{-1} V X^{-1}.
    """
    layout = check_layout("inverse", layout)
    X_inverse = checked_inverse("inverse", "X", X)
    return matrix_product_jacobian(-X_inverse, X_inverse, layout)


@in_working_precision
def inverse_operator(X: ArrayLike, *, layout: Layout = "numerator") -> Kronecker:
    layout = check_layout("inverse", layout)
    X_inverse = checked_inverse("inverse", "X", X)
    return Kronecker(-X_inverse, X_inverse, layout)


# ------------------------------------------------------------------------ det(X)


@in_working_precision
def det_map(X: ArrayLike) -> Array:
    """det(X) for a square X."""
    return jnp.linalg.det(validate.square("det", "X", X))


def _adjugate_transposed_svd(X: Array) -> Array:
    """adj(X)^T = det(U) det(V) U diag(prod_{j != i} s_j) V^T for X = U diag(s) V^T.

    Products of all singular values but one, from prefix and suffix products (no division),
    so it is exact where X is singular.
    """
    U, s, Vh = jnp.linalg.svd(X)
    one = jnp.ones((1,), s.dtype)
    before = jnp.cumprod(jnp.concatenate([one, s[:-1]]))
    after = jnp.cumprod(jnp.concatenate([one, s[:0:-1]]))[::-1]
    sign = jnp.linalg.det(U) * jnp.linalg.det(Vh)
    return sign * (U * (before * after)) @ Vh


#: Mantissas multiplied at a time by ``_mantissa_and_exponent``: a product of this many lies
#: in [2^-32, 1), a normal number in every float dtype.
_BLOCK = 32


def _mantissa_and_exponent(values: Array) -> tuple[Array, Array]:
    """prod(values) as m 2^E, 1/2 <= |m| < 1 and E an integer (``frexp``'s split), where
    the product itself may under- or overflow: the mantissas are multiplied ``_BLOCK`` at a
    time and split again, the exponents added as integers."""
    if values.size == 0:
        return jnp.ones((), values.dtype), jnp.zeros((), jnp.int32)
    mantissas, exponents = jnp.frexp(values)
    exponent = jnp.sum(exponents)
    while mantissas.size > 1:
        padded = jnp.concatenate([mantissas, jnp.ones(-mantissas.size % _BLOCK, values.dtype)])
        mantissas, exponents = jnp.frexp(jnp.prod(padded.reshape(-1, _BLOCK), axis=1))
        exponent = exponent + jnp.sum(exponents)
    return mantissas[0], exponent


def _times_power_of_two(y: Array, exponent: Array) -> Array:
    """y 2^exponent for an integer exponent of any size, as products by powers of two that
    are normal numbers of y's dtype: exact unless the result under- or overflows, and
    subnormal where it is (``jnp.ldexp`` flushes those to 0 on a CPU)."""
    largest = -jnp.finfo(y.dtype).minexp  # 2^-largest and 2^largest are normal
    for _ in range(3):  # |exponent| <= 3 * largest covers any nonzero, finite result
        step = jnp.clip(exponent, -largest, largest)
        y = y * jnp.ldexp(jnp.ones((), y.dtype), step)
        exponent = exponent - step
    return y


@in_working_precision
def det_gradient(X: ArrayLike) -> Array:
    """d det(X)/dX = det(X) X^{-T}, the transposed adjugate, of shape (n, n).

    Where X is well conditioned (rcond >= sqrt(eps)) it is det(X) X^{-T} from one LU, with
    det(X) carried as m 2^E until the end, so that a det(X) beyond the dtype's range (X =
    1e-13 I of side 3 in float32: det 1e-39) does not turn a representable gradient (1e-26 I)
    into 0 or inf; below that the adjugate comes from the SVD, which stays exact up to and at
    singular X (the gradient of det there is finite and, for rank n - 1, nonzero; its
    products of singular values are formed as they are, so beyond the dtype's range they
    may under- or overflow where the adjugate does not).

    >>> import jax.numpy as jnp
    >>> det_gradient(jnp.array([[2.0, 0.0], [0.0, 3.0]], jnp.float32))
    Array([[3., 0.],
           [0., 2.]], dtype=float32)
    """
    X = validate.square("det", "X", X)
    parity, diagonal, inverse_transposed = _lu_factor(X)
    mantissa, exponent = _mantissa_and_exponent(diagonal)  # det(X) = parity m 2^E
    well = reciprocal_condition(X.T, inverse_transposed) >= jnp.sqrt(jnp.finfo(X.dtype).eps)
    return jax.lax.cond(
        well,
        lambda: _times_power_of_two(parity * mantissa * inverse_transposed, exponent),
        lambda: _adjugate_transposed_svd(X),
    )


# ------------------------------------------------------------------- log det(X)


@in_working_precision
def logdet_map(X: ArrayLike) -> Array:
    """log det(X), NaN where det(X) <= 0 (like ``jnp.log`` of a non-positive number)."""
    X = validate.square("logdet", "X", X)
    sign, logabs = jnp.linalg.slogdet(X)
    return jnp.where(sign > 0, logabs, jnp.full_like(logabs, jnp.nan))


@in_working_precision
def logdet_gradient(X: ArrayLike, *, absolute: bool = False) -> Array:
    """d log det(X)/dX = X^{-T}, of shape (n, n).

    log det is defined where det(X) > 0: elsewhere the result is NaN in every entry, like the
    map (``jax.grad`` of the same map gives zeros there, since the map is a constant NaN).
    With ``absolute=True`` it is the gradient of log|det(X)|, X^{-T} for any nonsingular X.
    NaN where X is singular to working precision in both cases.
    """
    X = validate.square("logdet", "X", X)
    parity, diagonal, inverse_transposed = _lu_factor(X)  # one LU for X^{-T} and det's sign
    nan = jnp.full_like(inverse_transposed, jnp.nan)
    gradient = jnp.where(is_singular(X, inverse_transposed.T), nan, inverse_transposed)
    if absolute:
        return gradient
    positive = parity * jnp.prod(jnp.sign(diagonal)) > 0
    return jnp.where(positive, gradient, nan)


# --------------------------------------------------------------------- A^{-1} b


def _solve_args(rule_id: str, A: ArrayLike, b: ArrayLike) -> tuple[Array, Array]:
    A = validate.square(rule_id, "A", A)
    b = validate.vector(rule_id, "b", b)
    validate.shape(rule_id, "b", b, (A.shape[0],), f"the rows of A, shape {tuple(A.shape)}")
    return A, b


@in_working_precision
def solve_map(A: ArrayLike, b: ArrayLike, *, rule_id: str = "solve") -> Array:
    """y = A^{-1} b by ``jnp.linalg.solve`` (errors name ``rule_id``)."""
    A, b = _solve_args(rule_id, A, b)
    return jnp.linalg.solve(A, b)


@in_working_precision
def solve_jacobian(A: ArrayLike, b: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """dy/dA of y = A^{-1} b: dy_k/dA_ij = -(A^{-1})_ki y_j.

    Numerator layout (n, n, n) indexed [k, i, j]; denominator [i, j, k]. Its vector-Jacobian
    product is the familiar -(A^{-T} u) y^T. NaN where A is singular to working precision.
    """
    layout = check_layout("solve", layout)
    A, b = _solve_args("solve", A, b)
    A_inverse = checked_inverse("solve", "A", A)
    y = A_inverse @ b
    spec = "ki,j->kij" if layout == "numerator" else "ki,j->ijk"
    return jnp.einsum(spec, -A_inverse, y)


@in_working_precision
def solve_rhs_jacobian(A: ArrayLike, b: ArrayLike, *, layout: Layout = "numerator") -> Array:
    """dy/db of y = A^{-1} b: A^{-1} in numerator layout, A^{-T} in denominator layout.

    NaN where A is singular to working precision.
    """
    layout = check_layout("solve_rhs", layout)
    A, _ = _solve_args("solve_rhs", A, b)
    A_inverse = checked_inverse("solve_rhs", "A", A)
    return A_inverse if layout == "numerator" else A_inverse.T


@in_working_precision
def solve_operator(A: ArrayLike, b: ArrayLike, *, layout: Layout = "numerator") -> Kronecker:
    layout = check_layout("solve", layout)
    A, b = _solve_args("solve", A, b)
    A_inverse = checked_inverse("solve", "A", A)
    return Kronecker(-A_inverse, A_inverse @ b, layout)


@in_working_precision
def solve_rhs_operator(A: ArrayLike, b: ArrayLike, *, layout: Layout = "numerator") -> Dense:
    layout = check_layout("solve_rhs", layout)
    A, _ = _solve_args("solve_rhs", A, b)
    return Dense(checked_inverse("solve_rhs", "A", A), 1, layout)
