"""The reference site, built strictly and read in a real browser (headless Chromium).

Needs the docs extra (MkDocs, Playwright), npm (KaTeX) and Chromium
(``/usr/bin/chromium``, Debian's ``chromium``); skipped without them, unless
``MATCALC_JAX_REQUIRE_SITE=1`` (as ``.ci/run`` sets), which makes a missing piece a failure.
Screenshots of the pages checked are saved in ``build/screenshots/``.
"""

import contextlib
import functools
import http.server
import importlib.util
import os
import shutil
import threading
from pathlib import Path

import jax.numpy as jnp
import pytest

import matcalc_jax as mj
from matcalc_jax.site.pages import example_code

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MATCALC_JAX_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "build" / "screenshots"
MISSING = [
    what
    for what, present in (
        ("mkdocs (pip install -e '.[docs]')", importlib.util.find_spec("mkdocs") is not None),
        ("playwright (pip install -e '.[docs]')", importlib.util.find_spec("playwright")),
        ("npm", shutil.which("npm")),
        (f"Chromium at {CHROMIUM}", Path(CHROMIUM).exists()),
    )
    if not present
]
if MISSING and os.environ.get("MATCALC_JAX_REQUIRE_SITE") == "1":
    raise RuntimeError(f"MATCALC_JAX_REQUIRE_SITE=1, but missing: {', '.join(MISSING)}")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")

#: Chromium as the browser check runs it: headless, and quiet on a machine with no network.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    from matcalc_jax.site.build import assemble, mkdocs

    build = tmp_path_factory.mktemp("site-build")
    assert mkdocs(assemble(ROOT, build)) == 0, "mkdocs build --strict failed (see its log)"
    return build / "site"


@pytest.fixture(scope="module")
def address(site):
    class Files(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the test's output is the assertions, not the requests
            pass

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # a closed tab is not a failure
            pass

    server = Quiet(("127.0.0.1", 0), functools.partial(Files, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_every_rule_has_a_page_with_its_figures(site):
    for rule in mj.rules() + mj.programs():
        page = (site / "rules" / f"{rule.id}.html").read_text(encoding="utf-8")
        assert rule.public in page and "Verified" in page and "Benchmarked" in page, rule.id
        assert "No committed" not in page, f"{rule.id}: a committed result is missing"
        assert "all checks passed" in page, rule.id
    assert (site / "api" / "operators.html").read_text(encoding="utf-8").count("WeightedGram")
    assert (site / "assets" / "katex" / "fonts").is_dir()


@pytest.mark.parametrize(
    ("path", "shot"),
    [
        ("rules/index.html", "rules-index.png"),
        ("rules/softmax.html", "rule-softmax.png"),
        ("rules/chain_scalar.html", None),
        ("rules.html", None),
        ("index.html", None),
    ],
)
def test_formulas_are_typeset_offline_with_no_console_errors(browser, address, path, shot):
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    errors, outside = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def only_loopback(route):
        if route.request.url.startswith(address):
            route.continue_()
        else:  # the site must not need the network: a CDN request is a failure
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    try:
        page.goto(f"{address}/{path}", wait_until="networkidle")
        formulas = page.locator(".arithmatex").count()
        if path != "index.html":
            assert formulas > 0, "no formula on the page"
        page.wait_for_function(
            "n => document.querySelectorAll('.arithmatex .katex').length >= n", arg=formulas
        )
        text = page.locator("article").inner_text()
        assert "$$" not in text and "\\(" not in text and "\\[" not in text
        assert page.locator(".katex-error").count() == 0
        assert not errors, errors
        assert not outside, outside
        if shot:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / shot), full_page=False)
    finally:
        with contextlib.suppress(Exception):
            page.close()


_OVERFLOW = """() => {
  const wide = [];
  for (const display of document.querySelectorAll("article .katex-display")) {
    if (display.scrollWidth > display.clientWidth + 1) {
      wide.push("math " + display.innerText.slice(0, 40));
    }
  }
  const column = document.querySelector("article").clientWidth;
  if (!document.querySelector("#verified ~ .md-typeset__scrollwrap table")) {
    wide.push("no Verified table");
  }
  for (const table of document.querySelectorAll("article table")) {
    if (table.getBoundingClientRect().width > column + 1) {
      wide.push("table " + table.querySelector("th").innerText);
    }
  }
  return wide;
}"""


@pytest.mark.parametrize(
    "path", ["rules/softmax.html", "rules/chain_matrix_trace.html", "rules/gru_scan.html"]
)
def test_a_rule_page_fits_a_phone(browser, address, path):
    """At 390 px, every display formula and every table of a rule page (Verified,
    Benchmarked) fit the column."""
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(f"{address}/{path}", wait_until="networkidle")
        formulas = page.locator(".arithmatex").count()
        page.wait_for_function(
            "n => document.querySelectorAll('.arithmatex .katex').length >= n", arg=formulas
        )
        assert page.evaluate(_OVERFLOW) == []
    finally:
        with contextlib.suppress(Exception):
            page.close()


@pytest.mark.parametrize("rule", mj.rules() + mj.programs(), ids=lambda r: r.id)
def test_every_rule_page_example_runs(rule):
    namespace: dict = {}
    exec(compile(example_code(rule), f"rules/{rule.id}.md", "exec"), namespace)
    assert jnp.allclose(namespace["dense"], namespace["expected"], rtol=1e-4, atol=1e-5)
