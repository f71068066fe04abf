"""Complex intermediates and the Fourier transform.

The argument is real, so the Jacobian of a complex intermediate ``z = g(x)`` is a complex
matrix: ``dz = J dx`` with ``dx`` real. The transform carries it as an operator with a
complex output, and follows JAX's convention for complex cotangents, the bilinear pairing
``<u, w> = Re(u^T w)``: ``vm(u)`` is what ``jax.vjp`` returns for a complex cotangent ``u``.
Under that pairing a complex-linear map transposes to ``A^T`` (no conjugate), so the
catalogue's operators serve complex maps as they are, and the maps that are only real-linear
carry their own transposes (``matcalc_jax.operators.index_maps`` and ``.complex_maps``):

===================  ==========================  =======================================
map of a tangent w   ``mv``                      ``vm`` (JAX's transpose)
===================  ==========================  =======================================
``x + 0i``           cast                        ``Re(u)``  (``ChangeType``)
``Re w``             ``Re(w)``                   ``u + 0i`` (``ChangeType``)
``Im w``             ``Im(w)``                   ``-i u``   (``ImaginaryPart``)
``conj w``           ``conj(w)``                 ``conj(u)`` (``Conjugate``)
DFT, inverse DFT     ``fft``, ``ifft``            the same: the DFT matrix is symmetric
real DFT (``rfft``)  ``rfft``                    ``Re(fft(u padded to n))``
inverse real DFT     ``irfft``                   ``conj(rfft(u) m / n)``, m the
                                                 half-spectrum's weights (1, 2, ..., 2, 1)
===================  ==========================  =======================================

The rules built on them: ``complex(a, b) = a + i b``, ``real``, ``imag``, ``conj``,
``abs`` of a complex ``z`` (``d|z| = Re(conj(z)/|z| dz)``, 0 at ``z = 0`` as JAX's rule) and
``fft`` in its four types. A DFT is stored as its type and lengths: ``mv`` is an FFT,
never a dense n x n matrix.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array

from matcalc_jax.operators.base import compose
from matcalc_jax.operators.complex_maps import Conjugate, Fourier, ImaginaryPart
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.operators.index_maps import ChangeType
from matcalc_jax.transform.registry import broadcast, pointwise, total

# --------------------------------------------------------------------------- the rules


def _cast_map(y: Array, x: Array) -> ChangeType:
    shape = tuple(y.shape)
    return ChangeType(shape, shape, y.dtype.name, x.dtype.name)


@pointwise("complex", complex=True, linear=True)
def _complex(ctx, eqn, ins, ops, outs):
    y = outs[0]
    shape = tuple(y.shape)
    real_part, imaginary_part = (
        None if op is None else compose(_cast_map(y, x), broadcast(op, shape))
        for x, op in zip(ins, ops, strict=True)
    )
    if imaginary_part is not None:
        imaginary_part = imaginary_part.scaled(jnp.asarray(1j, y.dtype))
    return [total([real_part, imaginary_part])]


@pointwise("real", complex=True, linear=True)
def _real(ctx, eqn, ins, ops, outs):
    return [compose(_cast_map(outs[0], ins[0]), ops[0])]


@pointwise("imag", complex=True, linear=True)
def _imag(ctx, eqn, ins, ops, outs):
    shape = tuple(outs[0].shape)
    return [compose(ImaginaryPart(shape, shape, outs[0].dtype.name), ops[0])]


@pointwise("conj", complex=True, linear=True)
def _conj(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    if not jnp.issubdtype(x.dtype, jnp.complexfloating):  # lax.conj of a real array
        return [compose(_cast_map(y, x), ops[0])]
    shape = tuple(y.shape)
    return [compose(Conjugate(shape, shape, y.dtype.name), ops[0])]


def complex_abs(x: Array, y: Array, op: Any) -> Any:
    """d|z| = Re(conj(z) / |z| dz), with |z| replaced by 1 at z = 0 (JAX's ``abs`` rule)."""
    safe = jnp.where(y == 0, jnp.ones((), y.dtype), y).astype(x.dtype)
    return compose(_cast_map(y, x), compose(Diagonal(jnp.conj(x) / safe), op))


@pointwise("fft", complex=True, linear=True)
def _fft(ctx, eqn, ins, ops, outs):
    x, y = ins[0], outs[0]
    transform = Fourier(
        tuple(y.shape), tuple(x.shape), y.dtype.name,
        eqn.params["fft_type"], tuple(eqn.params["fft_lengths"]),
    )  # fmt: skip
    return [compose(transform, ops[0])]


__all__ = ["complex_abs"]
