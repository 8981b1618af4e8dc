"""Every job family's and the finetune's code version is held to the digest of the code its
outputs come from (tests/code_versions.py says how to record a change)."""
from __future__ import annotations

from tests.code_versions import changes, current


def test_every_code_change_is_a_version_bump_or_a_recorded_note():
    assert not changes(), ("code that makes rows changed without its record: bump the family's version for the "
                           "stage whose outputs change, or note why none do, then `python -m tests.code_versions "
                           "record FAMILY [--note ...]`:\n" + "\n".join(changes()))


def test_the_digest_ignores_comments_and_formatting(tmp_path, monkeypatch):
    import jobs.generate.job as module
    from jobs.source_digest import source_digest

    source = open(module.__file__).read()
    reformatted = tmp_path / "reformatted.py"
    reformatted.write_text("# a comment\n" + source.replace("    kind = ", "    # why\n    kind = "))
    changed = tmp_path / "changed.py"
    changed.write_text(source.replace("max_tokens: int = Field(64", "max_tokens: int = Field(65"))
    monkeypatch.syspath_prepend(str(tmp_path))
    original = source_digest(["jobs.generate.job"])
    assert source_digest(["reformatted"]) == original
    assert source_digest(["changed"]) != original
    assert current()["generate"]["versions"] == {"generate": "1"}
