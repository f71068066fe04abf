"""matcalc_jax: matrix-calculus rules as closed-form Jacobians beside jax.jacfwd / jax.jacrev.

Every rule of the catalogue (``rules()``, ``rule(id)``) has a hand-written closed form, public
below, that takes ``layout="numerator"`` (JAX's ``out.shape + in.shape``, the default) or
``layout="denominator"`` (the seed page's ``in.shape + out.shape``). The product and chain
rules are combinators: they build a Jacobian from the Jacobians of the pieces.

``jacobian(f)`` derives the structured Jacobian of any JAX program with those rules as its
primitives (see ``matcalc_jax.transform``); ``programs()`` is the corpus it is checked on.
"""

from matcalc_jax import mlp, nn
from matcalc_jax.catalogue import programs, rule, rules
from matcalc_jax.catalogue.record import Rule
from matcalc_jax.core.layout import LAYOUTS, Layout
from matcalc_jax.forms.affine import (
    affine_matrix_gradient,
    affine_matrix_jacobian,
    kronecker_vec_jacobian,
    linear_layer_bias_jacobian,
    linear_layer_input_jacobian,
    linear_layer_weight_jacobian,
    trace_chain_per_entry,
    trace_chain_vec,
)
from matcalc_jax.forms.chains import (
    chain_elementwise,
    chain_matrix_trace,
    chain_matrix_vector,
    chain_scalar,
    chain_vector,
)
from matcalc_jax.forms.elementwise import (
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
from matcalc_jax.forms.inverse import (
    det_gradient,
    inverse_jacobian,
    logdet_gradient,
    reciprocal_condition,
    solve_jacobian,
    solve_rhs_jacobian,
)
from matcalc_jax.forms.linear import identity_jacobian, linear_jacobian, linear_transposed_jacobian
from matcalc_jax.forms.objectives import (
    least_squares,
    least_squares_gradient,
    least_squares_hessian,
    logistic_regression_gradient,
    logistic_regression_hessian,
    logistic_regression_loss,
    quadratic_form,
    quadratic_form_gradient,
    quadratic_form_hessian,
    softmax_cross_entropy,
    softmax_cross_entropy_gradient,
    softmax_cross_entropy_hessian,
)
from matcalc_jax.forms.products import (
    product_bilinear,
    product_inner,
    product_scalar_vector,
    sum_rule,
)
from matcalc_jax.forms.softmax import softmax_jacobian
from matcalc_jax.forms.traces import (
    frobenius_gradient,
    frobenius_hessian,
    trace_linear_gradient,
    trace_quadratic_gradient,
    trace_quadratic_hessian,
)
from matcalc_jax.operators import (
    BatchOfOperatorsError,
    BlockDiagonal,
    BlockMatrix,
    Composition,
    Contraction,
    Dense,
    Diagonal,
    DiagonalPlusLowRank,
    Identity,
    JacobianOperator,
    Kronecker,
    LowRank,
    Scaled,
    Sum,
    WeightedGram,
    Zero,
    batched_jacobian,
    compose,
)
from matcalc_jax.transform import (
    GaussNewton,
    Hessian,
    UnsupportedPrimitiveError,
    gauss_newton,
    hessian,
    jacobian,
    laplacian,
    supported_primitives,
)
from matcalc_jax.verification.harness import Report, verify
from matcalc_jax.verification.tolerance import TOLERANCES, tolerance

__version__ = "0.1.0"

__all__ = [
    "LAYOUTS",
    "TOLERANCES",
    "BatchOfOperatorsError",
    "BlockDiagonal",
    "BlockMatrix",
    "Composition",
    "Contraction",
    "Dense",
    "Diagonal",
    "DiagonalPlusLowRank",
    "GaussNewton",
    "Hessian",
    "Identity",
    "JacobianOperator",
    "Kronecker",
    "Layout",
    "LowRank",
    "Report",
    "Rule",
    "Scaled",
    "Sum",
    "UnsupportedPrimitiveError",
    "WeightedGram",
    "Zero",
    "affine_matrix_gradient",
    "affine_matrix_jacobian",
    "batched_jacobian",
    "chain_elementwise",
    "chain_matrix_trace",
    "chain_matrix_vector",
    "chain_scalar",
    "chain_vector",
    "compose",
    "det_gradient",
    "elementwise_jacobian",
    "exp_jacobian",
    "frobenius_gradient",
    "frobenius_hessian",
    "gauss_newton",
    "hessian",
    "identity_jacobian",
    "inverse_jacobian",
    "jacobian",
    "kronecker_vec_jacobian",
    "laplacian",
    "least_squares",
    "least_squares_gradient",
    "least_squares_hessian",
    "linear_jacobian",
    "linear_layer_bias_jacobian",
    "linear_layer_input_jacobian",
    "linear_layer_weight_jacobian",
    "linear_transposed_jacobian",
    "log_jacobian",
    "logdet_gradient",
    "logistic_general",
    "logistic_general_jacobian",
    "logistic_jacobian",
    "logistic_prime",
    "logistic_regression_gradient",
    "logistic_regression_hessian",
    "logistic_regression_loss",
    "logistic_scalar_jacobian",
    "mlp",
    "nn",
    "power_jacobian",
    "product_bilinear",
    "product_inner",
    "product_scalar_vector",
    "programs",
    "quadratic_form",
    "quadratic_form_gradient",
    "quadratic_form_hessian",
    "reciprocal_condition",
    "rule",
    "rules",
    "softmax_cross_entropy",
    "softmax_cross_entropy_gradient",
    "softmax_cross_entropy_hessian",
    "softmax_jacobian",
    "solve_jacobian",
    "solve_rhs_jacobian",
    "sum_rule",
    "supported_primitives",
    "tolerance",
    "trace_chain_per_entry",
    "trace_chain_vec",
    "trace_linear_gradient",
    "trace_quadratic_gradient",
    "trace_quadratic_hessian",
    "verify",
]
