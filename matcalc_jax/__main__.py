"""``python -m matcalc_jax``: the same as the ``matcalc-jax`` command."""

import sys

from matcalc_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
