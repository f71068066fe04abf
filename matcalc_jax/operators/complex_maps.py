"""The maps of complex tangents that are only real-linear, and the discrete Fourier
transform, as operators: ``ImaginaryPart`` (w -> Im w), ``Conjugate`` (w -> conj w) and
``Fourier`` (``lax.fft`` in its four types, stored as its type and lengths: ``mv`` is an
FFT, never a dense n x n matrix). Their transposes follow JAX's pairing of complex
cotangents, ``<u, w> = Re(u^T w)`` (the table in ``matcalc_jax.transform.complex_values``).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from jax import Array, lax

from matcalc_jax.core.layout import Layout
from matcalc_jax.operators.base import pytree
from matcalc_jax.operators.index_maps import Map, cast


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class ImaginaryPart(Map):
    """w -> Im(w), complex tangents to real ones; transposed (JAX's pairing) to u -> -i u."""

    layout: Layout = "numerator"
    real_linear_only = True

    def _apply(self, tangent: Array) -> Array:
        return jnp.imag(tangent).astype(self.dtype)

    def _apply_transpose(self, cotangent: Array) -> Array:
        return lax.complex(jnp.zeros_like(cotangent), -cotangent)


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "layout"))
class Conjugate(Map):
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


def reads_half_spectrum(fft_type: Any) -> bool:
    """Whether a ``lax.fft`` of type ``fft_type`` is the inverse real DFT (``IRFFT``): it
    reads a half spectrum as a Hermitian whole (drops the imaginary parts of its ends), so
    it is linear over the reals only, not over the complex numbers."""
    return lax.FftType(fft_type).name == "IRFFT"


@pytree((), ("out_sizes", "in_sizes", "dtype_name", "fft_type", "lengths", "layout"))
class Fourier(Map):
    """The discrete Fourier transform over the last ``len(lengths)`` axes (``lax.fft``), of
    type ``fft_type``: ``FFT`` and ``IFFT`` complex to complex, ``RFFT`` real to its half
    spectrum, ``IRFFT`` the half spectrum back to real. Stored as its type and lengths."""

    fft_type: Any
    lengths: tuple[int, ...]
    layout: Layout = "numerator"

    def _kind(self) -> str:
        return lax.FftType(self.fft_type).name

    @property
    def real_linear_only(self) -> bool:
        return reads_half_spectrum(self.fft_type)

    @property
    def real_to_complex(self) -> bool:  # a real signal to its half spectrum
        return self._kind() == "RFFT"

    def _apply(self, tangent: Array) -> Array:
        if self._kind() == "RFFT":  # the input side is real
            tangent = cast(tangent, jnp.finfo(self.dtype).dtype)
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
