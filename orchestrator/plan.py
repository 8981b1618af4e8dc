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
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobs.job import SUBJECT, JobParams
from jobs.registry import get_job
from jobs.stages import Stage, stage_values
from orchestrator.grid import expand_grid
from orchestrator.ids import content_id, hashable, model_identity, replicate_group
from orchestrator.load import check_finetune_data, sample_ids
from orchestrator.spec import JobSpec, Sweep


@dataclass(frozen=True)
class Shard:
    id: str
    stage_id: str  # the generation stage it is a part of
    index: int
    sample_ids: tuple[str, ...]


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
    shards: tuple[Shard, ...] = field(default=())  # the generation shards
    shard_size: int = 0
    judging_roles: tuple[str, ...] = ()
    replicates: str = ""  # the subject's replicate group (`ids.replicate_group`)

    @property
    def n_samples(self) -> int:
        return sum(len(s.sample_ids) for s in self.shards)

    @property
    def last_stage(self) -> Stage:
        return list(self.stages)[-1]

    def shard_id(self, stage: Stage, shard: Shard) -> str:
        """The id of `shard`'s part of `stage` (a generation shard's own id for generation)."""
        return shard.id if stage == "generate" else content_id({"stage": self.stages[stage], "shard": shard.id})

    def roles_of(self, stage: Stage) -> dict[str, str]:
        """The roles (and their models) that `stage` calls."""
        judging = stage == "judge"
        return {r: m for r, m in self.roles.items() if (r in self.judging_roles) == judging}

    def resharded(self, shard_size: int) -> Cell:
        """The same cell cut into shards of `shard_size` samples."""
        ids = [i for s in self.shards for i in s.sample_ids]
        return replace(self, shards=split_shards(self.stages["generate"], ids, shard_size), shard_size=shard_size)

    def manifest(self) -> dict[str, Any]:
        return {
            "cell_id": self.id, "sweep": self.sweep, "kind": self.kind, "model": self.model,
            "roles": self.roles, "point": self.point, "params": self.params.model_dump(mode="json"),
            "stages": {stage: {"id": sid, "shards": [self.shard_id(stage, s) for s in self.shards]}
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


def split_shards(stage_id: str, sample_ids: list[str], shard_size: int) -> tuple[Shard, ...]:
    """Consecutive chunks of `shard_size` samples; a shard's id hashes its stage and samples."""
    return tuple(
        Shard(id=content_id({"cell": stage_id, "samples": sample_ids[i : i + shard_size]}), stage_id=stage_id,
              index=i // shard_size, sample_ids=tuple(sample_ids[i : i + shard_size]))
        for i in range(0, len(sample_ids), shard_size)
    )


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
                              shards=split_shards(stages["generate"], ids, spec.shard_size),
                              shard_size=spec.shard_size, judging_roles=job.judging_roles,
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
