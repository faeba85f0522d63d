"""The fast tier (`./studio.sh test --fast`, i.e. -m "not slow") touches every module of backend/, workers/, cli/
and ui/: a test file with at least one test that is not slow imports it (directly, or a name its package
re-exports from it) or runs it as a command (`run_cli("eval", ...)` or `cli_main(["eval", ...])` runs
cli/eval.py). AST only, nothing imported. A test that starts processes or trains for long is marked slow; this
keeps a cheap test beside it.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.test_layers import PACKAGES, ROOT, imports_of, module_name

SLOW_MARKS = {"slow", "e2e", "browser"}  # e2e and browser tests are slow too (tests/conftest.py)


def _marks(node: ast.AST) -> set[str]:
    """The pytest.mark.<name> names a decorator or a pytestmark value applies to every test it covers (a mark
    inside a parametrize case marks that case only, and does not count)."""
    items = node.elts if isinstance(node, (ast.List, ast.Tuple)) else [node]
    found = set()
    for item in items:
        target = item.func if isinstance(item, ast.Call) else item
        if isinstance(target, ast.Attribute) and getattr(target.value, "attr", None) == "mark":
            found.add(target.attr)
    return found


def has_fast_test(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            if _marks(node.value) & SLOW_MARKS:
                return False
    tests = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             and node.name.startswith("test_")]
    return any(not set().union(*map(_marks, test.decorator_list)) & SLOW_MARKS for test in tests)


def source_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            if path.name != "__main__.py" and (path.name != "__init__.py" or path.read_text().strip())}


def reexports(known: frozenset[str]) -> dict[tuple[str, str], str]:
    """(package, name) -> the submodule that defines it, for names a package's __init__ imports from its own
    submodules (`from backend.data import DataError` exercises backend.data.registry)."""
    found = {}
    for package in (name for name in known if (ROOT / name.replace(".", "/") / "__init__.py").is_file()):
        tree = ast.parse((ROOT / package.replace(".", "/") / "__init__.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package + "."):
                found |= {(package, alias.asname or alias.name): node.module for alias in node.names}
    return found


def modules_used_by(source: str, test_module: str, known: frozenset[str], exported: dict) -> set[str]:
    used = {imp.target for imp in imports_of(source, test_module, known=known)}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in known:
            used |= {exported[node.module, alias.name] for alias in node.names if (node.module, alias.name) in exported}
    # run_cli("eval", ...) in a subprocess, cli_main(["jobs", ...]) in this one
    commands = re.findall(r"(?:run_cli|main)\(\s*\[?\s*[\"']([a-z]+)[\"']", source)
    return used | {f"cli.{command}" for command in commands if f"cli.{command}" in known}


def modules_with_a_fast_test() -> set[str]:
    known = frozenset(source_modules())
    exported = reexports(known)
    covered = set()
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        source = path.read_text()
        if has_fast_test(ast.parse(source)):
            covered |= modules_used_by(source, module_name(path), known, exported)
    return covered


def test_every_module_has_a_fast_test():
    missing = sorted(set(source_modules()) - modules_with_a_fast_test())
    assert not missing, ("these modules have no fast test (a test file that imports them with at least one test "
                         f"not marked slow / e2e / browser): {', '.join(missing)}; see tests/README.md")


def test_the_marker_reader_sees_file_and_function_marks():
    fast = ast.parse("import pytest\n@pytest.mark.slow\ndef test_a(): pass\ndef test_b(): pass\n")
    only_slow = ast.parse("import pytest\n@pytest.mark.e2e\ndef test_a(): pass\n")
    slow_file = ast.parse("import pytest\npytestmark = [pytest.mark.browser]\ndef test_a(): pass\n")
    one_case_slow = ast.parse("import pytest\n"
                              "@pytest.mark.parametrize('m', [1, pytest.param(2, marks=pytest.mark.slow)])\n"
                              "def test_a(m): pass\n")
    assert has_fast_test(fast) and not has_fast_test(only_slow) and not has_fast_test(slow_file)
    assert has_fast_test(one_case_slow)
