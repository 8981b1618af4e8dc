"""The code digest follows what code does: layout, comments, docstrings, imports and function
annotations do not move it; a changed statement does. Organisms are cached (and bundled) by
it, so a move of their code must not retrain them and a change of their behaviour must."""
from __future__ import annotations

import ast
import gc
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from jobs.source_digest import normalised_statements, source_digest

ORIGINAL = '''
"""A module."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["pick", "Box"]
LIMIT = 10


def pick(items: Sequence[int], seed: int = 0) -> int:
    """One of the items."""
    rng: random.Random = random.Random(seed)  # seeded
    return rng.choice(list(items)[:LIMIT])


class Box:
    """A box."""

    size: int = 3

    def twice(self) -> int:
        return 2 * self.size
'''

# The same code, reformatted, re-documented, re-imported and annotated differently.
SAME = '''
import random as _random_module_unused
import random

LIMIT = 10
class Box:
    size: int = 3
    def twice(self):
        # two of them
        return 2 * self.size
def pick(items, seed=0):
    rng = random.Random(seed)
    return rng.choice(
        list(items)[:LIMIT]
    )
'''


def write(folder: Path, name: str, text: str) -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(text))
    return name


@pytest.fixture
def modules(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("digest_case_")]:
        del sys.modules[name]


def test_layout_comments_imports_and_annotations_do_not_count(modules):
    a = write(modules, "digest_case_a", ORIGINAL)
    b = write(modules, "digest_case_b", SAME)
    assert source_digest([a]) == source_digest([b])


def test_moving_a_definition_between_modules_does_not_count(modules):
    whole = write(modules, "digest_case_whole", ORIGINAL)
    first = write(modules, "digest_case_first", "LIMIT = 10\nclass Box:\n    size: int = 3\n"
                                                "    def twice(self):\n        return 2 * self.size\n")
    second = write(modules, "digest_case_second", "import random\ndef pick(items, seed=0):\n"
                                                  "    rng = random.Random(seed)\n    return rng.choice(list(items)[:LIMIT])\n")
    assert source_digest([whole]) == source_digest([first, second])


@pytest.mark.parametrize("change", [
    ("LIMIT = 10", "LIMIT = 11"),  # a constant
    ("return 2 * self.size", "return 3 * self.size"),  # a method's body
    ("    size: int = 3", "    size: float = 3"),  # a field's type: dataclasses and pydantic models use it
    ("rng.choice(list(items)[:LIMIT])", "rng.choice(list(items)[LIMIT:])"),
])
def test_a_changed_statement_counts(modules, change):
    a = write(modules, "digest_case_a", ORIGINAL)
    b = write(modules, "digest_case_b", ORIGINAL.replace(*change))
    assert source_digest([a]) != source_digest([b]), change


def test_docstrings_go_at_every_level_but_strings_that_are_code_stay():
    assert normalised_statements('def f():\n    """doc"""\n    return "doc"\n') == ["def f():\n    return 'doc'"]
    assert normalised_statements("def f():\n    import os\n") == ["def f():\n    pass"]


def test_every_organism_is_bundled_at_the_digest_of_the_code_as_it_is():
    """The check that turns a silent 25-minute retrain into a failing test: a change to the
    organisms' build code (or a recipe) must come with `orchestrate organisms bundle`."""
    from jobs.organisms.build import BUNDLE_DIR
    from jobs.organisms.recipes import ORGANISMS

    missing = [r.folder_name() for r in ORGANISMS.values() if not (BUNDLE_DIR / r.folder_name()).is_dir()]
    assert not missing, f"not bundled at the current digest: {missing} (run `orchestrate organisms bundle`)"


class _Pause:
    """Cyclic garbage whose finalizer, run by a collection in the parsing thread while CPython
    builds the tree's objects, waits there until another thread has parsed something."""

    inside: threading.Event
    done: threading.Event

    def __del__(self) -> None:
        self.inside.set()
        self.done.wait(10)


T = TypeVar("T")


def _parse_while_another_thread_parses(parse: Callable[[str], T], source: str) -> T:
    inside, done = threading.Event(), threading.Event()

    def other(depth: int = 40) -> None:  # another thread, from another stack depth
        if depth:
            return other(depth - 1)
        inside.wait(10)
        ast.parse("x = [1, (2, {3: 4})]")
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    threshold = gc.get_threshold()
    gc.collect()
    gc.set_threshold(500)  # the next collection falls among the tree's first objects
    pause = _Pause()
    pause.inside, pause.done, pause.me = inside, done, pause  # type: ignore[attr-defined]
    del pause
    try:
        return parse(source)
    finally:
        gc.set_threshold(*threshold)
        done.set()
        thread.join()


def test_a_digest_survives_a_parse_in_another_thread():
    """CPython 3.11 keeps the depth of the tree it builds in state all threads share: a parse
    in another thread mid-build fails a sound parse with "AST constructor recursion depth
    mismatch" (it failed a submit's summary while MLflow imported in the background). The
    digest's own parse tries again; the bare ast.parse shows the bug is real."""
    source = Path(source_digest.__code__.co_filename).read_text()
    if sys.version_info[:2] == (3, 11):
        with pytest.raises(SystemError, match="recursion depth mismatch"):
            _parse_while_another_thread_parses(ast.parse, source)
    statements = _parse_while_another_thread_parses(normalised_statements, source)
    assert statements == normalised_statements(source)
