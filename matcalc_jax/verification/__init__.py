"""Verification: the equivalence harness (closed form vs jacfwd vs jacrev vs finite
differences), its tolerance table, and the accuracy study of ``matcalc_jax.nn``."""
