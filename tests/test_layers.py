"""Imports flow one way: capture -> bundle -> callbacks; capture imports nothing of the bundle package.

Every ``import`` in the package is read from the source (function-local ones included,
``if TYPE_CHECKING:`` blocks excluded) into a graph of modules; the graph's strongly
connected components are the import cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lens_train

ROOT = Path(lens_train.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    skipped = {id(n) for top in ast.walk(tree) if _is_type_checking(top) for n in ast.walk(top)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: _imported(m, p) for m, p in MODULES.items()}


def _cycles() -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def _in(module: str, package: str) -> bool:
    return module == f"lens_train.{package}" or module.startswith(f"lens_train.{package}.")


def test_capture_imports_nothing_of_the_bundle_package() -> None:
    offending = {m: sorted(i for i in GRAPH[m] if _in(i, "bundle")) for m in GRAPH if _in(m, "capture")}
    assert {m: i for m, i in offending.items() if i} == {}


def test_the_bundle_package_imports_nothing_above_it() -> None:
    above = ("callbacks", "experiments", "cli", "train", "fastlog", "extract", "lens_module")
    offending = {m: sorted(i for i in GRAPH[m] if any(_in(i, a) for a in above)) for m in GRAPH if _in(m, "bundle")}
    assert {m: i for m, i in offending.items() if i} == {}


def test_no_import_cycle_joins_capture_and_bundles() -> None:
    for component in _cycles():
        packages = {m.split(".")[1] for m in component if m.count(".") >= 1}
        assert not {"capture", "bundle"} <= packages, sorted(component)
