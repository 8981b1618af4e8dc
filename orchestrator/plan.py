"""A sweep becomes cells (job kind x model x grid point) and each cell becomes shards.

A cell's work is stored in stages (`jobs.stages`): generation, and for kinds that judge, the
judging of that generation. Each stage has a content id (`orchestrator.ids`) of what changes
its rows and of nothing else; the judging stage's id includes the generation id it reads, so
swapping the judge leaves the generation where it is. The summary stage stores no rows: a
cell is its stages seen through its summary parameters, its id hashes both, and its summary
is recomputed from the rows, so cells that differ in a threshold share every stored row.

A shard is a run of consecutive samples, the unit of resume; its id hashes its stage and its
samples, and a judging shard covers the samples of one generation shard. The shard layout
(the shard size) is fixed by the first generation shard written: see
`SweepStore.settle_layout`. Planning reads the jobs' data files and the organisms' recipes;
it starts no Ray and loads no model.

Planning builds no sample (a sweep of a million prompts in a hundred cells would hold a
hundred million): it asks a job for its sample ids (`Job.sample_ids`), which a job with
large data reads once per file and shares between cells; a cell's shards (`ShardLayout`)
are counted from them and their ids hashed only when needed, each chunk of ids serialised
once for every cell that shares it. Samples are built when their shard runs
(`ShardSamples`, through `Job.samples_at`).
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, overload

from jobs.errors import DataFileError
from jobs.job import SUBJECT, Job, JobParams, Sample
from jobs.registry import get_job
from jobs.stages import Stage, stage_values
from orchestrator.grid import expand_grid
from orchestrator.ids import HASH_SCHEME, content_id, hashable, model_identity, replicate_group
from orchestrator.load import check_finetune_data, sample_ids
from orchestrator.spec import JobSpec, Sweep


@dataclass(frozen=True)
class Shard:
    id: str
    stage_id: str  # the generation stage it is a part of
    index: int
    sample_ids: tuple[str, ...]
    start: int = 0  # the position of its first sample among the cell's (`Job.samples_at`)


_MARK = "\x00shard-id-mark\x00"
_CHUNKS: dict[tuple[int, int], tuple[Sequence[str], list[bytes]]] = {}  # (id(sample ids), size) -> JSON chunks
_CHUNKS_KEPT = 16  # sample id lists of this many (data file, shard size) pairs; planning a sweep needs a few


def _id_hasher(template: Any) -> Callable[[bytes], str]:
    """`content_id(template)` with `_MARK` in it replaced by a JSON text given later: the same
    id, hashing the text around the mark once rather than re-serialising it for each shard."""
    blob = json.dumps({"scheme": HASH_SCHEME, "content": template}, sort_keys=True, default=str)
    before, after = blob.split(json.dumps(_MARK))
    head, tail = hashlib.sha256(before.encode()), after.encode()

    def shard_id(middle: bytes) -> str:
        h = head.copy()
        h.update(middle)
        h.update(tail)
        return h.hexdigest()[:16]

    return shard_id


def _json_chunks(sample_ids: Sequence[str], size: int) -> list[bytes]:
    """Each chunk of `size` ids as JSON, computed once per id list and size: the cells that
    read one data file share its list (`Job.sample_ids`)."""
    key = (id(sample_ids), size)
    hit = _CHUNKS.get(key)
    if hit is not None and hit[0] is sample_ids:
        return hit[1]
    chunks = [json.dumps(list(sample_ids[i : i + size])).encode() for i in range(0, len(sample_ids), size)]
    if len(_CHUNKS) >= _CHUNKS_KEPT:
        del _CHUNKS[next(iter(_CHUNKS))]
    _CHUNKS[key] = (sample_ids, chunks)  # the list is kept too, so its id() names it
    return chunks


class ShardLayout(Sequence[Shard]):
    """A generation stage's shards: consecutive chunks of `size` of the cell's sample ids. Its
    length follows from the number of samples; the shard ids (one hash each, as
    `content_id({"cell": stage id, "samples": chunk})` has always made them, so results of
    earlier versions are found) are computed on first need and kept; a Shard is made when
    it is read, never held for the whole sweep."""

    def __init__(self, stage_id: str, sample_ids: Sequence[str], size: int) -> None:
        self.stage_id, self.sample_ids, self.size = stage_id, sample_ids, size
        self._ids: tuple[str, ...] | None = None
        self._stage_ids: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return (len(self.sample_ids) + self.size - 1) // self.size

    @overload
    def __getitem__(self, index: int) -> Shard: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Shard]: ...
    def __getitem__(self, index: int | slice) -> Shard | Sequence[Shard]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        start = index * self.size
        return Shard(id=self.ids()[index], stage_id=self.stage_id, index=index,
                     sample_ids=tuple(self.sample_ids[start : start + self.size]), start=start)

    def __iter__(self) -> Iterator[Shard]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ShardLayout) and (self.stage_id, self.size) == (other.stage_id, other.size)
                and (self.sample_ids is other.sample_ids or list(self.sample_ids) == list(other.sample_ids)))

    __hash__ = None  # type: ignore[assignment]  # mutable caches inside; equal layouts need not hash alike

    def __repr__(self) -> str:
        return f"ShardLayout({self.stage_id}, {len(self.sample_ids)} samples, size {self.size})"

    def ids(self) -> tuple[str, ...]:
        """Every shard's id, in order."""
        if self._ids is None:
            shard_id = _id_hasher({"cell": self.stage_id, "samples": _MARK})
            self._ids = tuple(shard_id(chunk) for chunk in _json_chunks(self.sample_ids, self.size))
        return self._ids

    def stage_ids(self, stage_id: str) -> tuple[str, ...]:
        """The ids of each shard's part of a later stage (`Cell.shard_id`), in order."""
        if stage_id not in self._stage_ids:
            shard_id = _id_hasher({"stage": stage_id, "shard": _MARK})
            self._stage_ids[stage_id] = tuple(shard_id(json.dumps(g).encode()) for g in self.ids())
        return self._stage_ids[stage_id]

    def without(self, shard_ids: set[str], stage_ids: Sequence[str] | None = None) -> ShardSelection:
        """The shards whose id (or whose id in `stage_ids`, another stage's) is not in
        `shard_ids`, as a lazy sequence: a sweep not started yet has millions."""
        if not shard_ids:  # nothing on disk: no shard id needs hashing yet
            return ShardSelection(self, range(len(self)))
        ids = self.ids() if stage_ids is None else stage_ids
        return ShardSelection(self, [i for i, sid in enumerate(ids) if sid not in shard_ids])


class ShardSelection(Sequence[Shard]):
    """Some shards of a layout, by position, made when read."""

    def __init__(self, layout: ShardLayout, positions: Sequence[int]) -> None:
        self.layout, self.positions = layout, positions

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def n_samples(self) -> int:
        """The samples of these shards (only the layout's last shard may be short)."""
        if not self.positions:
            return 0
        last = len(self.layout) - 1
        short = len(self.layout.sample_ids) - last * self.layout.size
        return (len(self.positions) - 1) * self.layout.size + (short if self.positions[-1] == last
                                                               else self.layout.size)

    @overload
    def __getitem__(self, index: int) -> Shard: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Shard]: ...
    def __getitem__(self, index: int | slice) -> Shard | Sequence[Shard]:
        if isinstance(index, slice):
            return [self.layout[i] for i in self.positions[index]]
        return self.layout[self.positions[index]]

    def __eq__(self, other: object) -> bool:  # `store.missing(...) != []` and list comparisons
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class ShardSamples:
    """A cell's samples as its shards ask for them, when they run. A job that builds samples
    one shard at a time (`Job.streams_samples`: the generate job's prompt files) is asked per
    shard; any other (small data sets) builds them all on the cell's first shard, kept as long
    as this object (the scheduler's, while the cell's shards run)."""

    def __init__(self, job: Job[Any], params: JobParams) -> None:
        self.job, self.params = job, params
        self._all: Sequence[Sample] | None = None
        self._lock = threading.Lock()  # shards ask from worker threads

    def of(self, shard: Shard) -> dict[str, Sample]:
        """The shard's samples by id. Raises DataFileError when they are not the ones planned
        (the data changed since planning)."""
        stop = shard.start + len(shard.sample_ids)
        if self.job.streams_samples():
            got = self.job.samples_at(self.params, shard.start, stop)
        else:
            with self._lock:
                if self._all is None:
                    self._all = self.job.samples(self.params)
            got = self._all[shard.start : stop]
        if tuple(s.id for s in got) != shard.sample_ids:
            raise DataFileError(f"the samples of shard {shard.id} are not the ones planned: the data changed "
                                f"since the sweep was planned; submit again to plan it anew")
        return {s.id: s for s in got}


@dataclass(frozen=True)
class Cell:
    id: str  # of its stages and summary parameters (a view of the stored rows)
    sweep: str
    job_index: int
    kind: str
    model: str  # the subject
    roles: dict[str, str]  # role -> model name, the subject included
    point: dict[str, Any]  # the grid point as written (with `repeat` when repeats > 1)
    params: JobParams
    stages: dict[Stage, str] = field(default_factory=dict)  # stored stage -> its id, in order
    shards: ShardLayout = field(default_factory=lambda: ShardLayout("", (), 1))  # the generation shards
    shard_size: int = 0
    judging_roles: tuple[str, ...] = ()
    replicates: str = ""  # the subject's replicate group (`ids.replicate_group`)

    @property
    def n_samples(self) -> int:
        return len(self.shards.sample_ids)

    @property
    def last_stage(self) -> Stage:
        return list(self.stages)[-1]

    def shard_id(self, stage: Stage, shard: Shard) -> str:
        """The id of `shard`'s part of `stage` (a generation shard's own id for generation)."""
        return shard.id if stage == "generate" else self.shard_ids(stage)[shard.index]

    def shard_ids(self, stage: Stage) -> tuple[str, ...]:
        """Every shard's id in `stage`, in order (computed once per cell)."""
        return self.shards.ids() if stage == "generate" else self.shards.stage_ids(self.stages[stage])

    def shards_without(self, stage: Stage, on_disk: set[str]) -> ShardSelection:
        """The shards whose part of `stage` is not among `on_disk` (shard ids), made when read."""
        if stage == "generate" or not on_disk:
            return self.shards.without(on_disk)
        return self.shards.without(on_disk, self.shard_ids(stage))

    def roles_of(self, stage: Stage) -> dict[str, str]:
        """The roles (and their models) that `stage` calls."""
        judging = stage == "judge"
        return {r: m for r, m in self.roles.items() if (r in self.judging_roles) == judging}

    def resharded(self, shard_size: int) -> Cell:
        """The same cell cut into shards of `shard_size` samples."""
        return replace(self, shards=split_shards(self.stages["generate"], self.shards.sample_ids, shard_size),
                       shard_size=shard_size)

    def manifest(self) -> dict[str, Any]:
        return {
            "cell_id": self.id, "sweep": self.sweep, "kind": self.kind, "model": self.model,
            "roles": self.roles, "point": self.point, "params": self.params.model_dump(mode="json"),
            "stages": {stage: {"id": sid, "shards": list(self.shard_ids(stage))}
                       for stage, sid in self.stages.items()},
            "shard_size": self.shard_size, "samples": self.n_samples,
            # what a comparison needs to know of the cell: the job's code versions (in the id,
            # but not readable from it) and which models are seeds of one finetune
            "versions": dict(get_job(self.kind).versions), "replicates": self.replicates or self.model,
        }


@dataclass(frozen=True)
class Plan:
    sweep: Sweep
    cells: tuple[Cell, ...]


# A job's shards when it sets no shard_size: 32 samples, so that a small cell's later stage (a
# judge) starts on its first shards while generation goes on; a large cell's grow in steps of
# 32, to about 64 shards of at most 256, so that what each shard costs the driver (a Parquet
# file, its calls and bookkeeping) stops mattering. 20,000 samples through the hf engine on 2
# cores: 57.9 / 54.9 s with shards of 32, 49.6 / 53.5 s with 256 (benchmarks/RESULTS.md).
SHARD_SIZE = 32
SHARDS_PER_CELL = 64
MAX_DEFAULT_SHARD_SIZE = 256


def default_shard_size(n_samples: int) -> int:
    """The shard size of a cell of `n_samples` whose job sets none (see SHARD_SIZE)."""
    steps = -(-n_samples // (SHARDS_PER_CELL * SHARD_SIZE))
    return min(MAX_DEFAULT_SHARD_SIZE, SHARD_SIZE * max(1, steps))


def split_shards(stage_id: str, sample_ids: Sequence[str], shard_size: int) -> ShardLayout:
    """Consecutive chunks of `shard_size` samples; a shard's id hashes its stage and samples."""
    return ShardLayout(stage_id, sample_ids, shard_size)


def sweep_base_dir(sweep: Sweep) -> Path:
    """Relative data paths in a sweep resolve against its file's folder."""
    return Path(getattr(sweep, "base_dir", None) or ".")


def plan_cells(sweep: Sweep, job_index: int, spec: JobSpec) -> list[Cell]:
    job = get_job(spec.kind)
    cells = []
    for point in expand_grid(spec):
        params = job.Params.model_validate(
            {k: v for k, v in point.items() if k != "repeat"}, context={"base_dir": sweep_base_dir(sweep)}
        )
        ids = sample_ids(sweep, job_index, params, point)  # errors name the sweep's line and the data's
        data_digest = job.data_digest(params)
        judging_digest = job.judging_digest(params) if job.has_judging() else ""
        repeat = point.get("repeat")
        shard_size = spec.shard_size or default_shard_size(len(ids))
        for model in spec.models:
            # `judge: subject` in a sweep: the subject plays that role itself, said in words.
            roles = {"subject": model, **{r: model if m == SUBJECT else m for r, m in spec.roles.items()}}

            def identities(judging: bool, roles: dict[str, str] = roles) -> dict[str, Any]:
                return {r: model_identity(m, sweep) for r, m in sorted(roles.items())
                        if (r in job.judging_roles) == judging}

            stages: dict[Stage, str] = {"generate": content_id({
                "kind": job.kind, "stage": "generate", "version": job.versions["generate"],
                "params": hashable(stage_values(params, "generate")), "repeat": repeat, "data": data_digest,
                "models": identities(judging=False),
            })}
            if job.has_judging():
                stages["judge"] = content_id({
                    "kind": job.kind, "stage": "judge", "version": job.versions["judge"],
                    "generation": stages["generate"], "params": hashable(stage_values(params, "judge")),
                    "data": judging_digest, "models": identities(judging=True),
                })
            # The cell: those rows seen through the summary parameters. Two cells that differ
            # only there share every stored row.
            cell_id = content_id({"stages": stages, "summary": hashable(stage_values(params, "summary"))})
            cells.append(Cell(id=cell_id, sweep=sweep.name, job_index=job_index, kind=job.kind, model=model,
                              roles=roles, point=point, params=params, stages=stages,
                              shards=split_shards(stages["generate"], ids, shard_size),
                              shard_size=shard_size, judging_roles=job.judging_roles,
                              replicates=replicate_group(model, sweep)))
    return cells


def make_plan(sweep: Sweep) -> Plan:
    check_finetune_data(sweep)  # before anything starts: a finetune's rows are read only once Ray runs
    cells: list[Cell] = []
    seen: set[str] = set()
    for i, spec in enumerate(sweep.jobs):
        for cell in plan_cells(sweep, i, spec):
            if cell.id not in seen:  # two job entries asking for the same work run it once
                seen.add(cell.id)
                cells.append(cell)
    return Plan(sweep=sweep, cells=tuple(cells))
