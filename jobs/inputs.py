"""The files a job reads: typed parameter paths resolved against the sweep file's folder,
JSONL lines that name their file and line when broken, and digests of file contents."""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationInfo


def _resolve(value: str, info: ValidationInfo, folders: bool) -> str:
    base = Path((info.context or {}).get("base_dir", "."))
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (base / path)
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    if not folders and not path.is_file():
        raise ValueError(f"expected a file, got a folder: {path.resolve()}")
    return str(path.resolve())


def resolve_set_or_file(value: str, info: ValidationInfo, bundled: Mapping[str, Any]) -> str:
    """A bundled data set's name as is; anything else is a file, resolved like DataPath."""
    if value in bundled:
        return value
    try:
        return _resolve(value, info, folders=False)
    except ValueError as e:
        raise ValueError(f"{value!r} is neither a bundled set ({', '.join(bundled)}) nor a data file: {e}") from None


DataPath = Annotated[str, AfterValidator(functools.partial(_resolve, folders=False))]
"""A file the job reads. Relative paths resolve against the sweep file's folder (validation
context `base_dir`); the planner hashes the file's bytes, not its location, into cell ids."""

DataPathOrFolder = Annotated[str, AfterValidator(functools.partial(_resolve, folders=True))]
"""A file or a folder of files the job reads. The planner cannot hash a folder by itself: a job
that takes one covers what it read from it in `Job.data_digest`."""


def jsonl_objects(path: str | Path, error: type[Exception]) -> Iterator[tuple[str, int, Any]]:
    """(`file:line`, line number, parsed JSON) for each non-blank line of a JSONL file. A file
    that is not UTF-8 or a line that is not JSON raises `error` (a DataFileError) naming the
    file and line, never a traceback."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")  # not splitlines(): JSON strings may hold U+2028
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{where}: not JSON ({e.msg})") from None


def file_digest(*paths: str | Path) -> str:
    """sha256 over the bytes of the given files, in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
