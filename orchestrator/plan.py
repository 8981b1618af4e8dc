"""A sweep becomes cells (job kind x model x grid point) and each cell becomes shards.

Ids are content hashes of everything that changes outputs - job kind and version, the
identities of every model the cell calls (weights digest, adapter digest, engine, dtype), the
validated parameters with each data file replaced by the digest of its bytes - and of nothing
that doesn't (shard size, concurrency, replicas, retries). Bump HASH_SCHEME when the recipe
itself changes, so old and new ids can never collide silently.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from actors.engines.paths import resolve_model_path
from jobs.base import Job, JobParams, file_digest
from jobs.registry import get_job
from orchestrator.grid import expand_grid
from orchestrator.spec import JobSpec, ModelSpec, Sweep

HASH_SCHEME = "orchestrate-ids-v1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".txt", ".jinja")


def content_id(obj: Any, length: int = 16) -> str:
    blob = json.dumps({"scheme": HASH_SCHEME, "content": obj}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@lru_cache(maxsize=256)
def _folder_digest(folder: str, mtimes: tuple) -> str:
    files = [Path(folder) / name for name, _ in mtimes]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + file_digest(f).encode())
    return h.hexdigest()


def weights_digest(path: str) -> str:
    """Digest of a local model folder's weights, config and tokenizer; a hub id (no local
    folder) is identified by its name and revision instead."""
    p = Path(path)
    if not p.is_dir():
        return f"ref:{path}"
    files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    return _folder_digest(str(p), tuple((f.name, f.stat().st_mtime_ns) for f in files))


def model_identity(name: str, sweep: Sweep) -> dict[str, Any]:
    """What determines a model's outputs. The name is not part of it: renaming a model in the
    sweep must not rerun anything."""
    if name in sweep.finetunes:
        from orchestrator.finetunes import finetune_id

        # The finetune's id covers base weights, data bytes and hyperparameters; its trained
        # weights are a function of those (a died run resumes from checkpoints of that id).
        return {"finetune": finetune_id(sweep, name), "engine": sweep.models[sweep.finetunes[name].base].engine}
    m: ModelSpec = sweep.models[name]
    ident: dict[str, Any] = {"engine": m.engine, "dtype": m.dtype, "revision": m.revision}
    if m.engine == "openai":
        ident.update(api_model=m.path, base_url=m.base_url)
    elif m.adapter:
        ident.update(base=model_identity(m.base, sweep), adapter=weights_digest(m.adapter))
    else:
        ident["weights"] = weights_digest(resolve_model_path(m.path))
    return ident


@dataclass(frozen=True)
class Shard:
    id: str
    cell_id: str
    index: int
    sample_ids: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    id: str
    sweep: str
    job_index: int
    kind: str
    model: str  # the subject
    roles: dict[str, str]  # role -> model name, the subject included
    point: dict[str, Any]  # the grid point as written (with `repeat` when repeats > 1)
    params: JobParams
    shards: tuple[Shard, ...] = field(default=())

    @property
    def n_samples(self) -> int:
        return sum(len(s.sample_ids) for s in self.shards)

    def manifest(self) -> dict[str, Any]:
        return {
            "cell_id": self.id, "sweep": self.sweep, "kind": self.kind, "model": self.model,
            "roles": self.roles, "point": self.point, "params": self.params.model_dump(mode="json"),
            "shards": [s.id for s in self.shards], "samples": self.n_samples,
        }


@dataclass(frozen=True)
class Plan:
    sweep: Sweep
    cells: tuple[Cell, ...]

    def models_needed(self, cells: list[Cell] | None = None) -> set[str]:
        return {m for c in (cells if cells is not None else self.cells) for m in c.roles.values()}


def _hashable_params(job: Job, params: JobParams) -> dict[str, Any]:
    """The params as they enter the id: data files by content, not by location."""
    dumped = params.model_dump(mode="json")
    for key, value in dumped.items():
        if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_file():
            dumped[key] = {"file_sha256": file_digest(value)}
    return dumped


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
        samples = job.samples(params)
        ids = [s.id for s in samples]
        assert len(set(ids)) == len(ids), f"job {spec.kind} produced duplicate sample ids"
        data_digest = job.data_digest(params)
        repeat = point.get("repeat")
        for model in spec.models:
            roles = {"subject": model, **spec.roles}
            cell_id = content_id({
                "kind": job.kind, "version": job.version, "params": _hashable_params(job, params),
                "repeat": repeat, "data": data_digest,
                "models": {role: model_identity(m, sweep) for role, m in sorted(roles.items())},
            })
            shards = tuple(
                Shard(id=content_id({"cell": cell_id, "samples": ids[i : i + spec.shard_size]}),
                      cell_id=cell_id, index=i // spec.shard_size, sample_ids=tuple(ids[i : i + spec.shard_size]))
                for i in range(0, len(ids), spec.shard_size)
            )
            cells.append(Cell(id=cell_id, sweep=sweep.name, job_index=job_index, kind=job.kind, model=model,
                              roles=roles, point=point, params=params, shards=shards))
    return cells


def make_plan(sweep: Sweep) -> Plan:
    cells: list[Cell] = []
    seen: set[str] = set()
    for i, spec in enumerate(sweep.jobs):
        for cell in plan_cells(sweep, i, spec):
            if cell.id not in seen:  # two job entries asking for the same work run it once
                seen.add(cell.id)
                cells.append(cell)
    return Plan(sweep=sweep, cells=tuple(cells))
