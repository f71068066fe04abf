"""Building a Jacobian a few columns (or rows) at a time, to cap its peak memory.

``jax.jacfwd`` pushes every unit tangent through the map at once (``vmap`` over the identity),
so its intermediates are ``in_size`` times those of one Jacobian-vector product; ``jax.jacrev``
does the same with ``out_size`` cotangents. Taking the unit vectors ``chunk_size`` at a time
(a loop whose body is vectorized over one chunk, as ``jax.lax.map`` with ``batch_size`` does)
bounds the intermediates by ``chunk_size`` products: the same Jacobian, a smaller peak, more
sequential steps. torch.func's ``chunk_size`` does the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from matcalc_jax.core.sharding import replicated, replicated_like


def check_chunk_size(where: str, chunk_size: object) -> int | None:
    """``chunk_size`` as an int, or ``ValueError`` naming ``where`` unless it is None or a
    positive integer."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"{where}: chunk_size={chunk_size!r}; expected a positive integer or None "
            "(None: all columns at once)"
        )
    return chunk_size


def assemble(
    fn: Callable[[Array], Array],
    size: int,
    dtype: Any,
    image_shape: tuple[int, ...],
    chunk_size: int,
    *,
    as_columns: bool,
) -> Array:
    """The images ``fn(e_i)`` of the unit vectors e_i of length ``size``, computed
    ``chunk_size`` at a time and written into one array: ``(size,) + image_shape`` (rows,
    ``as_columns=False``) or ``image_shape + (size,)`` (columns).

    A ``jax.lax.fori_loop`` updates the result in place, so no second copy of it is made to
    transpose or trim it: each step makes its ``chunk_size`` unit vectors, maps them with
    ``jax.vmap(fn)`` and writes the block. The last step starts at ``size - chunk_size`` and
    rewrites a few entries with the same values instead of running a shorter chunk. Of a
    sharded map the result is whole on every device: each chunk is gathered as it is written.
    """
    chunk = min(chunk_size, size)
    steps = -(-size // chunk)
    result_shape = (*image_shape, size) if as_columns else (size, *image_shape)
    zero = jnp.zeros((), jnp.int32)

    def step(index: Array, result: Array) -> Array:
        start = jnp.minimum(index * chunk, size - chunk).astype(jnp.int32)
        basis = jax.nn.one_hot(start + jnp.arange(chunk), size, dtype=dtype)
        images = replicated(jax.vmap(fn)(basis))  # the result is whole on every device
        if as_columns:
            corner = (zero,) * len(image_shape) + (start,)
            return jax.lax.dynamic_update_slice(result, jnp.moveaxis(images, 0, -1), corner)
        return jax.lax.dynamic_update_slice(result, images, (start,) + (zero,) * len(image_shape))

    image = jax.eval_shape(lambda: replicated(fn(jnp.zeros(size, dtype))))
    # On the image's mesh (whole on each device) when the map is sharded, else plain. Placed
    # by reshard: from JAX 0.11, zeros' out_sharding on a mesh that no context sets left the
    # array unplaced (a ShardingTypeError at the first chunk written).
    initial = jnp.zeros(result_shape, image.dtype)
    whole = replicated_like(image)
    if whole is not None:
        initial = jax.sharding.reshard(initial, whole)
    return jax.lax.fori_loop(0, steps, step, initial)
