"""What a job is: parameters, a row schema, samples, an async per-sample program, a summary.

A job never touches Ray, files or MLflow. It gets model handles from its context and returns
rows; the orchestrator decides where the calls run and where the rows land. So every job is
testable in-process against a real tiny model (`jobs.local.LocalContext`).
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

import polars as pl
import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

from actors.engines.protocol import Completion, Request


class Sample(BaseModel):
    """One unit of work. `id` is stable across runs (it keys resume and the rows)."""

    model_config = ConfigDict(frozen=True)
    id: str
    data: dict[str, Any] = {}


class ModelHandle(Protocol):
    """What a job sees of a model: a name and the engine protocol's one method."""

    name: str

    async def generate(self, request: Request) -> list[Completion]: ...


class JobContext:
    """Model handles by role. `subject` is the model under study; other roles (judge, critic,
    monitor, decomposer) map to any model of the sweep and fall back to the subject."""

    def __init__(self, models: Mapping[str, ModelHandle], seed: int = 0) -> None:
        assert "subject" in models, f"a job context needs a 'subject' model, got roles {sorted(models)}"
        self._models = dict(models)
        self.seed = seed

    def model(self, role: str = "subject") -> ModelHandle:
        return self._models.get(role) or self._models["subject"]

    def has(self, role: str) -> bool:
        return role in self._models


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


class JobParams(BaseModel):
    """Base for job parameters: frozen, unknown keys rejected. Everything here changes outputs
    and so enters the cell id; knobs that don't (concurrency, shard size) live in the sweep."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Job:
    """Subclass per experiment kind and register it in `jobs.registry`."""

    kind: ClassVar[str]
    version: ClassVar[str]  # bump when the same params would now produce different rows
    Params: ClassVar[type[JobParams]]
    schema: ClassVar[pa.Schema]  # the job's own columns; the store adds the id columns
    roles: ClassVar[tuple[str, ...]] = ()  # extra roles it calls besides `subject`
    # summary columns (shell patterns) `orchestrate results` shows by default; () shows all
    headline: ClassVar[tuple[str, ...]] = ()

    def samples(self, params: JobParams) -> Sequence[Sample]:
        raise NotImplementedError

    def data_digest(self, params: JobParams) -> str:
        """Digest of the input data the samples come from (files the params point at)."""
        return ""

    async def run(self, sample: Sample, params: JobParams, ctx: JobContext) -> list[dict[str, Any]]:
        raise NotImplementedError

    def summarize(self, rows: pl.DataFrame, params: JobParams) -> dict[str, float]:
        return {}

    def report(self, rows: pl.DataFrame, params: JobParams) -> pl.DataFrame | None:
        """The job's own table of one cell, beyond its summary numbers (a trigger scan's ranked
        candidates): what `orchestrate results --kind K --report` prints. None: no such table."""
        return None


def file_digest(*paths: str | Path) -> str:
    """sha256 over the bytes of the given files, in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
