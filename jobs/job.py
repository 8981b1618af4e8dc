"""What a job is: parameters, a row schema, samples, an async per-sample program, a summary.

A job never touches Ray, files or MLflow. It gets model handles from its context and returns
rows; the orchestrator decides where the calls run and where the rows land. So every job is
testable in-process against a real tiny model (`jobs.local.run_job`).
"""
from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from actors.engines.protocol import Completion, Request
from jobs.errors import UnknownRole

SUBJECT = "subject"


class Sample(BaseModel):
    """One unit of work. `id` is stable across runs (it keys resume and the rows)."""

    model_config = ConfigDict(frozen=True)
    id: str
    data: dict[str, Any] = {}


class ModelHandle(Protocol):
    """What a job sees of a model: a name and the engine protocol's one call."""

    name: str

    async def generate(self, request: Request) -> list[Completion]: ...


class JobContext:
    """Model handles by role. `subject` is the model under study; other roles (judge, critic,
    monitor, decomposer) map to any model of the sweep and fall back to the subject when the
    sweep leaves them unset. Once bound to a job (`bound`), a role the job does not declare
    is an error, not a silent fallback: a typo in a job must not judge with the subject."""

    def __init__(self, models: Mapping[str, ModelHandle], seed: int = 0,
                 declared: Collection[str] | None = None) -> None:
        assert SUBJECT in models, f"a job context needs a '{SUBJECT}' model, got roles {sorted(models)}"
        self._models = dict(models)
        self.seed = seed
        self._declared = None if declared is None else frozenset(declared) | {SUBJECT}

    def bound(self, job: Job[Any]) -> JobContext:
        """This context for `job`: its declared roles are the only ones it may ask for."""
        return JobContext(self._models, self.seed, job.roles)

    def model(self, role: str = SUBJECT) -> ModelHandle:
        allowed = self._declared if self._declared is not None else self._models.keys()
        if role not in allowed:
            raise UnknownRole(f"no role {role!r} here (roles: {', '.join(sorted(allowed))})")
        return self._models.get(role) or self._models[SUBJECT]

    def has(self, role: str) -> bool:
        return role in self._models


class JobParams(BaseModel):
    """Base for job parameters: frozen, unknown keys rejected. Everything here changes outputs
    and so enters the cell id; knobs that don't (concurrency, shard size) live in the sweep."""

    model_config = ConfigDict(frozen=True, extra="forbid")


P = TypeVar("P", bound=JobParams)


class Job(abc.ABC, Generic[P]):
    """Subclass per experiment kind and register it in `jobs.registry`."""

    kind: ClassVar[str]
    version: ClassVar[str]  # bump when the same params would now produce different rows
    Params: ClassVar[type[JobParams]]  # P, as a class
    schema: ClassVar[pa.Schema]  # the job's own columns; the store adds the id columns
    roles: ClassVar[tuple[str, ...]] = ()  # extra roles it calls besides `subject`
    # summary columns (shell patterns) `orchestrate results` shows by default; () shows all
    headline: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def samples(self, params: P) -> Sequence[Sample]:
        """Every sample of one grid point, in a fixed order, ids unique."""

    def data_digest(self, params: P) -> str:
        """Digest of the input data the samples come from (files the params point at)."""
        return ""

    @abc.abstractmethod
    async def run(self, sample: Sample, params: P, ctx: JobContext) -> list[dict[str, Any]]:
        """One sample's program: its rows (keys from `schema`)."""

    def summarize(self, rows: pl.DataFrame, params: P) -> dict[str, float]:
        return {}

    def report(self, rows: pl.DataFrame, params: P) -> pl.DataFrame | None:
        """The job's own table of one cell, beyond its summary numbers (a trigger scan's ranked
        candidates): what `orchestrate results --kind K --report` prints. None: no such table."""
        return None
