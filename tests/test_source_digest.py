"""The code digest follows what code does: layout, comments, docstrings, imports and function
annotations do not move it; a changed statement does. Organisms are cached (and bundled) by
it, so a move of their code must not retrain them and a change of their behaviour must."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

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
