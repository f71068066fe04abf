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
| ``Banded`` | a few diagonals at fixed offsets (a chained objective's Hessian) | O(k n) |
| ``Contraction`` | v -> einsum(v, core): A x, X B, sums, broadcasts, transposes | O(core) |
| ``Scaled``, ``Sum``, ``Composition`` | c J, J1 + J2, J1 o J2 | their parts |
| index maps (``index_maps``) | reshape, pad, slice, rev, gather, cast, permutation | O(indices) |
| ``Select`` (``selection``) | row i from the Jacobian of the branch chosen there | its branches |
| solves (``solves``) | op(A)^{-1} B; A^{-1} b by a solver's own programs | the factor |
| convolutions (``convolution``) | conv in its input or kernel; sum, max, min pools | one operand |
| complex maps (``complex_maps``) | Im w, conj w, a DFT | O(1) |
| ``Stacked`` (``stacked``) | one operator per loop step, its leaves stacked | its steps |
| factorization tangents (``matrix_functions``) | dL, dw and dV, dQ and dR, ... of dA | the factor |
| program maps (``programs``) | the autodiff fallback, a custom_vjp's own backward rule | operands |

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

Each type, or family of maps, lives in its own module with its algebra beside it (its
methods, and the composition and sum rules it registers with ``composition_rule`` and
``addition_rule``); ``matcalc_jax.operators.base`` holds the interface and the generic
composites, and ``Wrapped``, the base of an operator that holds another and is its map
(``WithFallbacks``; ``matcalc_jax.Hessian``).

The maps of JAX's primitives, a module a family: ``index_maps`` (``Reshape``, ``Embed``,
``Restrict``, ``Reverse``, ``DynamicSlice``, ``ChangeType``, ``Rounding``, ``Gather``,
``TakeAlong``),
``selection`` (``Select``), ``solves`` (``TriangularSolve``, ``TridiagonalSolve``,
``LinearSolve``),
``convolution`` (``Convolution``, ``WindowSum``, ``WindowChoice``), ``complex_maps``
(``ImaginaryPart``, ``Conjugate``, ``Fourier``), ``stacked`` (``Stacked``),
``matrix_functions`` (``TriangularProduct``, ``TridiagonalProduct``, ``CholeskyTangent``,
``EighTangent``,
``QRTangent``, ``SVDTangent``, ``LUTangent``) and ``programs`` (``Linearized``,
``LinearizedByRows``, ``Pullback``, ``JointPullback``, ``FromCotangents``,
``WithFallbacks``, ``InProgramDtypes``). Most derive from ``Map``
(``index_maps``), applied by ``_apply`` and transposed by ``_apply_transpose``, their
compile-time parameters held as ``Static``.
"""

from matcalc_jax.operators.banded import Banded
from matcalc_jax.operators.base import (
    BatchOfOperatorsError,
    Composition,
    JacobianOperator,
    Scaled,
    ShapedOperator,
    Sum,
    Transposed,
    Wrapped,
    add,
    addition_rule,
    compose,
    composition_rule,
    is_operator,
    storage,
)
from matcalc_jax.operators.block_diagonal import BlockDiagonal, batched_jacobian
from matcalc_jax.operators.block_matrix import BlockMatrix
from matcalc_jax.operators.complex_maps import Conjugate, Fourier, ImaginaryPart
from matcalc_jax.operators.contraction import Contraction
from matcalc_jax.operators.convolution import Convolution, WindowChoice, WindowSum
from matcalc_jax.operators.dense import Dense, as_operator
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.gram import WeightedGram
from matcalc_jax.operators.identity import Identity
from matcalc_jax.operators.index_maps import (
    ChangeType,
    DynamicSlice,
    Embed,
    Gather,
    Map,
    Reshape,
    Restrict,
    Reverse,
    Rounding,
    Static,
    TakeAlong,
)
from matcalc_jax.operators.kronecker import Kronecker
from matcalc_jax.operators.low_rank import DiagonalPlusLowRank, LowRank
from matcalc_jax.operators.matrix_functions import (
    CholeskyTangent,
    EighTangent,
    LUTangent,
    QRTangent,
    SVDTangent,
    TriangularProduct,
    TridiagonalProduct,
)
from matcalc_jax.operators.programs import (
    FromCotangents,
    InProgramDtypes,
    JointPullback,
    Linearized,
    LinearizedByRows,
    Pullback,
    WithFallbacks,
)
from matcalc_jax.operators.selection import Select
from matcalc_jax.operators.solves import LinearSolve, TriangularSolve, TridiagonalSolve
from matcalc_jax.operators.stacked import Stacked
from matcalc_jax.operators.zero import Zero

__all__ = [
    "Banded",
    "BatchOfOperatorsError",
    "BlockDiagonal",
    "BlockMatrix",
    "ChangeType",
    "CholeskyTangent",
    "Composition",
    "Conjugate",
    "Contraction",
    "Convolution",
    "Dense",
    "Diagonal",
    "DiagonalPlusLowRank",
    "DynamicSlice",
    "EighTangent",
    "Embed",
    "Fourier",
    "FromCotangents",
    "Gather",
    "Identity",
    "ImaginaryPart",
    "InProgramDtypes",
    "JacobianOperator",
    "JointPullback",
    "Kronecker",
    "LUTangent",
    "LinearSolve",
    "Linearized",
    "LinearizedByRows",
    "LowRank",
    "Map",
    "Pullback",
    "QRTangent",
    "Reshape",
    "Restrict",
    "Reverse",
    "Rounding",
    "SVDTangent",
    "Scaled",
    "Select",
    "ShapedOperator",
    "Stacked",
    "Static",
    "Sum",
    "TakeAlong",
    "Transposed",
    "TriangularProduct",
    "TriangularSolve",
    "TridiagonalProduct",
    "TridiagonalSolve",
    "WeightedGram",
    "WindowChoice",
    "WindowSum",
    "WithFallbacks",
    "Wrapped",
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
