"""The world behind one door (docs/ARCHITECTURE.md §5): what may import what, read from the source (no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PMOPT = Path(__file__).resolve().parents[1] / "pmopt"

# package -> modules it must not import: probes, PMs and data loaders reach the world only through
# pmopt.sources; the world is a plug-in that imports neither the probes nor test helpers.
FORBIDDEN = {
    "probes": ("pmopt.world",),
    "pm": ("pmopt.world",),
    "data": ("pmopt.world",),
    "world": ("pmopt.probes", "pmopt.testing"),
}


def imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def compares_source_to_world(tree: ast.AST) -> bool:
    """`... == "world"` or `"world" == ...` (a branch on a record's source)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value == "world" for o in operands):
                return True
    return False


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package):
    offenders = []
    for path in sorted((PMOPT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        bad = sorted(m for m in imported_modules(tree) for f in FORBIDDEN[package] if m == f or m.startswith(f + "."))
        offenders += [f"{path.relative_to(PMOPT.parent)} imports {m}" for m in bad]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package", ["probes", "pm", "data"])
def test_no_branches_on_the_world(package):
    offenders = [str(p.relative_to(PMOPT.parent)) for p in sorted((PMOPT / package).rglob("*.py"))
                 if compares_source_to_world(ast.parse(p.read_text(encoding="utf-8")))]
    assert not offenders, f"compare a record's source with 'world': {offenders} (use pmopt.sources.of_record)"
