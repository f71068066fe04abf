"""The one tolerance table: maximum normwise relative error, keyed by dtype.

The error of an array ``a`` against a reference ``b`` is ``max|a - b| / max|b|`` (see
``matcalc_jax.verification.harness.relative_error``). A closed form and autodiff evaluate the same
derivative with different orders of floating-point operations, so they agree to a few units
of rounding of the dtype, never exactly; these bounds are about 100 ulps, far below the
size of any mistake in a rule (a wrong sign, a missing transpose, a dropped term all give
errors of order one).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

TOLERANCES: dict[str, float] = {
    "bfloat16": 5e-2,
    "float16": 5e-3,
    "float32": 1e-5,
    "float64": 1e-12,
}

#: Central differences in float64 against a closed form: the step is eps^(1/3) (about 6e-6),
#: so truncation and rounding errors are each about 1e-10; the bound leaves a margin of 1000.
FINITE_DIFFERENCE_TOLERANCE: float = 1e-7


def tolerance_key(dtype: Any) -> str:
    """The table's key for ``dtype`` (a dtype or its name; a complex dtype by its parts');
    ``KeyError`` naming the known dtypes for one not in the table.

    >>> tolerance_key("bfloat16"), tolerance_key("complex64")
    ('bfloat16', 'float32')
    """
    try:
        resolved = np.dtype(jnp.dtype(dtype))
        if np.issubdtype(resolved, np.complexfloating):  # the precision of its parts
            resolved = np.finfo(resolved).dtype
        name = resolved.name
    except TypeError:
        name = str(dtype)
    if name not in TOLERANCES:
        raise KeyError(f"no tolerance for dtype {name!r}; known: {sorted(TOLERANCES)}")
    return name


def tolerance(dtype: Any) -> float:
    """The tolerance for ``dtype`` (a dtype or its name); ``KeyError`` for a dtype not in the table.

    >>> tolerance("float64")
    1e-12
    """
    return TOLERANCES[tolerance_key(dtype)]
