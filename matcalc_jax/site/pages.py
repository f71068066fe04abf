"""The reference site's generated pages: one per rule, the rules index and the API reference,
from the catalogue and the committed verification and benchmark results.

Pure text: ``site_pages`` returns ``{relative path: Markdown}``; the command line
(``matcalc-jax site``) writes them beside the hand-written docs and runs MkDocs.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from importlib import import_module

from matcalc_jax import transform
from matcalc_jax.catalogue import programs, rules
from matcalc_jax.catalogue.record import Rule
from matcalc_jax.verification.report import SHORT_DTYPE

#: The modules of ``matcalc_jax.forms``, one per family of closed forms.
FORMS = tuple(
    f"matcalc_jax.forms.{family}"
    for family in (
        "products", "chains", "linear", "elementwise", "activations", "softmax", "affine",
        "traces", "inverse", "objectives",
    )
)  # fmt: skip

#: The API reference: page name, title, and the objects mkdocstrings documents on it.
API = {
    "operators": ("Operators", ["matcalc_jax.operators"]),
    "transform": (
        "The transform",
        [
            "matcalc_jax.transform.jacobian",
            "matcalc_jax.transform.hessian",
            "matcalc_jax.transform.laplacian",
            "matcalc_jax.transform.gauss_newton",
            "matcalc_jax.transform",
        ],
    ),
    "forms": ("Closed forms", list(FORMS)),
    "nn": ("matcalc_jax.nn", ["matcalc_jax.nn"]),
    "mlp": ("matcalc_jax.mlp", ["matcalc_jax.mlp"]),
    "catalogue": ("The rule record", ["matcalc_jax.catalogue.record.Rule"]),
}

#: The verification's ratios of stored entries (transform against closed form), not errors:
#: reference -> what it compares.
_STORAGE = {
    "transform_storage": "The transform's Jacobian stores {worst:.2f}x the entries of the "
    "structured closed form",
    "transform_hessian_storage": "The transform's Hessian (`matcalc_jax.hessian`) stores "
    "{worst:.2f}x the entries of the structured closed-form Hessian",
}


def _is_program(rule: Rule) -> bool:
    return rule.source == "program"  # as ``corpus.program`` declares them


def example_code(rule: Rule) -> str:
    """A runnable example for ``rule``: its closed form beside ``jax.jacfwd``."""
    is_program = _is_program(rule)
    lines = [
        "import jax",
        "import jax.numpy as jnp",
        "",
        "import matcalc_jax as mj",
        "",
        f'r = mj.rule("{rule.id}")',
        "args = r.example(jax.random.key(0))  # well-conditioned random arguments",
    ]
    if is_program:
        lines += [
            f"J = mj.jacobian(r.fn, argnums={rule.wrt})(*args)  # the structured Jacobian",
            "print(J)  # its structure",
            "dense = J.to_dense()  # numerator layout, as jax.jacfwd",
        ]
    else:
        lines += [
            "dense = r.jacobian(*args)  # the closed form, numerator layout",
            'seed_layout = r.jacobian(*args, layout="denominator")',
            "J = r.structured(*args)  # the same Jacobian as a structured operator",
        ]
    lines += [
        f"expected = jax.jacfwd(r.fn, argnums={rule.wrt})(*args)",
        "assert jnp.allclose(dense, expected, rtol=1e-4, atol=1e-5)",
    ]
    return "\n".join(lines)


def _signature(public: str) -> str | None:
    """``name(parameters)`` of a public ``matcalc_jax.name``, found where it is defined (a
    family of closed forms, or the transform); ``None`` if it is not found there."""
    name = public.rsplit(".", 1)[-1]
    for module in (*map(import_module, FORMS), transform):
        if hasattr(module, name):
            return f"{name}{inspect.signature(getattr(module, name))}"
    return None


def _fmt(value: float | str | None) -> str:
    """An error as printed: ``"inf"`` and ``"nan"`` (a failed check in the report) as such."""
    if value is None:
        return ""
    return value if isinstance(value, str) else f"{value:.1e}"


def _ratio(value: float | None, unit: str = "") -> str:
    return "" if value is None else f"{value:.2f}{unit}"


def _table(intro: str, header: list[str], rows: list[list[str]], labels: int = 1) -> list[str]:
    """A sentence, then a Markdown table: the first ``labels`` columns (names) left-aligned,
    the figures right-aligned."""
    align = ["---"] * labels + ["---:"] * (len(header) - labels)
    return [
        intro,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _verification_table(rule_id: str, verification: dict | None) -> list[str]:
    summary = (verification or {}).get("rules", {}).get(rule_id)
    if not summary:
        return ["No committed verification run covers this rule."]
    by_dtype = summary["max_error"]
    references = list(dict.fromkeys(ref for errors in by_dtype.values() for ref in errors))
    errors_of = [ref for ref in references if ref not in _STORAGE]
    intro = (
        "Largest normwise relative error against each reference, over the sizes verified "
        "(the committed `matcalc-jax verify`, "
        f"{'all checks passed' if summary['passed'] else 'SOME CHECKS FAILED'}; the tolerances "
        "are in [verification](../verification.md)):"
    )
    rows = [  # a row per reference: the table is as wide as the dtypes
        [f"`{ref}`", *(_fmt(errors.get(ref)) for errors in by_dtype.values())] for ref in errors_of
    ]
    lines = _table(intro, ["reference", *by_dtype], rows)
    for reference, sentence in _STORAGE.items():
        ratios = [errors[reference] for errors in by_dtype.values() if reference in errors]
        if ratios:
            worst = max(ratios)
            lines += ["", sentence.format(worst=worst) + " (at most 2 is allowed)."]
    return lines


def _benchmark_table(rule_id: str, cases: Iterable[dict]) -> list[str]:
    rows = [
        [
            SHORT_DTYPE.get(c["dtype"], c["dtype"]),
            str(c["size"]),
            _ratio(c.get("speedup_vs_best_jac"), "x"),
            _ratio(c.get("structured_speedup_vs_best_jac"), "x"),
            _ratio(c.get("mv_speedup_vs_jvp"), "x"),
        ]
        for c in cases
        if c.get("rule") == rule_id
    ]
    intro = (
        "Speed-ups from the committed CPU run (`bash bench/run_cpu.sh`; above 1: faster than "
        "the best of `jax.jacfwd` / `jax.jacrev`): *closed*, the closed form; *operator*, "
        "the structured form; *mv*, the structured form's `mv` against `jax.jvp`; *n*, the "
        "size:"
    )
    return _table(intro, ["dtype", "n", "closed", "operator", "mv"], rows) if rows else []


def _transform_table(program_id: str, ratios: Iterable[dict]) -> list[str]:
    rows = [
        [
            str(r["size"]),
            _ratio(r.get("build_speedup"), "x"),
            _ratio(r.get("dense_speedup"), "x"),
            _ratio(r.get("mv_over_jvp")),
            _ratio(r.get("build_over_forward")),
        ]
        for r in ratios
        if r.get("program") == program_id
    ]
    intro = (
        "The transform, from the committed `matcalc-jax bench-transform` run (see "
        "[the transform](../transform.md)): building J and `J.to_dense()` against the best "
        "of `jax.jacfwd` / `jax.jacrev` (speed-ups), `J.mv` and building J in units of "
        "`jax.jvp` and of one forward pass (*fwd*; time ratios: below 1 is faster); *n*, "
        "the size:"
    )
    header = ["n", "build", "to_dense", "mv/jvp", "build/fwd"]
    return _table(intro, header, rows, labels=0) if rows else []


#: The line of docs/transform.md that the site replaces with ``transform_overview``.
TRANSFORM_FIGURES = "<!-- the site inserts the table of every program here -->"


def _span(values: list[float], unit: str = "") -> str:
    """The range of ``values`` as ``low to high`` (one value alone when they agree)."""
    if not values:
        return ""
    low, high = _ratio(min(values), unit), _ratio(max(values), unit)
    return low if low == high else f"{low} to {high}"


def transform_overview(ratios: Iterable[dict]) -> list[str]:
    """The transform's figures for users: one row per corpus program with the sizes
    measured and, over them, how much faster building J and ``J.to_dense()`` are than the
    best of ``jax.jacfwd`` / ``jax.jacrev``, and ``J.mv``'s time over ``jax.jvp``'s."""
    by_program: dict[str, list[dict]] = {}
    for row in ratios:
        by_program.setdefault(row["program"], []).append(row)
    if not by_program:
        return ["No committed `matcalc-jax bench-transform` run."]
    lines = [
        "| program | sizes | build J | `J.to_dense()` | `J.mv` / `jax.jvp` |",
        "|---|---|---:|---:|---:|",
    ]
    for program in programs():
        rows = by_program.get(program.id)
        if not rows:
            continue

        def values(key: str, rows: list[dict] = rows) -> list[float]:
            return [r[key] for r in rows if r.get(key) is not None]

        sizes = sorted({r["size"] for r in rows})
        lines.append(
            f"| [`{program.id}`](rules/{program.id}.md) | {', '.join(map(str, sizes))} "
            f"| {_span(values('build_speedup'), 'x')} | {_span(values('dense_speedup'), 'x')} "
            f"| {_span(values('mv_over_jvp'))} |"
        )
    return lines


def rule_page(
    rule: Rule,
    verification: dict | None,
    cases: Iterable[dict],
    errata: str = "",
    transform_ratios: Iterable[dict] = (),
) -> str:
    """The page of one rule or corpus program."""
    lines = [f"# `{rule.id}`: {rule.title}", ""]
    if _is_program(rule):
        lines += [
            "A program of the transform's corpus: `matcalc_jax.jacobian` derives its Jacobian",
            "from its jaxpr, and the structure it finds is",
            "",
            "$$",
            rule.formula,
            "$$",
            "",
        ]
    else:
        lines += [
            "As printed in its source:",
            "",
            "$$",
            rule.formula,
            "$$",
            "",
            "In numerator layout (JAX's `out.shape + in.shape`, what the closed form returns):",
            "",
            "$$",
            rule.numerator_formula,
            "$$",
            "",
        ]
    lines += [
        f"| id | `{rule.id}` |",
        "|---|---|",
        f"| title | {rule.title} |",
        f"| plain text | `{rule.plain}` |",
        f"| shapes | {rule.shapes} |",
        f"| differentiated | argument {rule.wrt} of `rule({rule.id!r}).fn` |",
        f"| public function | `{rule.public}` |",
        f"| source | {rule.source} |",
    ]
    signature = _signature(rule.public) if rule.public.count(".") == 1 else None
    if signature:
        lines.append(f"| signature | `{signature}` |")
    if rule.notes:
        lines.append(f"| edges | {rule.notes} |")
    if rule.has_hessian:
        lines.append(f"| Hessian | `matcalc_jax.{rule.hessian_form.__name__}` |")
    lines += ["", "## Example", "", "```python", example_code(rule), "```", ""]
    if f"`{rule.id}`" in errata:
        lines += [
            "## Errata",
            "",
            "The printed formula holds in one layout only: see [errata](../errata.md).",
            "",
        ]
    lines += ["## Verified", "", *_verification_table(rule.id, verification), ""]
    tables = [
        table
        for table in (_benchmark_table(rule.id, cases), _transform_table(rule.id, transform_ratios))
        if table
    ]
    if not tables:
        tables = [["No committed benchmark run covers this rule."]]
    lines.append("## Benchmarked")
    for table in tables:
        lines += ["", *table]
    return "\n".join([*lines, ""])


def rules_index(verification: dict | None) -> str:
    """The index of every rule and corpus program, each with its formula and verdict."""
    summary = (verification or {}).get("rules", {})
    lines = [
        "# Rules",
        "",
        "Every rule of the catalogue, then the transform's corpus programs. Each page has the",
        "formula as printed and in numerator layout, the shapes, the function to call, a",
        "runnable example, and the latest verification errors and benchmark speed-ups.",
        "",
        "| rule | title | numerator layout | verified |",
        "|---|---|---|---|",
    ]
    for r in rules() + programs():
        verdict = summary.get(r.id, {}).get("passed")
        mark = {True: "passed", False: "FAILED", None: ""}[verdict]
        formula = _inline(r.numerator_formula)
        lines.append(f"| [`{r.id}`]({r.id}.md) | {r.title} | ${formula}$ | {mark} |")
    return "\n".join(lines) + "\n"


def _inline(formula: str) -> str:
    """A formula fit for a table cell: one line, no bare ``|``."""
    return re.sub(r"\s+", " ", formula).replace("|", r"\vert ")


def api_page(name: str) -> str:
    """An API reference page: mkdocstrings directives for the objects of ``API[name]``."""
    title, objects = API[name]
    lines = [f"# {title}", ""]
    for obj in objects:
        lines += [f"::: {obj}", ""]
    return "\n".join(lines)


def site_pages(
    verification: dict | None,
    cases: Iterable[dict],
    errata: str,
    transform_ratios: Iterable[dict] = (),
) -> dict[str, str]:
    """Every generated page, by path relative to the site's sources."""
    cases, transform_ratios = list(cases), list(transform_ratios)
    pages = {"rules/index.md": rules_index(verification)}
    for r in rules() + programs():
        pages[f"rules/{r.id}.md"] = rule_page(r, verification, cases, errata, transform_ratios)
    for name in API:
        pages[f"api/{name}.md"] = api_page(name)
    return pages
