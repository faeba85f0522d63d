"""The layers of docs/ARCHITECTURE.md, enforced over the source tree (AST, nothing imported).

app.py, cli/ -> ui/ -> workers/ -> backend/: backend imports no gradio / workers / ui / cli (not even inside a
function); workers import no ui / cli; ui imports no torch / trl / transformers / peft at module level, and one
tab never imports another; and no two project modules import each other in a circle at module level.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("backend", "workers", "ui", "cli")
HEAVY = ("torch", "trl", "transformers", "peft")

# (package, imported top-level name, at module level only?) that must never appear
FORBIDDEN = [("backend", name, False) for name in ("gradio", "workers", "ui", "cli", "app")] + \
            [("workers", name, False) for name in ("gradio", "ui", "cli", "app")] + \
            [("ui", name, False) for name in ("cli", "app")] + \
            [("ui", name, True) for name in HEAVY]


@dataclass(frozen=True)
class Import:
    module: str          # the importing module, e.g. backend.jobs.runner
    target: str          # what it imports, e.g. backend.stages (or backend.stages.harness for a submodule)
    line: int
    module_level: bool   # outside any function or class


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False, known=frozenset()) -> list[Import]:
    """Every import in a module's source, with relative imports resolved and `from pkg import submodule` naming
    the submodule when it is one of `known`."""
    found = []
    tree = ast.parse(source)
    nested = {id(node) for parent in ast.walk(tree) if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                              ast.ClassDef))
              for node in ast.walk(parent) if node is not parent}
    base_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        level = id(node) not in nested
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno, level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base_parts[:len(base_parts) - node.level + 1]
                origin = ".".join(anchor + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                candidate = f"{origin}.{alias.name}"
                found.append(Import(module, candidate if candidate in known else origin, node.lineno, level))
    return found


def project_sources(root: Path = ROOT):
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            yield path
    yield root / "app.py"


def layer_violations(all_imports: list[Import]) -> list[str]:
    problems = []
    for imp in all_imports:
        top = imp.target.split(".")[0]
        for package, name, module_level_only in FORBIDDEN:
            if imp.module.split(".")[0] == package and top == name and (imp.module_level or not module_level_only):
                where = "at module level " if module_level_only else ""
                problems.append(f"{imp.module}:{imp.line} imports {imp.target} {where}(not allowed in {package}/)")
        mine, theirs = imp.module.split("."), imp.target.split(".")
        if (mine[0] == theirs[0] == "ui" and len(theirs) > 1 and mine[-1].endswith("_tab")
                and theirs[1].endswith("_tab") and theirs[1] != mine[-1]):
            problems.append(f"{imp.module}:{imp.line} imports the tab {imp.target}; share it through ui.common "
                            "or backend instead")
    return problems


def import_cycles(all_imports: list[Import], modules: set[str]) -> list[list[str]]:
    """Strongly connected groups of project modules that import each other at module level (Tarjan)."""
    graph = {module: set() for module in modules}
    for imp in all_imports:
        if imp.module_level and imp.target in modules and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def scan(root: Path = ROOT) -> tuple[list[Import], set[str]]:
    paths = list(project_sources(root))
    modules = {module_name(path, root) for path in paths}
    found = []
    for path in paths:
        found += imports_of(path.read_text(encoding="utf-8"), module_name(path, root), path.name == "__init__.py",
                            frozenset(modules))
    return found, modules


def test_every_layer_imports_only_downwards():
    found, _ = scan()
    assert layer_violations(found) == []


def test_no_import_cycles_at_module_level():
    found, modules = scan()
    assert import_cycles(found, modules) == []


def test_the_checks_catch_what_they_are_for():
    known = frozenset({"backend.models", "backend.jobs", "ui.train_tab", "ui.data_tab"})
    gradio_in_backend = imports_of("import gradio as gr\n", "backend.models")
    late_gradio = imports_of("def f():\n    import gradio\n", "backend.jobs")
    torch_in_ui = imports_of("import torch\n", "ui.app")
    late_torch_in_ui = imports_of("def f():\n    import torch\n", "ui.app")
    tab_to_tab = imports_of("from ui.train_tab import dataset_choices\n", "ui.data_tab", known=known)
    assert len(layer_violations(gradio_in_backend + late_gradio + torch_in_ui + tab_to_tab)) == 4
    assert layer_violations(late_torch_in_ui) == []
    cycle = (imports_of("from backend import jobs\n", "backend.models", True, known)
             + imports_of("from backend import models\n", "backend.jobs", True, known))
    assert import_cycles(cycle, {"backend.models", "backend.jobs"}) == [["backend.jobs", "backend.models"]]
