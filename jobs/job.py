"""What a job is: parameters, a row schema, samples, an async per-sample program, a summary.

A job never touches Ray, files or MLflow. It gets model handles from its context and returns
rows; the orchestrator decides where the calls run and where the rows land. So every job is
testable in-process against a real tiny model (`jobs.local.run_job`).

Its work comes in the stages of `jobs.stages`: `run` generates a sample's rows, `judge` (for
kinds with a judging stage) adds what the judging roles make of them, and `derive` and
`summarize` compute the summary stage from the stored rows.
"""
from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from actors.engines.protocol import Completion, Request
from jobs.errors import UnknownRole
from jobs.measures import Measure

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


@dataclass(frozen=True)
class RoleNeeds:
    """What one grid point of a job asks of the model in one role: whether the sweep must
    name it, what it is for (said in errors), and what its requests need, which the sweep's
    validation checks against each model's reasoning convention and API."""

    required: bool = False  # the sweep must name a model (or `subject`) for it
    purpose: str = ""  # what the role does here, for messages: "scores free-form answers"
    thinks: bool = False  # asked to reason in a think block (a CoT arm)
    prefill: bool = False  # its requests continue an assistant prefill
    logprobs: bool = False  # read from token logprobs
    greedy: bool = False  # sampled at temperature 0
    chat_template: bool = False  # its requests are chat messages: the model needs a chat template


class JobContext:
    """Model handles by role. `subject` is the model under study; other roles (judge, critic,
    monitor, decomposer) map to the models the sweep names. A role the sweep leaves unnamed
    is the subject only where the job says the subject plays it (`Job.subject_plays`: the
    decomposer of successive prompting); a judge never silently is the subject. Bound to a
    job (`bound`), a role the job does not declare is an error too. The judging stage's
    context holds the judging roles only: the subject is not asked again."""

    def __init__(self, models: Mapping[str, ModelHandle], seed: int = 0,
                 declared: Collection[str] | None = None, subject_plays: Collection[str] = ()) -> None:
        self._models = dict(models)
        self.seed = seed
        self._declared = None if declared is None else frozenset(declared) | {SUBJECT}
        self._subject_plays = frozenset(subject_plays)

    def bound(self, job: Job[Any]) -> JobContext:
        """This context for `job`: its declared roles are the only ones it may ask for."""
        return JobContext(self._models, self.seed, job.roles, job.subject_plays)

    def only(self, roles: Collection[str]) -> JobContext:
        """This context with only `roles` (the judging stage's view: no subject)."""
        return JobContext({r: h for r, h in self._models.items() if r in roles}, self.seed, roles, ())

    def model(self, role: str = SUBJECT) -> ModelHandle:
        allowed = self._declared if self._declared is not None else self._models.keys()
        if role not in allowed:
            raise UnknownRole(f"no role {role!r} here (roles: {', '.join(sorted(allowed))})")
        if role in self._models:
            return self._models[role]
        if role in self._subject_plays and SUBJECT in self._models:
            return self._models[SUBJECT]
        raise UnknownRole(f"the sweep names no model for the role {role!r} (validation should have said so)")

    def has(self, role: str) -> bool:
        return role in self._models


class JobParams(BaseModel):
    """Base for job parameters: frozen, unknown keys rejected. Each one belongs to a stage
    (`jobs.stages`: generate unless it says judge or summary) and enters that stage's id;
    knobs that change no output (concurrency, shard size) live in the sweep."""

    model_config = ConfigDict(frozen=True, extra="forbid")


P = TypeVar("P", bound=JobParams)


class Job(abc.ABC, Generic[P]):
    """Subclass per experiment kind and register it in `jobs.registry`."""

    kind: ClassVar[str]
    # Per stored stage (jobs.stages): bump a stage's version when the same inputs would now
    # give different rows there. A kind with a judging stage has a "judge" version.
    versions: ClassVar[Mapping[str, str]]
    Params: ClassVar[type[JobParams]]  # P, as a class
    schema: ClassVar[pa.Schema]  # the stored columns (both stages'); the store adds the id columns
    derived: ClassVar[pa.Schema] = pa.schema([])  # columns `derive` computes from them on reading
    roles: ClassVar[tuple[str, ...]] = ()  # extra roles it calls besides `subject`
    judging_roles: ClassVar[tuple[str, ...]] = ()  # those of them the judging stage calls
    subject_plays: ClassVar[tuple[str, ...]] = ()  # roles the subject plays when the sweep names no model
    # summary columns (shell patterns) `orchestrate results` shows by default; () shows all
    headline: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def has_judging(cls) -> bool:
        return "judge" in cls.versions

    @abc.abstractmethod
    def samples(self, params: P) -> Sequence[Sample]:
        """Every sample of one grid point, in a fixed order, ids unique."""

    def sample_ids(self, params: P) -> Sequence[str]:
        """The ids of `samples(params)`, in order: what planning needs (shard ids and counts).
        A job whose data can be large overrides it to read ids without building samples, and
        returns one shared sequence for every grid point that reads the same data."""
        return [s.id for s in self.samples(params)]

    def samples_at(self, params: P, start: int, stop: int) -> Sequence[Sample]:
        """`samples(params)[start:stop]`: one shard's samples, built when the shard runs. By
        default every sample is built (the scheduler keeps them per cell while its shards
        run); a job whose data can be large overrides it to build only these."""
        return self.samples(params)[start:stop]

    @classmethod
    def streams_samples(cls) -> bool:
        """Whether `samples_at` builds only the samples it is asked for."""
        return cls.samples_at is not Job.samples_at

    def data_digest(self, params: P) -> str:
        """Digest of the input data the samples come from (files the params point at)."""
        return ""

    def judging_digest(self, params: P) -> str:
        """Digest of the inputs only the judging stage reads (judge prompts)."""
        return ""

    @abc.abstractmethod
    async def run(self, sample: Sample, params: P, ctx: JobContext) -> list[dict[str, Any]]:
        """One sample's generation: its rows (keys from `schema`; judging columns left null)."""

    async def judge(self, sample: Sample, rows: list[dict[str, Any]], params: P,
                    ctx: JobContext) -> list[dict[str, Any]]:
        """The judging stage of one sample: its generated rows with the judging columns filled
        in, from the judging roles only (`ctx` holds no subject). Kinds without a judging
        stage never have it called."""
        return rows

    def derive(self, rows: pl.DataFrame, params: P) -> pl.DataFrame:
        """The summary stage's columns (`derived`: a threshold's verdict), computed from the
        stored rows; `summarize` and `report` call it first, so it must be idempotent."""
        return rows

    def needs(self, params: P) -> dict[str, RoleNeeds]:
        """What this grid point asks of each role, the subject included (see RoleNeeds).
        By default: nothing beyond the subject; the job's other roles are optional."""
        return {SUBJECT: RoleNeeds(), **{role: RoleNeeds() for role in self.roles}}

    def summarize(self, rows: pl.DataFrame, params: P) -> dict[str, float]:
        """The cell's numbers, from its stored rows (call `derive` first)."""
        return {}

    def measures(self, params: P) -> tuple[Measure, ...]:
        """What `orchestrate compare` and the report's figures set side by side across cells
        (`jobs.measures`); the first is the kind's headline. () : nothing comparable."""
        return ()

    def report(self, rows: pl.DataFrame, params: P) -> pl.DataFrame | None:
        """The job's own table of one cell, beyond its summary numbers (a trigger scan's ranked
        candidates): what `orchestrate results --kind K --report` prints. None: no such table."""
        return None
