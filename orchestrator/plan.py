"""A sweep becomes cells (job kind x model x grid point) and each cell becomes shards.

Ids are content hashes of everything that changes outputs - job kind and version, the
identities of every model the cell calls (weights digest, adapter digest, engine, dtype,
context length, engine options), the validated parameters with each data file replaced by the
digest of its bytes - and of nothing that doesn't (shard size, concurrency, replicas, retries,
engine options that only change speed). Bump HASH_SCHEME when the recipe itself changes in a
way that could make old and new ids collide silently.

A cell's shard layout (its shard size) is fixed by the first shard written: see
`SweepStore.settle_layout`.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from actors.engines.paths import resolve_model_path
from jobs.base import Job, JobParams, file_digest
from jobs.registry import get_job
from orchestrator.grid import expand_grid
from orchestrator.errors import DataFileError, OrchestrateError
from orchestrator.spec import JobSpec, ModelSpec, Sweep

HASH_SCHEME = "orchestrate-ids-v1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".txt", ".jinja")
# engine_options that change how fast a model serves, never what it says: they stay out of
# model identities, so tuning throughput reruns nothing. Every other option enters them
# (quantization, kv_cache_dtype and the like change outputs).
SPEED_OPTIONS = frozenset({
    "max_batch_size", "batch_wait_ms",  # hf
    "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "kv_cache_memory_bytes", "swap_space",
    "disable_log_stats", "max_cpu_loras", "max_loras", "max_adapters", "in_process",  # vllm
    "timeout_s", "max_retries", "backoff_s", "max_backoff_s",  # openai
})


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
        # It is served the way its base is: the base's serving settings count too.
        return {"finetune": finetune_id(sweep, name), **_serving(sweep.models[sweep.finetunes[name].base])}
    m: ModelSpec = sweep.models[name]
    ident: dict[str, Any] = {**_serving(m), "revision": m.revision}
    if m.engine == "openai":
        ident.update(api_model=m.path, base_url=m.base_url)
    elif m.adapter:
        ident.update(base=model_identity(m.base, sweep), adapter=weights_digest(m.adapter))
    else:
        ident["weights"] = weights_digest(resolve_model_path(m.path))
    return ident


def _serving(m: ModelSpec) -> dict[str, Any]:
    """How a model is served, as far as it changes outputs: a prompt that does not fit
    max_model_len is an error row, and options like quantization change the tokens."""
    options = {k: v for k, v in sorted(m.engine_options.items()) if k not in SPEED_OPTIONS}
    return {"engine": m.engine, "dtype": m.dtype, "max_model_len": m.max_model_len, "engine_options": options}


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
    shard_size: int = 0

    @property
    def n_samples(self) -> int:
        return sum(len(s.sample_ids) for s in self.shards)

    def resharded(self, shard_size: int) -> "Cell":
        """The same cell cut into shards of `shard_size` samples."""
        ids = [i for s in self.shards for i in s.sample_ids]
        return replace(self, shards=split_shards(self.id, ids, shard_size), shard_size=shard_size)

    def manifest(self) -> dict[str, Any]:
        return {
            "cell_id": self.id, "sweep": self.sweep, "kind": self.kind, "model": self.model,
            "roles": self.roles, "point": self.point, "params": self.params.model_dump(mode="json"),
            "shards": [s.id for s in self.shards], "shard_size": self.shard_size, "samples": self.n_samples,
        }


@dataclass(frozen=True)
class Plan:
    sweep: Sweep
    cells: tuple[Cell, ...]

    def models_needed(self, cells: list[Cell] | None = None) -> set[str]:
        return {m for c in (cells if cells is not None else self.cells) for m in c.roles.values()}


def _hashable_params(job: Job, params: JobParams) -> dict[str, Any]:
    """The params as they enter the id: data files by content, not by location, wherever
    they sit (a list of question files too)."""

    def by_content(value: Any) -> Any:
        if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_file():
            return {"file_sha256": file_digest(value)}
        if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_dir():
            return {"folder": "by data_digest"}  # a job that reads a folder digests what it read
        if isinstance(value, list):
            return [by_content(v) for v in value]
        if isinstance(value, dict):
            return {k: by_content(v) for k, v in value.items()}
        return value

    return by_content(params.model_dump(mode="json"))


def split_shards(cell_id: str, sample_ids: list[str], shard_size: int) -> tuple[Shard, ...]:
    """Consecutive chunks of `shard_size` samples; a shard's id hashes its cell and samples."""
    return tuple(
        Shard(id=content_id({"cell": cell_id, "samples": sample_ids[i : i + shard_size]}), cell_id=cell_id,
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
        where = f"jobs[{job_index}] ({spec.kind}, {_point_text(point)})"
        try:
            ids = [s.id for s in job.samples(params)]
        except UnicodeDecodeError as e:  # the jobs' own readers name file and line for what they parse
            raise DataFileError(f"{where}: a data file is not UTF-8 text (byte {e.start}: {e.reason})") from None
        except OSError as e:
            raise DataFileError(f"{where}: {e.strerror or e}: {e.filename}") from None
        if not ids:
            raise OrchestrateError(f"{where}: the parameters give no samples (an empty data file, or "
                                   f"filters that keep nothing)")
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        if duplicates:
            raise DataFileError(f"{where}: sample ids must be unique; repeated: {', '.join(duplicates[:5])}"
                                + (f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""))
        data_digest = job.data_digest(params)
        repeat = point.get("repeat")
        for model in spec.models:
            roles = {"subject": model, **spec.roles}
            cell_id = content_id({
                "kind": job.kind, "version": job.version, "params": _hashable_params(job, params),
                "repeat": repeat, "data": data_digest,
                "models": {role: model_identity(m, sweep) for role, m in sorted(roles.items())},
            })
            cells.append(Cell(id=cell_id, sweep=sweep.name, job_index=job_index, kind=job.kind, model=model,
                              roles=roles, point=point, params=params,
                              shards=split_shards(cell_id, ids, spec.shard_size), shard_size=spec.shard_size))
    return cells


def _point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items() if not isinstance(v, (list, dict))) or "its one point"


def make_plan(sweep: Sweep) -> Plan:
    cells: list[Cell] = []
    seen: set[str] = set()
    for i, spec in enumerate(sweep.jobs):
        for cell in plan_cells(sweep, i, spec):
            if cell.id not in seen:  # two job entries asking for the same work run it once
                seen.add(cell.id)
                cells.append(cell)
    return Plan(sweep=sweep, cells=tuple(cells))
