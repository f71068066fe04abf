"""Test settings: float64 available everywhere, hypothesis without deadlines (jit compiles)."""

import jax
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

settings.register_profile("matcalc", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("matcalc")
