"""Every benchmark script imports, and every name it imports exists, including imports inside
functions: the scripts run by hand, not in CI, so a renamed function they use would otherwise
go unnoticed until someone measures (it happened once, inside a main())."""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

FOLDER = Path(__file__).parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__")
PROJECT = ("actors", "benchmarks", "jobs", "orchestrator")


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_imports_resolve(name: str):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"
    tree = ast.parse((FOLDER / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
            source = importlib.import_module(node.module)
            for alias in node.names:
                submodule = hasattr(source, "__path__") and importlib.util.find_spec(f"{node.module}.{alias.name}")
                assert hasattr(source, alias.name) or submodule, (
                    f"benchmarks/{name}.py line {node.lineno}: {node.module} has no {alias.name}")
