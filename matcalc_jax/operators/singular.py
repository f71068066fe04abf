"""The check of an eager ``solve``: a singular operator is a ``ValueError``, never a
finite x that does not solve the system (what an LU's rounded zero pivot gives, as
``jnp.linalg.solve`` gives it). Every operator's ``solve`` runs it when called on concrete
arrays (``base.checked_solve``); under ``jit`` the solution is what the factorization
gives. It reads an operator through its methods and attributes alone (``logdet``, ``mv``,
``batch_axes``, ``solve_structure`` and its ``solved_entrywise``,
``capacitance_condition`` or ``factor_condition``), so that ``base`` can import it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from matcalc_jax.core.precision import is_half


def check_solution(
    call: str,
    matrix: str,
    symbol: str,
    op: Any,
    rhs: Array,
    solution: Array,
    solve: Callable[[Array], Array],
    *,
    every_singular: bool = True,
) -> None:
    """Called outside ``jit``: the ``ValueError`` of a singular ``op`` (under ``jit``
    nothing: the solution is what the factorization gives, as ``jnp.linalg.solve``).

    With ``every_singular`` (a Hessian's solve): log|det| = -inf (but for a half type's
    overflowed sum beside a finite solution), a non-finite solution of a finite right-hand
    side, or one singular to working precision: ``_past_condition``, past ``1 / (16 eps)`` (the
    LU of a matrix singular in exact arithmetic, softmax cross-entropy's Hessian, rounds to
    a finite x of size 1e16 that does not solve it; a right-hand side in the range of a
    rank-deficient one gives one finite x of many), or a step of iterative refinement,
    d = ``solve`` (rhs - op x), at least half the size of x (``_refinement``: no digit of x
    is right; a safeguard where the bound falls short, as it did without the probe, a
    shift-invariant loss's Hessian at 7e12 where it is 8e15).

    Without it (a Jacobian's solve, whose NaN marks an exact zero pivot in its block): only
    a finite x that does not solve the system, by the step of iterative refinement alone,
    which no scaling of the rows fools (diag(1e20, 1, 2) + u v^T is solved to 1e-16); a
    half type's solve, computed in float32 and rounded once, is not judged by a residual
    in the half type."""
    if isinstance(solution, jax.core.Tracer) or isinstance(rhs, jax.core.Tracer):
        return
    # On the host: an eager jnp operation compiles a program of its own.
    finite, solved = _all_finite(rhs), _all_finite(solution)
    if not every_singular:
        if finite and solved and not is_half(op.dtype):
            change = _refinement(op, rhs, solution, solve)
            if change >= 0.5:
                _raise(call, matrix, symbol, _refinement_says(change))
        return
    logdet = op.logdet()
    # A half type's log|det| of -inf with a finite solution is its sum's overflow (0.01 I at
    # n = 20000: -92103), not a zero pivot; the checks below judge that system.
    overflowed = is_half(op.dtype) and solved
    if (bool(jnp.isneginf(logdet)) and not overflowed) or (finite and not solved):
        how = f"singular (log|det {symbol}| = {float(logdet)})"
    elif finite and (woodbury := _capacitance_condition(op)) > _woodbury_limit(op):
        how = (
            "singular to working precision (the r x r system of Woodbury's identity has a "
            f"condition number of {woodbury:.1e} beside the size of its terms)"
        )
    elif (
        finite and not _solved_entrywise(op) and (past := _past_condition(op, rhs, solution, solve))
    ):
        how = f"singular to working precision ({past})"
    elif finite and (change := _refinement(op, rhs, solution, solve)) >= 0.5:
        how = _refinement_says(change)
    else:
        return
    _raise(call, matrix, symbol, how)


def _past_condition(
    op: Any, rhs: Array, solution: Array, solve: Callable[[Array], Array]
) -> str | None:
    """What says op's solve has no correct digit, past ``_singular_condition``; None below
    it. A structure solved factor by factor (a ``Kronecker``: its ``factor_condition``) is
    judged by its factors' condition numbers, summed: (A^T A) (x) (B B^T) with factors of
    condition 1e4 is 1e8 in all and solved to 1e-3 in float32. Another by ``_condition``."""
    limit = _singular_condition(op.dtype)
    factors = getattr(op.solve_structure(), "factor_condition", None)
    if factors is not None:
        condition = float(factors())
        says = f"the condition numbers of its factors sum to {condition:.1e}"
    else:
        condition = _condition(op, rhs, solution, solve)
        says = f"condition number at least {condition:.1e}"
    return says if condition > limit else None


def _refinement_says(change: float) -> str:
    return (
        "singular to working precision (a step of iterative refinement changes the "
        f"solution by {change:.0%} of its norm)"
    )


def _raise(call: str, matrix: str, symbol: str, how: str) -> NoReturn:
    raise ValueError(
        f"matcalc_jax.{call}.solve: {matrix} is {how}; no solution of {symbol} x = rhs "
        "exists or it is not unique. Regularize it (add a multiple of the identity) or use mv."
    )


def _all_finite(a: Any) -> bool:
    return bool(np.all(np.isfinite(np.asarray(a))))


def _capacitance_condition(op: Any) -> float:
    """The ``capacitance_condition`` of op's structure (a diagonal plus low rank op, under
    a scale or a rounding: ``solve_structure``); 0 for another op."""
    structure = op.solve_structure()
    condition = getattr(structure, "capacitance_condition", None)
    return 0.0 if condition is None else float(condition())


def _woodbury_limit(op: Any) -> float:
    """The capacitance condition past which Woodbury's solve has no correct digit:
    1 / (16 eps), eps of the type it is computed in (float32 for a half type). Not
    divided by a power of n: the measure's terms grow with n (logsumexp + |x|^2 +
    sum(x)^2 at n = 2000, condition 4e3, has a capacitance condition of 1.3e4)."""
    working = jnp.float32 if is_half(op.dtype) else op.dtype
    return _singular_condition(working)


def _singular_condition(dtype: Any) -> float:
    """The condition number past which a solve has no correct digit: 1 / (16 eps)."""
    return 1.0 / (16 * float(jnp.finfo(dtype).eps))


def _norm(a: Array) -> float:
    """The 2-norm of ``a`` in float64 on the host, scaled by its largest entry: no square
    overflows (a float32 right-hand side of 1e28), none underflows."""
    return float(_row_norms(np.asarray(a).reshape(1, -1))[0])


def _row_norms(rows: Any) -> np.ndarray:
    """``_norm`` of each row of the 2-d array ``rows``."""
    rows = np.abs(np.asarray(rows)).astype(np.float64)
    largest = np.max(rows, axis=1, initial=0.0)
    scalable = (largest > 0) & np.isfinite(largest)
    scale = np.where(scalable, largest, 1.0)
    return np.where(scalable, scale * np.linalg.norm(rows / scale[:, None], axis=1), largest)


def _refinement(op: Any, rhs: Array, solution: Array, solve: Callable[[Array], Array]) -> float:
    """||d|| / ||x|| for d = ``solve`` (rhs - op x), the step of iterative refinement from
    x = ``solution``: about cond(op) eps where x is right, near 1 where no digit of it is."""
    size = _norm(solution)
    if size == 0:
        return 0.0
    x = solution if solution.dtype == op.dtype else solution.astype(op.dtype)
    with np.errstate(all="ignore"):  # on the host, in op's dtype (an overflow gives inf)
        residual = np.asarray(rhs, op.dtype) - np.asarray(op.mv(x))
    change = _norm(solve(residual))
    return change / size if math.isfinite(change) else math.inf


#: The seed of ``_condition``'s probe: the bytes of "matcalc_jax probe".
_PROBE_SEED = int.from_bytes(b"matcalc_jax probe", "big")


def _condition(op: Any, rhs: Array, solution: Array, solve: Callable[[Array], Array]) -> float:
    """A lower bound on op's condition number from the caller's system and from a fixed
    probe p, solved as well: a right-hand side in the range of a singular op has a finite
    solution of its size (the LU's rounded zero pivot meets a rounded zero), which says
    nothing of the null space, while p has a part along it that the solve blows up to
    ||p|| / (eps ||op||). Deterministic: p is drawn from the kit's own seed (not 0, 42 or
    another that a user's data is likely drawn from: a row of the data is in the range).
    Unscaled: Jacobi's scaling S op S spared badly scaled Hessians but let a singular one
    with columns scaled 10^+-4 through, and refused [[1e-7, 1], [1, 1e-7]] (condition 1).
    A block-diagonal op is bounded block by block (``_block_axis``)."""
    axis = _block_axis(op)
    bound = _condition_at_least(op, rhs, solution, axis)
    probe = np.random.default_rng(_PROBE_SEED).standard_normal(math.prod(op.in_shape))
    probe = jnp.asarray(probe.reshape(op.in_shape), op.dtype)
    probe_solution = solve(probe)
    if not _all_finite(probe_solution):
        return math.inf
    return max(bound, _condition_at_least(op, probe, probe_solution, axis))


def _block_axis(op: Any) -> int | None:
    """The axis along which a square op mixes nothing (``batch_axes``: a ``BlockDiagonal``,
    or the composition a per-example loss 0.5 |W_b x_b|^2 gives), the same axis of its
    input and output; None for another op. Each block is then solved on its own, and the
    digits of x_b depend on cond(H_b) alone: blocks of condition 3 scaled by 1, 1e3 and
    1e6 (condition 3e6 together, past float32's 1 / (16 eps)) are solved to 3e-8."""
    if op.in_shape != op.out_shape:
        return None
    shared = sorted(i for o, i in op.batch_axes() if o == i)
    return shared[0] if shared else None


def _rows(a: Any, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    """``a`` as a 2-d host array, a row per block along ``axis`` (one row for None)."""
    a = np.asarray(a).reshape(shape)
    return a.reshape(1, -1) if axis is None else np.moveaxis(a, axis, 0).reshape(shape[axis], -1)


def _unrows(rows: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    """The inverse of ``_rows``."""
    if axis is None:
        return rows.reshape(shape)
    moved = (shape[axis], *shape[:axis], *shape[axis + 1 :])
    return np.moveaxis(rows.reshape(moved), 0, axis)


def _solved_entrywise(op: Any) -> bool:
    """True for a diagonal op (``Identity``, ``Diagonal``, a multiple of one: their
    ``solved_entrywise``): x_i = b_i / d_i is right to the last digit whatever the condition
    number (diag(1, 1e6) in float32 is past 1 / (16 eps) and solved exactly); singular only
    with a zero on the diagonal, which log|det| finds."""
    return op.solve_structure().solved_entrywise


def _condition_at_least(op: Any, rhs: Array, solution: Array, axis: int | None = None) -> float:
    """A lower bound on op's condition number: ||op|| ||op^{-1}|| >= (||op v|| / ||v||)
    (||x|| / ||b||), ||op|| bounded below by two steps of the power method from a fixed
    vector. Two ``mv``, cheap for any structure. For an op block diagonal along ``axis``
    (``_block_axis``), the largest of the blocks' bounds, each taken the same way on its
    own slice (a block whose b_b is 0 says nothing)."""
    shape = op.in_shape
    sizes = _row_norms(_rows(rhs, shape, axis))
    bounded = (sizes > 0) & np.isfinite(sizes)
    if not bounded.any():
        return 0.0
    v = _rows(np.cos(np.arange(math.prod(shape), dtype=np.float64)), shape, axis)
    largest, lengths = np.zeros(len(sizes)), _row_norms(v)
    for _ in range(2):
        w = _rows(op.mv(jnp.asarray(_unrows(v, shape, axis), op.dtype)), shape, axis)
        images = _row_norms(w)
        largest = np.fmax(largest, images / np.maximum(lengths, 1e-300))
        growing = (images > 0) & np.isfinite(images)
        if not growing.any():
            break
        v = w / np.where(growing, images, 1.0)[:, None]
        lengths = _row_norms(v)
    bounds = largest * _row_norms(_rows(solution, shape, axis)) / np.where(bounded, sizes, 1.0)
    return float(np.max(bounds[bounded]))
