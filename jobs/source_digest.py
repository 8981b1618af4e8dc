"""A digest of what code does, not of how it is laid out.

Two things are identified by their code: an organism's build (its cache folder) and a job
family's rows (tests/test_code_versions.py holds each family's version to its digest).
Hashing source bytes would make every comment, docstring, reformatting
and file move look like new behaviour; this digest reads the syntax tree instead and drops
what cannot change behaviour:

- comments (the tree has none) and docstrings;
- type annotations of functions and their local variables (a class's annotated fields stay:
  dataclasses and pydantic models are made of them);
- imports, `if TYPE_CHECKING:` blocks and `__all__` (what a module imports is covered by
  hashing the module it comes from, where it matters);
- where a definition lives: the top-level statements of all the given modules are hashed as
  one sorted set, so moving a function from one module of the set to another changes
  nothing.

Everything else (names, annotations, constants, the order of statements inside a function)
counts. The text is Python 3.11's `ast.unparse`; another Python may spell a tree differently.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path

# CPython 3.11 keeps the depth of the tree it is building in state that every thread shares
# (python/cpython#106905): a parse in another thread (a library reading a signature while
# MLflow imports in the background, or another of ours) can make a sound parse fail with
# "AST constructor recursion depth mismatch". One that fails so is parsed again.
_PARSE_ATTEMPTS = 3


def source_digest(modules: Iterable[str]) -> str:
    """sha256 of the normalised top-level statements of the named modules (dotted names,
    found without importing them)."""
    statements: list[str] = []
    for name in modules:
        statements += normalised_statements(Path(_module_file(name)).read_text(encoding="utf-8"))
    h = hashlib.sha256()
    for text in sorted(statements):
        h.update(text.encode() + b"\0")
    return h.hexdigest()


def import_closure(roots: Iterable[str], keep: Callable[[str], bool]) -> list[str]:
    """The modules `roots` import, directly or through each other, that `keep` accepts (the
    project's own), found by reading their syntax trees: the code a family's rows depend on."""
    found: set[str] = set()
    todo = [r for r in roots if keep(r)]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        tree = _parse(Path(_module_file(name)).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            imported = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            todo += [m for m in imported if keep(m) and m not in found and _is_module(m)]
    return sorted(found)


def _is_module(name: str) -> bool:
    """Whether `name` is a module (not a name imported from one: `from a.b import C`)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent that is a module, not a package
        return False


def normalised_statements(source: str) -> list[str]:
    """The module's top-level statements as text, without docstrings, imports,
    TYPE_CHECKING blocks and `__all__`."""
    tree = _Strip().visit(_parse(source))
    return [ast.unparse(node) for node in tree.body if not _ignored(node)]


def _parse(source: str) -> ast.Module:
    """ast.parse, again on the spurious SystemError described above."""
    for attempt in range(1, _PARSE_ATTEMPTS + 1):
        try:
            return ast.parse(source)
        except SystemError as e:
            if "recursion depth mismatch" not in str(e) or attempt == _PARSE_ATTEMPTS:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _module_file(name: str) -> str:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, f"no module named {name!r}"
    return spec.origin


def _ignored(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import | ast.ImportFrom | ast.Pass):
        return True
    if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
        return True
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)


class _Strip(ast.NodeTransformer):
    """Drops docstrings, imports and function annotations at every level; an emptied body
    gets a `pass`."""

    def __init__(self) -> None:
        self._functions = 0  # how deep inside function bodies the visit is

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._function(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        node.returns = None
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]:
            if arg is not None:
                arg.annotation = None
        self._functions += 1
        try:
            return self.generic_visit(node)
        finally:
            self._functions -= 1

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | None:
        if not self._functions:
            return self.generic_visit(node)
        if node.value is None:
            return None  # `x: int` alone declares nothing at run time
        return ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and all(isinstance(s, ast.stmt) for s in body):
            kept = [s for s in body if not isinstance(s, ast.Import | ast.ImportFrom)]
            if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and kept
                    and isinstance(kept[0], ast.Expr) and isinstance(kept[0].value, ast.Constant)
                    and isinstance(kept[0].value.value, str)):
                kept = kept[1:]
            node.body = kept or [ast.Pass()]  # type: ignore[attr-defined]
        return node
