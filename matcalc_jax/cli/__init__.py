"""The ``matcalc-jax`` command line: ``verify``, ``bench``, ``bench-models``, ``list``,
``docs`` and ``accuracy``."""

from matcalc_jax.cli.main import main

__all__ = ["main"]
