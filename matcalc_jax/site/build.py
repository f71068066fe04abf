"""``matcalc-jax site``: the reference site, built with MkDocs Material from ``docs/``, the
README and the pages generated from the catalogue (``site/pages.py``).

The sources are assembled under ``build/site-src`` (never edited by hand):

- the hand-written pages of ``docs/`` and the README as the home page; a link to a file of the
  repository outside ``docs/`` (a result table, a plot, an example) is copied beside the pages
  and the link follows it; a link to a folder becomes its name in code;
- one page per rule and corpus program, the rules index, the API reference;
- KaTeX (its script, style sheet and fonts) from the npm registry, so formulas are typeset
  with no network when the site is read: nothing is loaded from a CDN.

``mkdocs.yml`` at the root holds the theme, the extensions and the hand-written navigation; the
generated pages are added to it in ``build/mkdocs.yml``, which MkDocs then builds strictly (a
broken link or reference is an error) or serves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

KATEX = "katex@0.16"
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


class SiteError(RuntimeError):
    """The site cannot be built here (MkDocs or npm missing, a failed build)."""


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _relink(text: str, page: Path, root: Path, sources: Path) -> str:
    """``text``'s relative links, read from ``page`` (a file of the repository), pointed at the
    site's copy; files outside ``docs/`` are copied under ``sources``."""
    docs = root / "docs"
    here = (sources / page.relative_to(docs)).parent if page.is_relative_to(docs) else sources

    def replace(match: re.Match) -> str:
        bang, label, target = match.groups()
        if re.match(r"^[a-z]+:|^#", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = Path(os.path.normpath(page.parent / path))
        if resolved.is_relative_to(docs):
            copy = sources / resolved.relative_to(docs)
        elif resolved.is_file():
            copy = sources / resolved.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(resolved, copy)
        else:  # a folder, or nothing: its name, in code
            return f"{label} (`{resolved.relative_to(root)}`)" if not bang else ""
        new = os.path.relpath(copy, here) + (f"#{anchor}" if anchor else "")
        return f"{bang}[{label}]({new})"

    return _LINK.sub(replace, text)


def assemble(root: Path, build: Path) -> Path:
    """Write the site's sources under ``build/site-src`` and its configuration as
    ``build/mkdocs.yml``; returns the configuration's path."""
    import yaml

    from matcalc_jax.catalogue import programs, rules
    from matcalc_jax.site.pages import API, TRANSFORM_FIGURES, site_pages, transform_overview

    sources = build / "site-src"
    if sources.exists():
        shutil.rmtree(sources)
    sources.mkdir(parents=True)
    docs = root / "docs"
    for path in sorted(docs.rglob("*")):
        if path.is_file():
            target = sources / path.relative_to(docs)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".md":
                text = _relink(path.read_text(encoding="utf-8"), path, root, sources)
                target.write_text(text, encoding="utf-8")
            else:
                shutil.copy2(path, target)
    readme = root / "README.md"
    index = _relink(readme.read_text(encoding="utf-8"), readme, root, sources)
    (sources / "index.md").write_text(index, encoding="utf-8")

    verification = _load_json(root / "bench" / "results" / "verify_cpu.json")
    cases = []
    for name in ("cpu.json", "matrix_cpu.json"):
        cases += (_load_json(root / "bench" / "results" / name) or {}).get("cases", [])
    errata = (docs / "errata.md").read_text(encoding="utf-8")
    transform = _load_json(root / "bench" / "results" / "transform_cpu.json") or {}
    pages = site_pages(verification, cases, errata, transform.get("ratios", []))
    overview = "\n".join(transform_overview(transform.get("ratios", [])))
    page = sources / "transform.md"
    page.write_text(page.read_text(encoding="utf-8").replace(TRANSFORM_FIGURES, overview))
    for relative, text in pages.items():
        target = sources / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    _katex(root / "build" / "npm", sources / "assets" / "katex")  # one npm copy per checkout

    config = yaml.safe_load((root / "mkdocs.yml").read_text(encoding="utf-8"))
    config["docs_dir"] = "site-src"
    config["site_dir"] = "site"
    rule_pages = [{"All rules": "rules/index.md"}]
    rule_pages += [{r.id: f"rules/{r.id}.md"} for r in rules() + programs()]
    api_pages = [{title: f"api/{name}.md"} for name, (title, _) in API.items()]
    config["nav"] = [
        {"Rules": rule_pages} if item == "RULES" else {"API": api_pages} if item == "API" else item
        for item in config["nav"]
    ]
    config.setdefault("plugins", [])
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(root)]
    path = build / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _katex(build: Path, target: Path) -> None:
    """KaTeX's script, auto-render, style sheet and fonts, installed from the npm registry
    into ``build`` (``build/npm`` of the checkout) once and copied to ``target``."""
    dist = build / "node_modules" / "katex" / "dist"
    if not (dist / "katex.min.js").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SiteError("the site needs npm to fetch KaTeX (Debian: apt-get install npm)")
        command = [npm, "install", "--prefix", str(build), "--no-save", "--no-audit"]
        done = subprocess.run(
            [*command, "--no-fund", KATEX], capture_output=True, text=True, check=False
        )
        if done.returncode != 0 or not (dist / "katex.min.js").exists():
            raise SiteError(f"npm install {KATEX} failed: {done.stderr.strip()[-500:]}")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("katex.min.js", "katex.min.css"):
        shutil.copy2(dist / name, target / name)
    shutil.copy2(dist / "contrib" / "auto-render.min.js", target / "auto-render.min.js")
    shutil.copytree(dist / "fonts", target / "fonts", dirs_exist_ok=True)


def mkdocs(config: Path, *, serve: bool = False, address: str = "127.0.0.1:8000") -> int:
    """Build the site strictly (``build/site``), or serve it on ``address``."""
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        raise SiteError('the site needs MkDocs: pip install -e ".[docs]"') from None
    command = [sys.executable, "-m", "mkdocs"]
    if serve:
        command += ["serve", "--strict", "-f", str(config), "-a", address]
    else:
        command += ["build", "--strict", "-f", str(config)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # a notice about MkDocs 2, every run
    return run_reaped(command, env)


def run_reaped(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` and return its exit code; however this process ends (SIGTERM,
    Ctrl-C, an error), the child is stopped and waited for, never left serving."""
    child = subprocess.Popen(command, env=env)

    def on_terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_terminate)
    try:
        return child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
