"""The package layout holds: imports go one way, core stands under everything, nothing imports
the command line, and the architecture page's diagram (docs/architecture.md) names exactly the
packages there are.

Imports are read with ``ast`` from every module of the packages, function-level imports
included (a lazy import is still a dependency); only ``if TYPE_CHECKING:`` blocks are left out,
since they never run.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = "core"
TOOLS = "cli"  # the command line, demo and simulator: it may import everything, nothing imports it
NOT_SHIPPED = {"benchmarks", "tests"}  # packages of the repository that are not the product's


def packages() -> list[str]:
    """The product's top-level packages, as pyproject.toml ships them."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(pattern.removesuffix("*") for pattern in include)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in packages():
        for path in sorted((REPO / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child):
            for orelse in child.orelse:
                yield from _imports(orelse)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _imports(child)


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that module ``name`` imports (``from pkg import mod`` counts as
    importing ``pkg.mod`` when that is a module, else as importing ``pkg``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            # the deepest module of the project that the dotted name names
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != name:
                out.add(".".join(parts))
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as the path that closes it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for src, targets in edges.items():
        top = src.split(".")[0]
        out.setdefault(top, set()).update(
            t.split(".")[0] for t in targets if t.split(".")[0] != top
        )
    return out


def test_every_package_folder_is_shipped() -> None:
    folders = {p.parent.name for p in REPO.glob("*/__init__.py")} - NOT_SHIPPED
    assert folders == set(packages())


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_walk_sees_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    module = tmp_path / "mod.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from rules.engine import Engine\n"
        "import core.network\n"
        "from statements import pdf\n"
        "def later():\n"
        "    from notify.outbox import enqueue\n"
    )
    known = {"core", "core.network", "notify", "notify.outbox", "rules", "rules.engine"}
    known |= {"statements", "statements.pdf"}
    assert imported("mod", module, known) == {"core.network", "statements.pdf", "notify.outbox"}
    # and in the real code: rules.engine imports notify.outbox inside a method only
    assert "notify.outbox" in graph()["rules.engine"]


def test_no_import_cycle_between_modules() -> None:
    assert find_cycle(graph()) is None


def test_no_import_cycle_between_packages() -> None:
    assert find_cycle(package_edges(graph())) is None


def test_core_imports_nothing_above_it() -> None:
    upward = {
        (src, target)
        for src, targets in graph().items()
        if src.split(".")[0] == CORE
        for target in targets
        if target.split(".")[0] != CORE
    }
    assert upward == set()


def test_nothing_imports_the_tools() -> None:
    users = {
        (src, target)
        for src, targets in graph().items()
        if src.split(".")[0] != TOOLS
        for target in targets
        if target.split(".")[0] == TOOLS
    }
    assert users == set()


def architecture_diagram() -> str:
    """The first diagram of the architecture page (before its first subsection)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("\n## ", 1)[0]
    match = re.search(r"```[a-z]*\n(.*?)```", section, re.S)
    assert match, "docs/architecture.md has no diagram before its first section"
    return match.group(1)


def test_architecture_diagram_names_exactly_the_packages() -> None:
    named = set(re.findall(r"(?<![\w/])([a-z_]+)/", architecture_diagram()))
    assert named == set(packages())


def test_package_docstrings_say_what_each_package_does() -> None:
    for package in packages():
        init = REPO / package / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{package}/__init__.py has no docstring"
        assert "being built" not in doc, package
        assert len(doc.splitlines()) <= 3, package


def test_docs_and_code_explain_themselves_without_section_numbers() -> None:
    """The project's texts say what a rule is in their own words: none points a reader at a
    numbered section of a document outside the repository."""
    pattern = re.compile(r"SPEC\s*§|§\s*\d")
    found = []
    for path in sorted(REPO.rglob("*")):
        if path.suffix not in {".py", ".md", ".js", ".html", ".yml", ".yaml", ".toml"}:
            continue
        if {".venv", ".git", "node_modules", "vendor", ".demo"} & set(path.parts):
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:80]}")
    assert found == []
