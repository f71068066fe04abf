"""Structured Jacobians: linear operators that know what the rule says the Jacobian is.

The seed's formulas name the shape of their Jacobians: ``I``, ``A^T``, ``diag(f'(x))``,
``diag(s) - s s^T``, and for Y = A X B a Kronecker product. Autodiff cannot know this and
builds dense K x K (or s x t x p x q) arrays. These types keep the structure:

| type | the Jacobian | memory |
|---|---|---|
| ``Identity`` | I | O(1) |
| ``Zero`` | 0 (the value does not depend on x) | O(1) |
| ``Diagonal`` | diag(d) | O(K) |
| ``Dense`` | any array | O(out * in) |
| ``LowRank`` | U V^T | O((out + in) r) |
| ``DiagonalPlusLowRank`` | diag(d) + U V^T (softmax: r = 1) | O(K r) |
| ``Kronecker`` | X -> A X B (vec: A (x) B^T) | O(sp + qt) |
| ``BlockDiagonal`` | a map applied over a batch axis | O(N n m) |
| ``BlockMatrix`` | a pytree map on its flattened vectors: blocks of operators | its blocks |
| ``WeightedGram`` | X^T diag(w) X (a Hessian, factored) | O(n d) |
| ``Contraction`` | v -> einsum(v, core): A x, X B, sums, broadcasts, transposes | O(core) |
| ``Scaled``, ``Sum``, ``Composition`` | c J, J1 + J2, J1 o J2 | their parts |

Every operator is a JAX pytree (it passes through ``jit``, ``vmap`` and ``tree_map``), has
``out_shape``, ``in_shape`` and a ``layout``, and offers ``mv`` (Jacobian-vector product,
a tangent of ``in_shape`` to one of ``out_shape``), ``vm`` / ``rmv`` (vector-Jacobian
product, a cotangent of ``out_shape`` to one of ``in_shape``), ``to_dense(layout=...)``,
``transpose()`` / ``.T`` (the transpose of the map: ``J.T.mv(u) == J.vm(u)``), ``diagonal()``,
``trace()``, ``logdet()`` and ``solve(b)`` where square, and ``@``
for composition in the layout's order: numerator ``(dz/dy) @ (dy/dx)``, denominator
``(dy/dx) @ (dz/dy)``, each giving dz/dx. ``mv`` and ``vm`` do not depend on the layout,
which only says how ``to_dense`` arranges the axes and how ``@`` reads its operands.

Composition keeps the structure the algebra allows (identity disappears, diagonal times
diagonal is diagonal, Kronecker times Kronecker is Kronecker, block-diagonal times
block-diagonal is block-diagonal, scales factor out); anything else stays a lazy
``Composition`` whose ``mv`` and ``vm`` apply the parts in turn and whose ``to_dense``
multiplies them out only when asked.

Each type lives in its own module with its algebra beside it (its methods, and the
composition and sum rules it registers with ``composition_rule`` and ``addition_rule``);
``matcalc_jax.operators.base`` holds the interface and the generic composites.
"""

from matcalc_jax.operators.base import (
    Composition,
    JacobianOperator,
    Scaled,
    ShapedOperator,
    Sum,
    Transposed,
    add,
    addition_rule,
    compose,
    composition_rule,
    is_operator,
    storage,
)
from matcalc_jax.operators.block_diagonal import BlockDiagonal, batched_jacobian
from matcalc_jax.operators.block_matrix import BlockMatrix
from matcalc_jax.operators.contraction import Contraction
from matcalc_jax.operators.dense import Dense, as_operator
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.gram import WeightedGram
from matcalc_jax.operators.identity import Identity
from matcalc_jax.operators.kronecker import Kronecker
from matcalc_jax.operators.low_rank import DiagonalPlusLowRank, LowRank
from matcalc_jax.operators.zero import Zero

__all__ = [
    "BlockDiagonal",
    "BlockMatrix",
    "Composition",
    "Contraction",
    "Dense",
    "Diagonal",
    "DiagonalPlusLowRank",
    "Identity",
    "JacobianOperator",
    "Kronecker",
    "LowRank",
    "Scaled",
    "ShapedOperator",
    "Sum",
    "Transposed",
    "WeightedGram",
    "Zero",
    "add",
    "addition_rule",
    "as_operator",
    "batched_jacobian",
    "compose",
    "composition_rule",
    "is_operator",
    "storage",
]
