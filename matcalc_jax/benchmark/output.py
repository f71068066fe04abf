"""What a benchmark run prints and writes: terminal table, CSV, Markdown, PNG plots."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from matcalc_jax.benchmark.rules import BenchReport, Case

COLUMNS = (
    "rule",
    "dtype",
    "size",
    "closed ms",
    "jacfwd ms",
    "jacrev ms",
    "grad ms",
    "speed-up",
    "clear",
    "x floor",
    "compile closed/best ms",
    "struct ms",
    "struct speed-up",
    "mv ms",
    "jvp ms",
    "jvp/mv",
)


HESSIAN_COLUMNS = (
    "rule",
    "dtype",
    "size",
    "hessian ms",
    "jax.hessian ms",
    "speed-up",
    "clear",
    "hvp ms",
    "H v ms",
    "fwd-over-rev ms",
    "H v / hvp",
    "clear",
    "fwd-over-rev / hvp",
    "clear",
)


def _ms(case: Case, method: str) -> str:
    timing = case.timings.get(method)
    return "-" if timing is None else f"{timing.median_s * 1e3:.3g}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _clear(case: Case, method: str = "closed", over: str = "best") -> str:
    value = case.speedup_clear(method, over=over)
    if value is None:
        return "-"
    if case.noisy(method, over):
        return "noise"
    return "yes" if value else "no"


def _compile(case: Case) -> str:
    best = case.best_autodiff()
    if best is None:
        return "-"
    return f"{case.timings['closed'].compile_s * 1e3:.0f}/{best.compile_s * 1e3:.0f}"


def rows(report: BenchReport) -> list[list[str]]:
    """One row of strings per case, in the order of ``COLUMNS``."""
    return [
        [
            case.rule,
            case.dtype,
            str(case.size),
            _ms(case, "closed"),
            _ms(case, "jacfwd"),
            _ms(case, "jacrev"),
            _ms(case, "grad"),
            _ratio(case.speedup()),
            _clear(case),
            _ratio(case.floor_multiple()),
            _compile(case),
            _ms(case, "structured"),
            _ratio(case.speedup("structured")),
            _ms(case, "mv"),
            _ms(case, "jvp"),
            _ratio(case.speedup("mv", over="jvp")),
        ]
        for case in report.cases
    ]


def hessian_rows(report: BenchReport) -> list[list[str]]:
    """One row per case that timed Hessians, in the order of ``HESSIAN_COLUMNS``."""
    table = []
    for case in report.cases:
        if not case.hessian:
            continue
        row = [
            case.rule,
            case.dtype,
            str(case.size),
            _ms(case, "hessian"),
            _ms(case, "jax_hessian"),
        ]
        row += [
            _ratio(case.speedup("hessian", over="jax_hessian")),
            _clear(case, "hessian", "jax_hessian"),
            _ms(case, "hvp"),
            _ms(case, "hvp_dense"),
            _ms(case, "fwd_over_rev"),
        ]
        for reference in ("hvp_dense", "fwd_over_rev"):
            row += [
                _ratio(case.speedup("hvp", over=reference)),
                _clear(case, "hvp", reference),
            ]
        table.append(row)
    return table


def _fixed_width(columns: tuple[str, ...], body: list[list[str]]) -> str:
    table = [list(columns), *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(columns: tuple[str, ...], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in body:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


#: The columns of the terminal table that fit in 100 columns (``wide=False``), by index.
COMPACT = (0, 1, 2, 3, 4, 5, 7, 8, 9)
HESSIAN_COMPACT = (0, 1, 2, 3, 4, 5, 6, 7)


def _select(columns: tuple[str, ...], body: list[list[str]], keep: tuple[int, ...]) -> tuple:
    return tuple(columns[i] for i in keep), [[row[i] for i in keep] for row in body]


def format_table(report: BenchReport, *, wide: bool = False) -> str:
    """A fixed-width table for the terminal (and a second one for the Hessians, if any);
    ``wide=False`` keeps the columns that fit in 100 characters."""
    columns, body = COLUMNS, rows(report)
    if not wide:
        columns, body = _select(columns, body, COMPACT)
    text = _fixed_width(columns, body)
    hessians = hessian_rows(report)
    if hessians:
        columns = HESSIAN_COLUMNS
        if not wide:
            columns, hessians = _select(columns, hessians, HESSIAN_COMPACT)
        text += "\n\nHessians\n" + _fixed_width(columns, hessians)
    return text


def format_markdown(report: BenchReport) -> str:
    """A Markdown table (and a second one for the Hessians, if any)."""
    text = _markdown(COLUMNS, rows(report))
    hessians = hessian_rows(report)
    if hessians:
        text += "\n### Hessians\n\n" + _markdown(HESSIAN_COLUMNS, hessians)
    return text


def format_csv(report: BenchReport) -> str:
    """One line per (case, method), every measured field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "rule",
            "dtype",
            "size",
            "method",
            "compile_s",
            "median_s",
            "p25_s",
            "p75_s",
            "calls_per_sample",
            "samples",
            "temp_bytes",
            "output_bytes",
        ]
    )
    for case in report.cases:
        for t in case.timings.values():
            writer.writerow(
                [
                    t.rule,
                    t.dtype,
                    t.size,
                    t.method,
                    t.compile_s,
                    t.median_s,
                    t.p25_s,
                    t.p75_s,
                    t.calls_per_sample,
                    t.samples,
                    t.temp_bytes,
                    t.output_bytes,
                ]
            )
    return buffer.getvalue()


def to_json_text(report: BenchReport) -> str:
    """The report as JSON text (schema ``matcalc-jax/bench/1``)."""
    return json.dumps(report.to_dict(), indent=1)


def write_json(report: BenchReport, path: str | os.PathLike) -> None:
    """Write ``to_json_text`` to ``path``."""
    Path(path).write_text(to_json_text(report) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> BenchReport:
    return BenchReport.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def write_plots(report: BenchReport, directory: str | os.PathLike) -> list[Path]:
    """Time vs size (log-log) per rule and dtype, and the speed-up of every rule at its
    largest size. Needs matplotlib (the ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'matcalc-jax[bench]'") from error
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    dtypes = sorted({c.dtype for c in report.cases})
    rule_ids = list(dict.fromkeys(c.rule for c in report.cases))
    styles = {
        "closed": "o-",
        "structured": "D-",
        "jacfwd": "s--",
        "jacrev": "^--",
        "grad": "v:",
        "floor": "k:",
    }
    for dtype in dtypes:
        title = f"Jacobian time vs size ({dtype}, {report.environment['device_kind']})"
        path = directory / f"time_vs_size_{dtype}.png"
        written.append(_time_panels(plt, report, dtype, rule_ids, styles, title, path, 4))

        largest = []
        for rule_id in rule_ids:
            cases = [c for c in report.cases if c.rule == rule_id and c.dtype == dtype and c.dense]
            if cases:
                largest.append(max(cases, key=lambda c: c.size))
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(largest) + 1.4))
        positions = list(range(len(largest)))
        dense_ratios = [c.speedup() for c in largest]
        structured_ratios = [c.speedup("structured") for c in largest]
        ax.barh([p - 0.2 for p in positions], dense_ratios, height=0.4, label="dense closed form")
        ax.barh([p + 0.2 for p in positions], structured_ratios, height=0.4, label="structured")
        ax.set_yticks(positions, [f"{c.rule} ({c.size})" for c in largest])
        ax.axvline(1.0, color="k", linewidth=0.8)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.legend(fontsize=8)
        ax.set_xlabel("speed-up over the best of jacfwd / jacrev (log scale; > 1: faster)")
        ax.tick_params(labelsize=8)
        ax.set_title(f"Largest size per rule ({dtype})", fontsize=10)
        fig.tight_layout()
        path = directory / f"speedup_{dtype}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
        hessian_path = _hessian_plot(plt, report, dtype, directory)
        if hessian_path is not None:
            written.append(hessian_path)
    return written


HESSIAN_STYLES = {
    "hessian": "o-",
    "jax_hessian": "s--",
    "hvp": "D-",
    "hvp_dense": "x-",
    "fwd_over_rev": "^--",
}


def _hessian_plot(plt, report: BenchReport, dtype: str, directory: Path) -> Path | None:
    """Time vs size of the Hessian methods, one panel per rule with a Hessian."""
    rule_ids = list(dict.fromkeys(c.rule for c in report.cases if c.hessian and c.dtype == dtype))
    if not rule_ids:
        return None
    title = f"Hessian and Hessian-vector product time vs size ({dtype})"
    path = directory / f"hessian_{dtype}.png"
    return _time_panels(plt, report, dtype, rule_ids, HESSIAN_STYLES, title, path, 3)


def _time_panels(
    plt,
    report: BenchReport,
    dtype: str,
    rule_ids: list[str],
    styles: dict[str, str],
    title: str,
    path: Path,
    columns: int,
) -> Path:
    """One log-log panel of time against size per rule, a line per method in ``styles``."""
    columns = min(columns, len(rule_ids))
    rows_ = -(-len(rule_ids) // columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(4 * columns, 3 * rows_), squeeze=False)
    for ax, rule_id in zip(axes.flat, rule_ids, strict=False):
        cases = [c for c in report.cases if c.rule == rule_id and c.dtype == dtype]
        for method, style in styles.items():
            measured = [c for c in cases if method in c.timings]
            if measured:
                times = [c.timings[method].median_s * 1e3 for c in measured]
                ax.loglog([c.size for c in measured], times, style, label=method, markersize=4)
        ax.set_title(rule_id, fontsize=9)
        ax.set_xlabel("size", fontsize=8)
        ax.set_ylabel("ms", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rule_ids) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
