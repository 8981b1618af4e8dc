"""Each family's code version, held to a digest of the code its rows come from.

A job family's rows (and a finetune's weights) change when its code does, and a result is
reused only when everything that made it is the same: so every change to that code either
bumps the family's version for the stage it changes (`Job.versions`, `FINETUNE_VERSION`), or
says in words why outputs are unchanged. `tests/data/code_versions.json` records, per family,
the versions and the digest of its code (`jobs.source_digest`: syntax trees, so comments,
docstrings and formatting never count), with the history of both. tests/test_code_versions.py
fails until a change is recorded:

    python -m tests.code_versions                      # what changed
    python -m tests.code_versions record misalignment  # after bumping its version
    python -m tests.code_versions record misalignment --note "outputs unchanged: a rename"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RECORD = Path(__file__).parent / "data" / "code_versions.json"
SHARED = ("actors.engines.chat", "actors.engines.protocol")  # how every prompt and request is made


def families() -> dict[str, tuple[dict[str, str], list[str]]]:
    """family -> (its versions now, the modules its outputs depend on)."""
    from jobs.registry import get_job, kinds
    from jobs.source_digest import import_closure
    from orchestrator.ids import FINETUNE_VERSION

    out = {}
    for kind in sorted(kinds()):
        job = get_job(kind)
        modules = import_closure([type(job).__module__], lambda m: m.startswith("jobs.") or m in SHARED)
        out[kind] = (dict(job.versions), modules)
    training = ["actors.training.data", "actors.training.encode", "actors.training.loop"]
    out["finetune"] = ({"train": str(FINETUNE_VERSION)},
                       import_closure(training, lambda m: m.startswith("actors.training.") or m in SHARED))
    return out


def current() -> dict[str, dict[str, Any]]:
    from jobs.source_digest import source_digest

    return {name: {"versions": versions, "digest": source_digest(modules)[:16]}
            for name, (versions, modules) in families().items()}


def recorded() -> dict[str, dict[str, Any]]:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


def changes() -> list[str]:
    """What the record does not say yet, one line per family."""
    now, record = current(), recorded()
    out = []
    for name, state in now.items():
        before = record.get(name)
        if before is None:
            out.append(f"{name}: not recorded")
        elif state["digest"] != before["digest"] or state["versions"] != before["versions"]:
            bumped = state["versions"] != before["versions"]
            out.append(f"{name}: code {'and version ' if bumped else ''}changed "
                       f"({before['versions']} -> {state['versions']}, digest {before['digest']} -> {state['digest']})")
    out += [f"{name}: recorded but no longer a family" for name in record if name not in now]
    return out


def record(name: str, note: str | None) -> None:
    now, data = current(), recorded()
    if name not in now:
        sys.exit(f"no family {name!r}; families: {', '.join(now)}")
    before = data.get(name)
    state = now[name]
    if before is not None and state["versions"] == before["versions"] and state["digest"] != before["digest"] and not note:
        sys.exit(f"{name}: its code changed and its version did not. Bump the version of the stage whose "
                 f"outputs change, or say why none do: --note 'outputs unchanged: ...'")
    history = (before or {}).get("history", [])
    history.append({**state, "note": note or ("first record" if before is None else "version bumped")})
    data[name] = {**state, "history": history}
    RECORD.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"{name}: recorded {state}")


def main() -> None:
    parser = argparse.ArgumentParser(description="each family's code version, held to its code's digest")
    sub = parser.add_subparsers(dest="command")
    rec = sub.add_parser("record", help="record a family's current versions and digest")
    rec.add_argument("family")
    rec.add_argument("--note", help="why outputs are unchanged, when the version is not bumped")
    args = parser.parse_args()
    if args.command == "record":
        record(args.family, args.note)
    else:
        print("\n".join(changes()) or "every family is recorded as it is")


if __name__ == "__main__":
    main()
