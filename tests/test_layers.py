"""The layers point one way: no import cycle, no import hidden in a function (outside api.py / cli.py, which keep
start-up fast, and imports of optional extras), and import-linter's contract in pyproject.toml holds."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "transferlab"
LAZY_MODULES = {"transferlab.api", "transferlab.cli"}  # `transferlab --help` must not import torch
OPTIONAL_EXTRA = "# optional extra"  # the comment that marks an import of an extra (fastapi, psycopg, ...)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[ast.stmt, bool]]:
    """(import statement, inside a function?) for every import in the file."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, inner))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def targets(module: str, node: ast.stmt, is_package: bool, known: set[str]) -> set[str]:
    """The transferlab modules an import statement loads (a `from x import name` of a submodule counts it)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level else []
        prefix = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
        names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix for alias in node.names]
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module → modules it imports, counting imports inside functions; the function-level imports)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph, hidden = {}, []
    for module, path in files.items():
        graph[module] = set()
        lines = path.read_text().splitlines()
        for node, in_function in imports_of(path):
            graph[module] |= targets(module, node, path.name == "__init__.py", set(files))
            text = " ".join(lines[node.lineno - 1:node.end_lineno])
            if in_function and module not in LAZY_MODULES and OPTIONAL_EXTRA not in text:
                hidden.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    return graph, hidden


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_scan_sees_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = "def f():\n    from .b import x\n"
    (node, in_function), = imports_of_source(source)
    assert in_function and targets("pkg.a", node, False, {"pkg.a", "pkg.b"}) == {"pkg.b"}


def imports_of_source(source: str) -> list[tuple[ast.stmt, bool]]:
    tmp = Path(__file__).with_name("_scan_probe.py")
    try:
        tmp.write_text(source)
        return imports_of(tmp)
    finally:
        tmp.unlink()


def test_no_import_cycle_counting_imports_inside_functions():
    graph, _ = import_graph()
    assert len(graph) > 60  # the scan found the package
    assert cycles(graph) == []


def test_no_import_hides_in_a_function_outside_api_and_cli():
    _, hidden = import_graph()
    assert hidden == []


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is in the test extra")
def test_the_import_contract_holds():
    done = subprocess.run(["lint-imports"], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 kept, 0 broken" in done.stdout


RECIPE_IMPORTS = """
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.transforms import v2
from transferlab.config import BackboneSpec
from transferlab.data.augment import PRESETS, Size
from transferlab.data.builtins import BUILTINS
from transferlab.data.sources import ArraySource, Pools
from transferlab.models.backbones import WEIGHT_SOURCES, WeightsInfo, create_model, file_sha256
from transferlab.paradigms.base import SklearnParadigm, register
from transferlab.paradigms.baselines import NoParams
"""

RECIPE_CHECKS = """
import numpy as np
from sklearn.datasets import load_digits
from transferlab.data.augment import make_augment
from transferlab.paradigms import create_paradigm
from transferlab.resolve import resolved
from transferlab.config import RunSpec
X, y = load_digits(return_X_y=True)
probe = create_paradigm("small-probe", {}, n_classes=10, seed=0).fit(X[:900], y[:900], X[900:1200], y[900:1200])
assert (probe.predict_proba(X[1200:]).argmax(1) == y[1200:]).mean() > 0.8
assert probe.deploy_steps()[1]
assert "my-zoo" in WEIGHT_SOURCES and "my-set" in BUILTINS
assert make_augment("my-preset", (32, 32)) is not None
resolved(RunSpec, {"data": "digits", "backbone": "tf_efficientnet_lite0", "paradigm": "small-probe"}, "recipe")
print("recipes ok")
"""


def test_the_architecture_recipes_are_short_and_work():
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    recipes = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    assert len(recipes) == 4
    assert all(len(recipe.strip().splitlines()) <= 10 for recipe in recipes)
    program = RECIPE_IMPORTS + "\n".join(recipes) + RECIPE_CHECKS
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "recipes ok" in done.stdout, done.stderr[-2000:]


def test_the_api_names_stay_the_functions_after_their_modules_load():
    """`transferlab.study` is both a function (the API) and a module (the grid); importing the module must not
    turn a second `transferlab.study(...)` call into "'module' object is not callable"."""
    import importlib

    import transferlab

    for name in ("study", "search", "report", "inspect"):
        module = importlib.import_module(f"transferlab.{name}")
        assert callable(getattr(transferlab, name)) and getattr(transferlab, name) is not module, name
