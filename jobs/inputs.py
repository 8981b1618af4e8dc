"""The files a job reads: typed parameter paths resolved against the sweep file's folder,
JSONL lines that name their file and line when broken, and digests of file contents."""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationError, ValidationInfo


def _resolve(value: str, info: ValidationInfo, folders: bool) -> str:
    base = Path((info.context or {}).get("base_dir", "."))
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (base / path)
    try:
        found = path.exists()
    except OSError as e:  # a name too long for the file system, say; the path itself may be huge
        shown = str(path) if len(str(path)) <= 200 else f"{str(path)[:100]}... ({len(str(path))} characters)"
        raise ValueError(f"cannot use this path ({e.strerror}): {shown}") from None
    if not found:
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


class NotUtf8(ValueError):
    """Bytes that are not UTF-8 text; `line` is where the first bad byte sits (1-based)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def decode_utf8(raw: bytes) -> str:
    """`raw` as UTF-8 text. Raises NotUtf8 saying the line and column of the first bad byte,
    so the user can find it (an editor that saved Latin-1 or UTF-16, a pasted binary)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise NotUtf8(line, f"{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {column}: {e.reason}); "
                      "save the file as UTF-8") from None


def read_text(path: str | Path, error: type[Exception]) -> str:
    """A data file's text; a file that is not UTF-8 raises `error` naming file and line."""
    try:
        return decode_utf8(Path(path).read_bytes())
    except NotUtf8 as e:
        raise error(f"{path}:{e}") from None


def jsonl_objects(path: str | Path, error: type[Exception]) -> Iterator[tuple[str, int, Any]]:
    """(`file:line`, line number, parsed JSON) for each non-blank line of a JSONL file. A file
    that is not UTF-8 or a line that is not JSON raises `error` (a DataFileError) naming the
    file and line, never a traceback."""
    lines = read_text(path, error).split("\n")  # not splitlines(): JSON strings may hold U+2028
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


def row_problems(error: ValidationError) -> str:
    """A data row's validation errors in a line: `field: what`, fields dotted as in the row
    (`messages.0.role`). The row's values are not repeated: the file and line point to them."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'the row'}: {err['msg']}" for err in error.errors())
