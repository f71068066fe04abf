"""Sharding helpers for the operators: what a contraction over sharded rows returns, and a
tangent laid out like the operator's batch axis.

JAX decides where each array lives. Under an automatic mesh (``AxisType.Auto``) the GSPMD
partitioner places the collectives itself; under an explicit mesh (the default of
``jax.make_mesh`` since JAX 0.7) the sharding is part of the type, and a contraction over a
sharded axis must name its output's sharding. These helpers read the sharding from the array's
type, so the same operator code runs unsharded, on an automatic mesh and on an explicit one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.sharding import NamedSharding, PartitionSpec


def _explicit_sharding(array: Array) -> NamedSharding | None:
    """The array's sharding when it is part of its type (an explicit mesh axis), else None.
    ``array`` may be a ``jax.ShapeDtypeStruct`` (from ``jax.eval_shape``)."""
    typed = array if isinstance(array, jax.ShapeDtypeStruct) else jax.typeof(array)
    sharding = getattr(typed, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty:
        return None
    explicit = jax.sharding.AxisType.Explicit
    if not any(kind == explicit for kind in mesh.axis_types):
        return None
    return sharding


def replicated_like(array: Array) -> NamedSharding | None:
    """The ``out_sharding`` of a sum over ``array``'s sharded rows (X^T u, X^T diag(w) X).

    Replicated on ``array``'s mesh when that mesh is explicit: each device forms its partial
    product and one all-reduce adds them, and the small result (d or d x d values) is on every
    device. ``None`` otherwise, where the partitioner chooses the same by itself.
    """
    sharding = _explicit_sharding(array)
    return None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())


def batch_like(value: Array, reference: Array) -> Array:
    """``value`` resharded so that its leading axis is split like ``reference``'s.

    A tangent given replicated to an operator whose blocks are split over devices is sliced
    locally (no communication), so that ``mv`` runs where the blocks are. A no-op unless
    ``reference`` is explicitly sharded.
    """
    sharding = _explicit_sharding(reference)
    if sharding is None:
        return value
    spec = PartitionSpec(sharding.spec[0] if len(sharding.spec) else None)
    if isinstance(value, jax.core.Tracer) or isinstance(reference, jax.core.Tracer):
        return jax.sharding.reshard(value, NamedSharding(sharding.mesh, spec))
    # Both concrete (eager): the reference's own mesh of devices, not the abstract one.
    return jax.device_put(value, NamedSharding(reference.sharding.mesh, spec))


def replicated(array: Array) -> Array:
    """``array`` whole on every device of its explicit mesh (a gather); unchanged otherwise."""
    sharding = _explicit_sharding(array)
    if sharding is None:
        return array
    return jax.sharding.reshard(array, NamedSharding(sharding.mesh, PartitionSpec()))


def sum_over_rows(spec: str, *operands: Array) -> Array:
    """``jnp.einsum(spec, *operands)`` for a spec that sums over the rows (the leading axis
    ``k``) of a row-sharded dataset, e.g. ``"k,kd->d"`` for X^T u: each device contracts its
    own rows and one all-reduce adds the partial results. The last operand is the dataset
    whose sharding decides; the others are resharded like its rows first."""
    dataset = operands[-1]
    aligned = [batch_like(operand, dataset) for operand in operands[:-1]]
    return jnp.einsum(spec, *aligned, dataset, out_sharding=replicated_like(dataset))
