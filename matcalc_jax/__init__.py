"""matcalc_jax: matrix-calculus rules as closed-form Jacobians beside jax.jacfwd / jax.jacrev.

Every rule of the catalogue (``rules()``, ``rule(id)``) has a hand-written closed form, public
below, that takes ``layout="numerator"`` (JAX's ``out.shape + in.shape``, the default) or
``layout="denominator"`` (the seed page's ``in.shape + out.shape``). The product and chain
rules are combinators: they build a Jacobian from the Jacobians of the pieces.
"""

from matcalc_jax import mlp, nn
from matcalc_jax._catalogue import rule, rules
from matcalc_jax._chains import (
    chain_elementwise,
    chain_matrix_trace,
    chain_matrix_vector,
    chain_scalar,
    chain_vector,
)
from matcalc_jax._elementwise import (
    elementwise_jacobian,
    exp_jacobian,
    log_jacobian,
    logistic_general,
    logistic_general_jacobian,
    logistic_jacobian,
    logistic_prime,
    logistic_scalar_jacobian,
    power_jacobian,
)
from matcalc_jax._harness import Report, verify
from matcalc_jax._layout import LAYOUTS, Layout
from matcalc_jax._linear import identity_jacobian, linear_jacobian, linear_transposed_jacobian
from matcalc_jax._operators import (
    BlockDiagonal,
    Composition,
    Dense,
    Diagonal,
    DiagonalPlusLowRank,
    Identity,
    JacobianOperator,
    Kronecker,
    LowRank,
    Scaled,
    Sum,
    batched_jacobian,
    compose,
)
from matcalc_jax._products import product_bilinear, product_inner, product_scalar_vector, sum_rule
from matcalc_jax._rule import Rule
from matcalc_jax._softmax import softmax_jacobian
from matcalc_jax._tolerance import TOLERANCES, tolerance

__version__ = "0.1.0"

__all__ = [
    "LAYOUTS",
    "TOLERANCES",
    "BlockDiagonal",
    "Composition",
    "Dense",
    "Diagonal",
    "DiagonalPlusLowRank",
    "Identity",
    "JacobianOperator",
    "Kronecker",
    "Layout",
    "LowRank",
    "Report",
    "Rule",
    "Scaled",
    "Sum",
    "batched_jacobian",
    "chain_elementwise",
    "chain_matrix_trace",
    "chain_matrix_vector",
    "chain_scalar",
    "chain_vector",
    "compose",
    "elementwise_jacobian",
    "exp_jacobian",
    "identity_jacobian",
    "linear_jacobian",
    "linear_transposed_jacobian",
    "log_jacobian",
    "logistic_general",
    "logistic_general_jacobian",
    "logistic_jacobian",
    "logistic_prime",
    "logistic_scalar_jacobian",
    "mlp",
    "nn",
    "power_jacobian",
    "product_bilinear",
    "product_inner",
    "product_scalar_vector",
    "rule",
    "rules",
    "softmax_jacobian",
    "sum_rule",
    "tolerance",
    "verify",
]
