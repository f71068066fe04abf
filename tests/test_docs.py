"""The docs' examples cannot rot: every ```python block of docs/*.md runs (the blocks of one
page in order, in one namespace); blocks fenced ```py are sketches (templates with ``...``)
and are only highlighted. The generated rule pages are checked here as text; their examples
run in tests/test_site.py, with the site."""

from pathlib import Path

import pytest

import matcalc_jax as mj
from matcalc_jax.site.pages import rule_page, rules_index, site_pages

from .helpers import python_blocks

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if "```python" in p.read_text("utf-8"))


def test_the_pages_with_examples_are_found():
    assert {"layout.md", "scale.md", "structured.md", "transform.md"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_of_a_page_run(page):
    namespace: dict = {}
    for block in python_blocks((DOCS / page).read_text(encoding="utf-8")):
        exec(compile(block, str(DOCS / page), "exec"), namespace)


def test_rule_page_shows_formulas_figures_and_errata():
    verification = {"rules": {"chain_scalar": {"passed": True, "max_error": {
        "float32": {"jacfwd": 1.5e-7, "mv": 0.0, "transform_storage": 1.5}}}}}  # fmt: skip
    cases = [{"rule": "chain_scalar", "dtype": "float32", "size": 64,
              "speedup_vs_best_jac": 3.0, "structured_speedup_vs_best_jac": None,
              "mv_speedup_vs_jvp": 1.25}]  # fmt: skip
    page = rule_page(mj.rule("chain_scalar"), verification, cases, "## `chain_scalar`: ...")
    r = mj.rule("chain_scalar")
    assert f"$$\n{r.formula}\n$$" in page and f"$$\n{r.numerator_formula}\n$$" in page
    assert "| reference | float32 |" in page
    assert "| `jacfwd` | 1.5e-07 |" in page and "| `mv` | 0.0e+00 |" in page
    assert "all checks passed" in page and "stores 1.50x the entries" in page
    assert "| f32 | 64 | 3.00x |  | 1.25x |" in page
    assert "[errata](../errata.md)" in page
    assert "| signature | `chain_scalar(" in page
    program = rule_page(
        mj.rule("nn_softmax"), None, [], "",
        [{"program": "nn_softmax", "size": 256, "build_speedup": 12.0, "mv_over_jvp": 1.5}],
    )  # fmt: skip
    assert "| 256 | 12.00x |  | 1.50 |  |" in program
    bare = rule_page(mj.rule("linear"), None, [], "")
    assert "No committed verification run" in bare and "No committed benchmark run" in bare
    assert "errata" not in bare.lower()


def test_site_pages_cover_every_rule_and_the_api():
    pages = site_pages(None, [], "")
    ids = [r.id for r in mj.rules() + mj.programs()]
    assert {f"rules/{i}.md" for i in ids} <= set(pages)
    assert pages["api/operators.md"].count("::: matcalc_jax.operators") == 1
    index = rules_index({"rules": {"linear": {"passed": False}}})
    assert "| [`linear`](linear.md) | " in index and "FAILED" in index


def test_the_transform_page_gets_a_table_of_every_program():
    """The marker in docs/transform.md is there, and the table that replaces it has a row
    per measured program with its sizes and the ranges of its ratios."""
    from matcalc_jax.site.pages import TRANSFORM_FIGURES, transform_overview

    assert TRANSFORM_FIGURES in (DOCS / "transform.md").read_text(encoding="utf-8")
    ratios = [
        {"program": "layer_norm", "size": 256, "build_speedup": 25.0, "dense_speedup": 2.0,
         "mv_over_jvp": 1.1},
        {"program": "layer_norm", "size": 1024, "build_speedup": 91.0, "dense_speedup": 2.0,
         "mv_over_jvp": 0.9},
        {"program": "conv_layer", "size": 64, "build_speedup": 32.0},
    ]  # fmt: skip
    lines = transform_overview(ratios)
    assert lines[0].startswith("| program | sizes | build J |")
    row = "| [`layer_norm`](rules/layer_norm.md) | 256, 1024 | 25.00x to 91.00x | 2.00x "
    assert row + "| 0.90 to 1.10 |" in lines
    assert "| [`conv_layer`](rules/conv_layer.md) | 64 | 32.00x |  |  |" in lines
    assert len(lines) == 4
    assert transform_overview([]) == ["No committed `matcalc-jax bench-transform` run."]
