"""The runtime: 64-bit mode, matrix-product precision, and a description of the machine.

Verification and benchmarks run under ``precise``: float64 on when they need it, and
matrix products at precision "highest", so that TF32 on a GPU is never mistaken for a wrong
rule. ``environment`` records what a run saw, for its JSON report.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from typing import Any

import jax
import jaxlib


@contextlib.contextmanager
def x64(enabled: bool) -> Iterator[None]:
    """64-bit mode for the block when ``enabled``, in this thread only (JAX's thread-local
    ``jax.enable_x64`` context): other threads of the process keep their own mode, so a
    verification never changes what an unrelated thread's ``jnp.zeros(1)`` gives, and two
    verifications in two threads do not switch it under each other. A thread the block
    starts (a worker pool) must enter it again."""
    if not enabled or jax.config.jax_enable_x64:
        yield
        return
    with jax.enable_x64(True):
        yield


@contextlib.contextmanager
def precise(enable_x64: bool) -> Iterator[dict[str, Any]]:
    """64-bit mode when ``enable_x64``, matrix products at "highest"; yields
    ``environment`` as seen inside."""
    with x64(enable_x64), jax.default_matmul_precision("highest"):
        yield environment()


def environment() -> dict[str, Any]:
    """Where the code runs: device, versions, x64 flag, the matmul precision in force, host."""
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "x64": bool(jax.config.jax_enable_x64),
        "matmul_precision": jax.config.jax_default_matmul_precision or "default",
        "python": platform.python_version(),
        "host": platform.node(),
        "machine": platform.machine(),
    }
