"""Test settings: float64 available everywhere, hypothesis without deadlines (jit compiles).

The suite runs in parallel processes (pytest-xdist, ``-n auto`` in pyproject.toml); on a GPU
each process takes GPU memory as it needs it instead of JAX's default 75% up front.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

settings.register_profile("matcalc", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("matcalc")

# tests/multidevice needs eight devices: tests/test_sharding.py runs it in a subprocess with
# eight emulated CPU devices; a machine with eight accelerators runs it directly.
collect_ignore = [] if jax.device_count() >= 8 else ["multidevice"]
