"""The package's import graph: no cycle, and imports that point one way, from the command
line down to the core (see docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "matcalc_jax"

#: Each part and the parts it may import (besides itself). Anything absent is refused.
ALLOWED = {
    "core": set(),
    "runtime": set(),
    "operators": {"core"},
    "transform": {"core", "operators"},
    "forms": {"core", "operators"},
    "nn": {"core", "forms"},
    "mlp": {"core", "forms", "nn"},
    "catalogue": {"core", "operators", "forms", "transform"},
    "verification": {"core", "operators", "forms", "catalogue", "runtime", "nn", "transform"},
    "benchmark": {
        "core",
        "operators",
        "forms",
        "catalogue",
        "runtime",
        "verification",
        "mlp",
        "nn",
        "transform",
    },
    "site": {"catalogue", "transform", "verification"},
    "cli": {"catalogue", "runtime", "verification", "benchmark", "site"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports, at any depth of its code (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "matcalc_jax"


def test_the_package_has_no_import_cycle():
    graph = _graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = [*path[path.index(imported) :], imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_imports_point_one_way():
    wrong = []
    for module, imported in _graph().items():
        part = _part(module)
        if part in ("matcalc_jax", "__main__"):
            continue  # the public surface re-exports every part
        for target in imported:
            other = _part(target)
            if other != part and other not in ALLOWED[part]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_every_part_is_placed():
    parts = {_part(m) for m in _modules()} - {"matcalc_jax", "__main__"}
    assert parts == set(ALLOWED)


def test_the_graph_sees_a_cycle_when_there_is_one(tmp_path):
    """The checker itself can fail: a package whose two modules import each other."""
    package = tmp_path / "matcalc_jax"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text("from matcalc_jax.core import b\n")
    (package / "core" / "b.py").write_text("def f():\n    from matcalc_jax.core.a import x\n")
    real = globals()["PACKAGE"]
    globals()["PACKAGE"] = package
    try:
        with pytest.raises(pytest.fail.Exception, match="import cycle"):
            test_the_package_has_no_import_cycle()
    finally:
        globals()["PACKAGE"] = real
