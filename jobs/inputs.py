"""The files a job reads: typed parameter paths resolved against the sweep file's folder,
JSONL lines that name their file and line when broken, and digests of file contents."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

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
    """sha256 over the bytes of the given files, in order. One file's digest is computed once
    per process while the file stays as it was (`per_file_state`): a sweep's cells share
    their data files, and a prompt file of a million lines takes a second to hash."""
    if len(paths) == 1:
        return per_file_state(_DIGESTS, paths[0], lambda: _digest(paths))
    return _digest(paths)


def _digest(paths: tuple[str | Path, ...]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


T = TypeVar("T")
FileState = tuple[int, int, int, int, int]
# A file's mtime is stamped from a coarse clock (a few ms behind the real time): a file
# changed within this long of our reading it could change again with the same stamp and size.
_RACY_SECONDS = 0.5
_DIGESTS: dict[str, tuple[FileState, str]] = {}
_CACHE_LOCK = threading.Lock()


def _state(path: str | Path) -> FileState:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def per_file_state(cache: dict[str, tuple[FileState, T]], path: str | Path, compute: Callable[[], T]) -> T:
    """`compute()` (something read from the file at `path`), kept in `cache` (one entry per
    path) for as long as the file's device, inode, size, mtime and ctime stay the same. As in
    git's index, a file whose mtime is not clearly before the read began is not kept ("racy"):
    it could be rewritten with the same size and stamp, and we would not see it."""
    key = str(path)
    before = _state(path)
    with _CACHE_LOCK:
        hit = cache.get(key)
    if hit is not None and hit[0] == before:
        return hit[1]
    began = time.time()
    value = compute()
    if _state(path) == before and before[3] < (began - _RACY_SECONDS) * 1e9:
        with _CACHE_LOCK:
            cache[key] = (before, value)
    return value


def row_problems(error: ValidationError) -> str:
    """A data row's validation errors in a line: `field: what`, fields dotted as in the row
    (`messages.0.role`). The row's values are not repeated: the file and line point to them."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'the row'}: {err['msg']}" for err in error.errors())
