"""The tree's shape: no import cycle between modules, no sys.path edits, no long function in the training loop."""
from __future__ import annotations

import ast
import os

from tests.conftest import ROOT

PACKAGES = ("methods", "data", "experiments")


def modules():
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                    yield module, path


def imports_of(module: str, path: str, known: set) -> set:
    """The repository modules that ``module`` imports (at any depth of its code)."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in known and name != module}
    return found


def test_no_import_cycle():
    paths = dict(modules())
    graph = {module: imports_of(module, path, set(paths)) for module, path in paths.items()}
    # a package's __init__ importing its own submodules is not a cycle through the submodule
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in graph[node]:
            if node.startswith(child + "."):  # a module importing its own package's __init__
                continue
            if state.get(child) == "open":
                cycle = stack[stack.index(child):] + [child]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if child not in state:
                visit(child)
        stack.pop()
        state[node] = "done"

    for module in graph:
        if module not in state:
            visit(module)


def test_no_sys_path_edits():
    for module, path in modules():
        assert "sys.path.insert" not in open(path).read(), f"{path}: use `pip install -e .` instead"


def test_no_long_function_in_the_training_loop():
    """The loop stays readable: no function of experiments/training/loop.py over 60 lines."""
    path = os.path.join(ROOT, "experiments", "training", "loop.py")
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno + 1 <= 60, f"loop.{node.name} has {node.end_lineno - node.lineno + 1} lines"


# experiments' layers, lowest first: a module imports only modules of its own layer or of a lower one
LAYERS = ("experiments.storage", "experiments.training", "experiments.orchestration.plan", "experiments.reporting",
          "experiments.orchestration", "experiments")


def layer_of(module: str) -> int:
    return next(i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + "."))


def test_experiments_layers():
    """storage → training → the plan → reporting → orchestration (run_all, sweep) → the top-level commands; the
    package docstrings (experiments/__init__.py, each subpackage's) and CONTRIBUTING.md say the same."""
    paths = dict(modules())
    for module, path in paths.items():
        if not module.startswith("experiments"):
            continue
        for imported in imports_of(module, path, set(paths)):
            if imported.startswith("experiments") and imported != "experiments":
                assert layer_of(imported) <= layer_of(module), f"{module} imports the higher layer {imported}"
        if module != "experiments" and layer_of(module) == len(LAYERS) - 1:
            assert "." not in module[len("experiments."):], f"{module}: a module below experiments/ belongs to a layer"
            commands = {m for m in imports_of(module, path, set(paths))
                        if m.startswith("experiments.") and layer_of(m) == len(LAYERS) - 1}
            assert not commands, f"{module} imports the command(s) {commands}: shared code belongs in a layer"


def test_scripts_beside_the_results_import_what_exists():
    """The small summary scripts kept next to reference results (results/reference/*/*.py) import names that
    exist in the current tree (ruff skips results/, so a move of a module would otherwise go unnoticed)."""
    import glob
    import importlib
    for path in glob.glob(os.path.join(ROOT, "results", "**", "*.py"), recursive=True):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{path}: {node.module} has no {alias.name}"
