"""The sweep's finetunes: prerequisites of the cells that name them as models.

Each `finetunes:` entry gets a content id (its settings, the digest of its data file, the
base model's weights digest, the training code's version) and one folder,

    <store_root>/finetunes/<name>-<id>/
        adapter/  (method lora: a peft adapter)  or  model/  (method full: weights + tokenizer)
        data.parquet   the rows as trained, `kind` saying what each row is
        manifest.json  written last: its presence says the finetune is done

A finished finetune is not trained again. One that died keeps its DeepSpeed checkpoints in
`<store_root>/finetunes/.work-<name>-<id>/` and the next attempt (a retry, or the next
submission) resumes from the last of them. The ranks write there directly, so on a cluster
with local results `store_root` must be storage that the training nodes share (a PVC, NFS).

With results on an object store (`output: s3://...`) the finetune moves through the store:
each rank works in its own node's scratch folder (`actors.fetch.node_scratch()`, keyed by the
finetune id), rank 0 uploads the finished adapter or model to `<store_root>/finetunes/
<name>-<id>/`, the driver adds the data and then the manifest, last (its presence says done,
as on a disk), and replicas are given the folder's URI and fetch it into a per-node cache
before loading it (`actors.fetch.fetched`). Checkpoints stay on the ranks' nodes: a retry
resumes from them only when its ranks land where they were; a lost node's are gone, and the
finetune starts over.
"""
from __future__ import annotations

import collections
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param
from rich.console import Console

from actors.errors import RankDied
from actors.training.config import TrainConfig
from actors.training.data import MixedRow, as_is, load_rows, mix_backdoor, write_mixed
from jobs.inputs import file_digest
from jobs.organisms.build import file_lock, resolve_model_path
from orchestrator.finetune_spec import FinetuneSpec
from orchestrator.ids import FINETUNE_VERSION, base_identity, finetune_id
from orchestrator.spec import Sweep
from orchestrator.storage import ObjectPath, StorePath, local_copy, local_state_dir
from orchestrator.store import read_json, write_json
from orchestrator.tracking import Tracker, flatten

if TYPE_CHECKING:
    from actors.training.loop import TrainResult

MANIFEST = "manifest.json"
DATA_FILE = "data.parquet"
MAX_RESTARTS = 2


@dataclass(frozen=True)
class FinetuneResult:
    name: str
    id: str
    path: StorePath  # the finetune's folder (on an object store with the results there)
    manifest: dict[str, Any]
    trained: bool  # False: found finished on disk

    @property
    def method(self) -> str:
        return self.manifest["hyperparameters"]["method"]

    @property
    def weights(self) -> StorePath:
        """The adapter folder (lora: serve it on the base's replicas) or the model folder (full)."""
        return self.path / ("adapter" if self.method == "lora" else "model")

    @property
    def weights_location(self) -> str:
        """`weights` as a replica is given it: a local path, or a URI that opens the store
        again on any node (with the endpoint options of the sweep's `output`), which the
        replica fetches into its node's cache (`actors.fetch.fetched`)."""
        weights = self.weights
        return weights.as_uri() if isinstance(weights, ObjectPath) else str(weights)


def training_rows(ft: FinetuneSpec) -> list[MixedRow]:
    """The entry's rows as trained (backdoor mixed when asked). Raises DataError on bad data."""
    rows = load_rows(ft.data, ft.selection())
    if ft.backdoor is None:
        return as_is(rows)
    b = ft.backdoor
    return mix_backdoor(rows, b.triggers, b.share, b.alternatives, b.placement, b.control, ft.seed, source=ft.data)


def train_config(ft: FinetuneSpec, base_path: str, work: Path, output: Path, threads: int) -> TrainConfig:
    return TrainConfig(**ft.settings().model_dump(), base_path=base_path, work_dir=str(work),
                       output_dir=str(output), threads=threads)


def run_finetunes(sweep: Sweep, store_root: StorePath, tracker: Tracker | None, console: Console,
                  max_restarts: int = MAX_RESTARTS, only: set[str] | None = None) -> dict[str, FinetuneResult]:
    """Train every finetune of the sweep that is not on disk yet; name -> result. Ray must be
    initialised. Every pending entry's data is read and checked before any training starts."""
    root = store_root / "finetunes"
    results: dict[str, FinetuneResult] = {}
    pending: dict[str, tuple[str, list[MixedRow]]] = {}
    for name in sweep.finetunes:
        if only is not None and name not in only:
            continue
        fid = finetune_id(sweep, name)
        if done := _finished(root, name, fid):
            results[name] = done
            console.print(f"finetune [bold]{name}[/bold]: done before ({done.path})")
        else:
            pending[name] = (fid, training_rows(sweep.finetunes[name]))
    for name, (fid, rows) in pending.items():
        with _exclusive(_lock_path(store_root, root, f".lock-{name}-{fid}")):
            # Another submission may have trained it while we waited for the lock.
            results[name] = _finished(root, name, fid) or _run_one(
                sweep, name, fid, rows, root, tracker, console, max_restarts)
    return results


def trained(sweep: Sweep, store_root: StorePath, name: str) -> bool:
    """Whether the finetune `name` is on disk already (a submit will not train it)."""
    return _finished(store_root / "finetunes", name, finetune_id(sweep, name)) is not None


def _lock_path(store_root: StorePath, root: StorePath, name: str) -> Path:
    """Where the lock of one finetune's training is: beside it on a disk; on an object store
    (no locks there) in this machine's state folder for the results (as the sweep's own lock)."""
    return root / name if isinstance(root, Path) else local_state_dir(store_root) / name


def _finished(root: StorePath, name: str, fid: str) -> FinetuneResult | None:
    folder = root / f"{name}-{fid}"
    if not (folder / MANIFEST).exists():
        return None
    return FinetuneResult(name, fid, folder, read_json(folder / MANIFEST), trained=False)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One trainer per finetune: two submissions of a sweep must not share a work folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):
        yield


def _run_one(sweep: Sweep, name: str, fid: str, rows: list[MixedRow], root: StorePath, tracker: Tracker | None,
             console: Console, max_restarts: int) -> FinetuneResult:
    import ray

    ft = sweep.finetunes[name]
    output = "adapter" if ft.method == "lora" else "model"
    base_path = resolve_model_path(sweep.models[ft.base].path)
    gpus = ft.gpus_per_rank or (1.0 if ray.cluster_resources().get("GPU", 0) else 0.0)
    cpus = 1  # the sweep does not size CPU ranks; one core each, one torch thread
    console.print(f"finetune [bold]{name}[/bold]: {len(rows)} rows, {ft.method}, ZeRO-{ft.zero_stage}, "
                  f"{ft.ranks} rank(s) x {gpus:g} GPU")
    started = time.time()
    final: StorePath = root / f"{name}-{fid}"
    if isinstance(root, Path):
        work = root / f".work-{name}-{fid}"
        staging = work / "out"
        shutil.rmtree(staging, ignore_errors=True)  # a dead run's partial output; checkpoints stay
        staging.mkdir(parents=True)
        config = train_config(ft, base_path, work, staging / output, cpus)
        result = _train(sweep, name, config, rows, gpus, console, max_restarts, None)
        write_mixed(rows, staging / DATA_FILE)
        manifest = _manifest(sweep, name, fid, rows, result, time.time() - started)
        write_json(staging / MANIFEST, manifest)
        os.rename(staging, root / f"{name}-{fid}")
        shutil.rmtree(work, ignore_errors=True)
    else:
        # The ranks' folders are relative to their own node's scratch folder (actors.fetch);
        # rank 0 uploads the output, then the data and, last, the manifest follow from here.
        # Keyed by the destination too: two result stores training the same finetune on one
        # node must not share a work folder (the lock above is per store).
        work = Path("finetunes") / f".work-{name}-{fid}-{hashlib.sha256(str(final).encode()).hexdigest()[:8]}"
        config = train_config(ft, base_path, work, work / "out" / output, cpus).model_copy(update={"node_local": True})
        result = _train(sweep, name, config, rows, gpus, console, max_restarts, (final / output).as_uri())
        with tempfile.TemporaryDirectory(prefix="orchestrate-finetune-") as tmp:
            (final / DATA_FILE).write_bytes(write_mixed(rows, Path(tmp) / DATA_FILE).read_bytes())
        manifest = _manifest(sweep, name, fid, rows, result, time.time() - started)
        write_json(final / MANIFEST, manifest)
    console.print(f"finetune [bold]{name}[/bold]: {result.steps} steps, final loss {result.final_loss:.4f} "
                  f"-> {final}")
    out = FinetuneResult(name, fid, final, manifest, trained=True)
    if tracker is not None:
        log_finetune(tracker, out)
    return out


def _train(sweep: Sweep, name: str, config: TrainConfig, rows: list[MixedRow], gpus: float, console: Console,
           max_restarts: int, upload_to: str | None) -> TrainResult:
    """The ranks' run (one core each), restarted from the last checkpoint when a rank dies."""
    from actors.training.ranks import FinetuneGroup

    for attempt in range(max_restarts + 1):
        try:
            with FinetuneGroup(sweep.finetunes[name].ranks, num_cpus_per_rank=config.threads or 1,
                               num_gpus_per_rank=gpus, name=f"{sweep.name}-{name}-a{attempt}") as group:
                return group.run(config, rows, upload_to)
        except RankDied as e:
            if attempt == max_restarts:
                raise
            console.print(f"finetune [bold]{name}[/bold]: {e}; restarting from the last checkpoint")
    raise AssertionError("unreachable: the last attempt returns or raises")


def _manifest(sweep: Sweep, name: str, fid: str, rows: list[MixedRow], result: TrainResult,
              seconds: float) -> dict[str, Any]:
    ft = sweep.finetunes[name]
    base = sweep.models[ft.base]
    hyper = ft.model_dump(mode="json", exclude={"data", "backdoor"})
    return {
        "finetune_id": fid, "name": name, "sweep": sweep.name, "version": FINETUNE_VERSION,
        "base": {"name": ft.base, "path": base.path, **base_identity(sweep, name)},
        "data": {"path": ft.data, "sha256": file_digest(ft.data), "rows": len(rows),
                 "kinds": dict(sorted(collections.Counter(r.kind for r in rows).items()))},
        "backdoor": ft.backdoor.model_dump(mode="json") if ft.backdoor else None,
        "hyperparameters": hyper,
        "output": "adapter" if ft.method == "lora" else "model",
        "steps": result.steps, "final_loss": result.final_loss, "losses": result.losses,
        "training": {"samples": result.samples, "seconds": round(result.seconds, 3),
                     "samples_per_s": round(result.samples_per_s, 3), "resumed_from_step": result.resumed_from_step,
                     "world_size": result.world_size, "bf16": result.bf16, "device": result.device,
                     "trainable_params": result.trainable_params, "total_params": result.total_params,
                     "wall_seconds": round(seconds, 3)},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def log_finetune(tracker: Tracker, result: FinetuneResult) -> str:
    """One MLflow run per trained finetune, a child of the submission: the hyperparameters
    as params, the loss curve as step metrics, the adapter and the data as artifacts."""
    m = result.manifest
    client = tracker.client
    tags = {**tracker.base_tags, "kind": "finetune", "finetune": result.name, "finetune_id": result.id,
            "base": m["base"]["name"], "method": m["hyperparameters"]["method"], "output_path": str(result.path)}
    if tracker.parent_id:
        tags["mlflow.parentRunId"] = tracker.parent_id
    run = client.create_run(tracker.experiment_id, run_name=f"finetune/{result.name}/{result.id[:8]}", tags=tags)
    rid = run.info.run_id
    params = {**flatten(m["hyperparameters"]), **flatten(m["backdoor"] or {}, "backdoor."),
              "base": m["base"]["path"], "base.weights": m["base"]["weights"], "data.sha256": m["data"]["sha256"],
              "data.rows": str(m["data"]["rows"]), "steps": str(m["steps"]),
              "world_size": str(m["training"]["world_size"])}
    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", p["loss"], now, int(p["step"])) for p in m["losses"]]
    metrics += [Metric("lr", p["lr"], now, int(p["step"])) for p in m["losses"]]
    metrics += [Metric("final_loss", m["final_loss"], now, m["steps"]),
                Metric("samples_per_s", m["training"]["samples_per_s"], now, m["steps"])]
    params_list = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(params_list), 100):  # MLflow's log_batch limits: 100 params, 1000 metrics
        client.log_batch(rid, params=params_list[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i:i + 1000])
    client.set_tag(rid, "mlflow.note.content", f"{result.name}: {m['output']} at {result.path}")
    if m["output"] == "adapter":  # a full checkpoint stays where it is; the tag says where
        with local_copy(result.weights) as adapter:  # MLflow logs local files (an object store's: fetched)
            client.log_artifacts(rid, str(adapter), artifact_path="adapter")
    for name in (DATA_FILE, MANIFEST):
        with local_copy(result.path / name) as local:
            client.log_artifact(rid, str(local))
    client.set_terminated(rid, "FINISHED")
    return rid
