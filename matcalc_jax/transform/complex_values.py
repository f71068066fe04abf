"""Complex intermediates and the Fourier transform.

The argument is real, so the Jacobian of a complex intermediate ``z = g(x)`` is a complex
matrix: ``dz = J dx`` with ``dx`` real. The transform carries it as an operator with a
complex output, and follows JAX's convention for complex cotangents, the bilinear pairing
``<u, w> = Re(u^T w)``: ``vm(u)`` is what ``jax.vjp`` returns for a complex cotangent ``u``.
Under that pairing a complex-linear map transposes to ``A^T`` (no conjugate), so the
catalogue's operators serve complex maps as they are, and the maps that are only real-linear
carry their own transposes:

===================  ==========================  =======================================
map of a tangent w   ``mv``                      ``vm`` (JAX's transpose)
===================  ==========================  =======================================
``x + 0i``           cast                        ``Re(u)``  (``maps.ChangeType``)
``Re w``             ``Re(w)``                   ``u + 0i`` (``maps.ChangeType``)
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

import math
from typing import Any

import jax.numpy as jnp
from jax import Array, lax

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import compose, pytree
from matcalc_jax.operators.diagonal import Diagonal
from matcalc_jax.transform import maps
from matcalc_jax.transform.registry import broadcast, pointwise, total


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class ImaginaryPart(maps._Map):
    """w -> Im(w), complex tangents to real ones; transposed (JAX's pairing) to u -> -i u."""

    layout: Layout = "numerator"
    real_linear_only = True

    def _apply(self, tangent: Array) -> Array:
        return jnp.imag(tangent).astype(self.dtype)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return lax.complex(jnp.zeros_like(cotangent), -cotangent)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class Conjugate(maps._Map):
    """w -> conj(w): real-linear, not complex-linear; its own transpose."""

    layout: Layout = "numerator"
    real_linear_only = True

    def _apply(self, tangent: Array) -> Array:
        return jnp.conj(tangent)

    _apply_transpose = _apply


def _half_spectrum_weights(length: int, dtype: Any) -> Array:
    """1 for the mean (and the Nyquist entry of an even length), 2 for the entries that
    stand for a conjugate pair: how often each entry of an ``rfft`` counts in the inverse."""
    count = length // 2 + 1
    weights = jnp.full((count,), 2, dtype)
    weights = weights.at[0].set(1)
    return weights.at[-1].set(1) if length % 2 == 0 else weights


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "fft_type", "lengths", "layout"))
class Fourier(maps._Map):
    """The discrete Fourier transform over the last ``len(lengths)`` axes (``lax.fft``), of
    type ``fft_type``: ``FFT`` and ``IFFT`` complex to complex, ``RFFT`` real to its half
    spectrum, ``IRFFT`` the half spectrum back to real. Stored as its type and lengths."""

    fft_type: Any
    lengths: tuple[int, ...]
    layout: Layout = "numerator"

    def _kind(self) -> str:
        return lax.FftType(self.fft_type).name

    @property
    def real_linear_only(self) -> bool:  # reads a half spectrum as a Hermitian whole
        return self._kind() == "IRFFT"

    def _apply(self, tangent: Array) -> Array:
        if self._kind() == "RFFT":  # the input side is real
            tangent = maps.cast(tangent, jnp.finfo(self.dtype).dtype)
        return lax.fft(tangent, self.fft_type, self.lengths)

    def _apply_transpose(self, cotangent: Array) -> Array:
        kind = self._kind()
        if kind in ("FFT", "IFFT"):  # a symmetric matrix (a Kronecker product of them)
            return lax.fft(cotangent, self.fft_type, self.lengths)
        if kind == "RFFT":
            width = self.lengths[-1] - cotangent.shape[-1]
            padded = jnp.pad(cotangent, [(0, 0)] * (cotangent.ndim - 1) + [(0, width)])
            return jnp.real(lax.fft(padded, lax.FftType.FFT, self.lengths))
        spectrum = lax.fft(cotangent, lax.FftType.RFFT, self.lengths)  # IRFFT
        weights = _half_spectrum_weights(self.lengths[-1], spectrum.dtype) / math.prod(self.lengths)
        return jnp.conj(spectrum * weights.reshape((1,) * (spectrum.ndim - 1) + weights.shape))

    def describe(self) -> str:
        return f"{self._kind()} over {self.lengths}"


# --------------------------------------------------------------------------- the rules


def _cast_map(y: Array, x: Array) -> maps.ChangeType:
    shape = tuple(y.shape)
    return maps.ChangeType(shape, shape, y.dtype.name, x.dtype.name)


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


__all__ = ["Conjugate", "Fourier", "ImaginaryPart", "complex_abs"]
