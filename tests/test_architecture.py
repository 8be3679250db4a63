"""The import rules of docs/ARCHITECTURE.md §2, checked against the code.

`docs/architecture.json` is the picture of the layers: parts (the files each holds), arrows (which part
may import which) and "never" rules. Every import between two parts must be an arrow, whether at the
top of a module or inside a function, and no never-rule may be broken. The picture is read here, so
changing the layering means changing the picture, in review, beside the code.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pmopt"
PICTURE = json.loads((REPO / "docs" / "architecture.json").read_text(encoding="utf-8"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str) -> Path | None:
    """The file of module `name`, or None when it is not a pmopt module."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every pmopt module `path` imports, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("pmopt")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pmopt") and node.level == 0:
            for alias in node.names:  # `from pmopt import console` imports the module pmopt.console
                sub = f"{node.module}.{alias.name}"
                found.append((node.lineno, sub if module_file(sub) else node.module))
    return found


def part_of(path: Path) -> str | None:
    relative = path.relative_to(REPO).as_posix()
    best, best_len = None, -1
    for part, spec in PICTURE["parts"].items():
        for prefix in spec["is"]:
            matches = relative == prefix or (prefix.endswith("/") and relative.startswith(prefix))
            if matches and len(prefix) > best_len:
                best, best_len = part, len(prefix)
    return best


# the package's own __init__ holds only its version: it belongs to no layer
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")
ARROWS = {tuple(arrow) for arrow in PICTURE["arrows"]}


def test_every_module_belongs_to_one_part():
    orphans = [p.relative_to(REPO).as_posix() for p in SOURCES if part_of(p) is None]
    assert not orphans, f"modules on no part of docs/architecture.json: {orphans}"


def test_the_picture_is_consistent():
    parts = set(PICTURE["parts"])
    assert all(a in parts and b in parts for a, b in ARROWS)
    for a, b, why in PICTURE["never"]:
        assert (a, b) not in ARROWS, f"arrow {a} -> {b} breaks its own never-rule ({why})"


def import_edges():
    for path in SOURCES:
        source = part_of(path)
        for line, name in imported_modules(path):
            target_file = module_file(name)
            if target_file is None:
                continue
            target = part_of(target_file)
            if target != source:
                yield path.relative_to(REPO).as_posix(), line, name, source, target


def test_every_import_between_parts_is_an_arrow():
    broken = [f"{file}:{line} imports {name} ({source} -> {target})"
              for file, line, name, source, target in import_edges() if (source, target) not in ARROWS]
    assert not broken, "imports the picture does not allow:\n" + "\n".join(broken)


@pytest.mark.parametrize("rule", PICTURE["never"], ids=lambda rule: f"{rule[0]}-not-{rule[1]}")
def test_never_rule(rule):
    a, b, why = rule
    broken = [f"{file}:{line} imports {name}" for file, line, name, source, target in import_edges()
              if (source, target) == (a, b)]
    assert not broken, f"{a} must never import {b} ({why}):\n" + "\n".join(broken)


def test_only_the_face_imports_the_world():
    # the world reaches everything else through the source registry (pmopt.sources)
    outside = [f"{file}:{line}" for file, line, _, source, target in import_edges()
               if target == "World" and source != "Face"]
    assert not outside, f"the world imported outside the commands and the main job: {outside}"


def test_no_module_outside_the_world_branches_on_it():
    offenders = []
    for path in SOURCES:
        if part_of(path) in ("World",):
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ('== "world"', "== 'world'", '!= "world"', "!= 'world'"):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO).as_posix()}: {needle}")
    assert not offenders, f"branches on the world as a data source: {offenders}"


def test_the_checker_sees_a_broken_rule(tmp_path):
    """The rule check itself can fail: a probe importing the world is found and named."""
    fake = PACKAGE / "probes" / "answer.py"
    tree = ast.parse("from pmopt.world.outcomes import grade_world\n")
    names = [(n.lineno, n.module) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    source, target = part_of(fake), part_of(module_file(names[0][1]))
    assert (source, target) == ("Probes", "World") and (source, target) not in ARROWS
