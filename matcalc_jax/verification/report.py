"""The verify report for people: a verdict line and a table of each rule's largest errors.

``matcalc-jax verify`` prints these lines; :meth:`Report.to_json` is the same report for
programs. A table cell is the largest normwise relative error of a rule against one
reference at one dtype, over the sizes checked:

    error = max |closed form - reference| / max |reference|
"""

from __future__ import annotations

from matcalc_jax.verification.harness import Report

#: Column headings, short enough for one column per reference in 100 columns.
_SHORT = {"jacfwd": "fwd", "jacrev": "rev", "finite_difference": "fd", "hessian": "hess"}
#: dtypes as a narrow column writes them (here and in the site's tables).
SHORT_DTYPE = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}
#: Characters of an error cell (``1.2e-07``) and of the formula column of a wide table.
_CELL, _FORMULA = 7, 46


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless one: ``1 rule``, ``35 rules``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def verdict(report: Report) -> str:
    """One line that says what happened: every check passed, or how many failed, where."""
    checks, rules = len(report.checks), len(report.rule_ids)
    failures = report.failures()
    if not checks:
        return "verdict: nothing was checked"
    if not failures:
        every = "all " if checks > 1 else ""
        return (
            f"verdict: PASS, {every}{counted(checks, 'check')} of {counted(rules, 'rule')} passed"
        )
    failed = list(dict.fromkeys(c.rule for c in failures))
    names = ", ".join(failed[:4]) + (", ..." if len(failed) > 4 else "")
    return (
        f"verdict: FAIL, {len(failures)} of {counted(checks, 'check')} failed, in "
        f"{len(failed)} of {counted(rules, 'rule')} ({names})"
    )


def _columns(dtypes: list[str], hessians: bool) -> list[tuple[str, str]]:
    """(dtype, reference) of each error column of the table."""
    columns = []
    for dtype in dtypes:
        columns += [(dtype, "jacfwd"), (dtype, "jacrev")]
        if dtype == "float64":
            columns.append((dtype, "finite_difference"))
        if hessians:
            columns.append((dtype, "hessian"))
    return columns


def _cell(value: float | None) -> str:
    return ("-" if value is None else f"{value:.1e}").ljust(_CELL)


def _worst(report: Report, rule_id: str, dtype: str) -> float | None:
    """The largest error / tolerance of ``rule_id`` at ``dtype`` over every reference."""
    ratios = [
        c.error / c.tolerance
        for c in report.checks
        if (c.rule, c.dtype) == (rule_id, dtype) and c.tolerance > 0
    ]
    return max(ratios) if ratios else None


def report_lines(report: Report, *, wide: bool = False, width: int = 100) -> list[str]:
    """The report as lines: where it ran, the verdict, the largest error of each rule
    against jacfwd, jacrev, finite differences and jax.hessian per dtype with a verdict
    per rule, every failure, and the verdict again. Unless ``wide`` (which adds each
    rule's formula), a table with more columns than fit in ``width`` characters shows
    the worst error / tolerance per dtype instead."""
    from matcalc_jax.catalogue import rule

    env = report.environment
    dtypes = list(dict.fromkeys(c.dtype for c in report.checks))
    sizes = sorted({c.size for c in report.checks})
    lines = [
        f"device: {env['platform']} ({env['device_kind']}), jax {env['jax']}, x64 "
        f"{env['x64']}, matmul precision {env['matmul_precision']}",
        f"sizes {sizes}; max |closed - reference| / max |reference| over sizes; every check: "
        "--json",
        verdict(report),
    ]
    hessians = any(c.reference == "hessian" for c in report.checks)
    columns = _columns(dtypes, hessians)
    name_width = max([4] + [len(r) for r in report.rule_ids])
    if not wide and name_width + 2 + (_CELL + 2) * len(columns) + 7 > width:
        columns = [(dtype, "worst") for dtype in dtypes]
    header = ["rule".ljust(name_width)]
    if wide:
        header.append("formula".ljust(_FORMULA))
    header += [f"{SHORT_DTYPE.get(d, d)} {_SHORT.get(r, r)}".ljust(_CELL) for d, r in columns]
    header.append("verdict")
    lines += ["  ".join(header), "  ".join("-" * len(h) for h in header)]
    for rule_id in report.rule_ids:
        cells = [rule_id.ljust(name_width)]
        if wide:
            cells.append(rule(rule_id).plain[:_FORMULA].ljust(_FORMULA))
        for dtype, reference in columns:
            if reference == "worst":
                cells.append(_cell(_worst(report, rule_id, dtype)))
            else:
                cells.append(_cell(report.max_error(rule_id, dtype, reference)))
        cells.append("pass" if report.rule_passed(rule_id) else "FAIL")
        lines.append("  ".join(cells))
    if columns and columns[0][1] == "worst":
        lines.append("worst: the largest error / tolerance over every check (above 1 fails)")
    for check in report.failures():
        lines.append(
            f"FAIL {check.rule} {check.dtype} size {check.size} vs {check.reference}: error "
            f"{check.error:.3e} > tolerance {check.tolerance:.1e} {check.detail}".rstrip()
        )
    passed = sum(report.rule_passed(r) for r in report.rule_ids)
    count = len(report.rule_ids)
    rules, checks = counted(count, "rule"), counted(len(report.checks), "check")
    lines.append(f"{passed} of {rules} {'passes' if count == 1 else 'pass'} ({checks})")
    lines.append(verdict(report))
    return lines
