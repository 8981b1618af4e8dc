"""Run a plan on Ray: start replica pools, feed shards to shard runners, retry, resume.

The shard runners are asyncio tasks on the driver: each runs a job's per-sample program for
many samples at once, and every model call goes through a pool handle to a replica actor, so
the replicas' engines see enough concurrent requests to batch. A shard's rows are written only
when every sample of it is done; a replica that dies mid-shard makes the whole shard run again.
"""
from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from actors.errors import EngineError, RequestError, TransientError
from jobs.job import Job, JobContext
from jobs.organisms.build import resolve_model_path
from jobs.registry import get_job
from orchestrator import usage
from orchestrator.errors import ClusterError
from orchestrator.plan import Cell, Plan, Shard
from orchestrator.progress import SweepProgress
from orchestrator.spec import ModelSpec, Sweep
from orchestrator.store import SweepStore, row_schema, write_json, write_parquet
from orchestrator.tracking import Tracker


@dataclass
class SubmitReport:
    sweep: str
    store_root: Path
    tracking_uri: str
    cells: int
    shards_total: int
    shards_skipped: int
    shards_run: int = 0
    shards_failed: list[str] = field(default_factory=list)
    cells_unfinished: list[str] = field(default_factory=list)  # all rows on disk, summary or MLflow failed
    retries: int = 0
    replica_restarts: int = 0
    generate_calls: int = 0
    replicas_started: int = 0
    rows_written: int = 0
    cells_logged: int = 0
    finetunes_trained: int = 0
    dashboard_url: str | None = None
    seconds: float = 0.0
    startup_seconds: float = 0.0  # submit start -> Ray up, finetunes done and every replica loaded
    shards_seconds: float = 0.0  # end of startup -> the last shard written (the requests themselves)

    @property
    def ok(self) -> bool:
        return not self.shards_failed and not self.cells_unfinished


def serving_spec(m: ModelSpec) -> dict[str, Any]:
    """A model entry as a replica builds it: JSON, with an organism's name turned into its
    built folder (built or copied from the bundle here, on the driver, before any replica
    starts), in `path` and in a `tokenizer_path` option alike."""
    spec = m.model_dump(mode="json")
    spec["path"] = resolve_model_path(spec["path"])
    if m.chat_template is not None:  # its text: a replica on another node has no such file
        spec["chat_template"] = Path(m.chat_template).read_text(encoding="utf-8")
    tokenizer = spec["engine_options"].get("tokenizer_path")
    if isinstance(tokenizer, str):
        spec["engine_options"] = {**spec["engine_options"], "tokenizer_path": resolve_model_path(tokenizer)}
    return spec


def _pool_resources(spec: dict[str, Any], cluster_gpus: float) -> tuple[float, float]:
    num_gpus = spec.get("num_gpus")
    if num_gpus is None:  # an engine that can use GPUs takes one per tensor-parallel rank
        num_gpus = float(spec.get("tensor_parallel", 1)) if cluster_gpus and spec["engine"] in ("hf", "vllm") else 0.0
    return float(spec.get("num_cpus", 1)), float(num_gpus)


class Scheduler:
    def __init__(self, sweep: Sweep, plan: Plan, store: SweepStore, tracker: Tracker | None,
                 console: Console, report: SubmitReport, max_retries: int = 2, fixed_cluster: bool = True) -> None:
        self.sweep, self.plan, self.store, self.tracker = sweep, plan, store, tracker
        self.fixed_cluster = fixed_cluster  # the embedded Ray: it never grows
        self.console, self.report, self.max_retries = console, report, max_retries
        self.pools: dict[str, Any] = {}
        self.handles: dict[str, Any] = {}
        self.started = time.perf_counter()

    async def start_pools(self, models: set[str]) -> None:
        """One pool per base model; adapters (declared or finetuned with LoRA) ride on their
        base's replicas, so N finetuned variants of one base cost one base load."""
        import ray

        from actors.pool import ReplicaPool

        finetuned = await self.run_finetunes({m for m in models if m in self.sweep.finetunes})
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        pools: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}  # pool name -> (model spec, adapters)
        served: dict[str, tuple[str, str | None]] = {}  # model name -> (pool name, adapter)
        for name in sorted(models):
            if name in finetuned:
                result, base = finetuned[name], self.sweep.finetunes[name].base
                if result.method == "lora":
                    spec = serving_spec(self.sweep.models[base])
                    pools.setdefault(base, (spec, {}))[1][name] = str(result.weights)
                    served[name] = (base, name)
                else:  # a full finetune is a model of its own
                    spec = {**serving_spec(self.sweep.models[base]), "path": str(result.weights)}
                    pools[name] = (spec, {})
                    served[name] = (name, None)
                continue
            m = self.sweep.models[name]
            if m.adapter and m.base:  # an adapter entry names its base (checked by the spec)
                pools.setdefault(m.base, (serving_spec(self.sweep.models[m.base]), {}))[1][name] = m.adapter
                served[name] = (m.base, name)
            else:
                pools.setdefault(name, (serving_spec(m), {}))
                served[name] = (name, None)
        self.check_resources({name: spec for name, (spec, _) in pools.items()}, cluster_gpus)
        for pool_name, (spec, adapters) in pools.items():
            cpus, gpus = _pool_resources(spec, cluster_gpus)
            self.pools[pool_name] = ReplicaPool(pool_name, spec, replicas=spec["replicas"], name_prefix=self.sweep.name,
                                                num_cpus=cpus, num_gpus=gpus, adapters=adapters)
        infos = await asyncio.gather(*(p.start() for p in self.pools.values()))
        self.report.replicas_started = sum(len(i) for i in infos)
        for name, (pool_name, adapter) in served.items():
            self.handles[name] = self.pools[pool_name].handle(name, adapter=adapter)

    def check_resources(self, specs: dict[str, dict[str, Any]], cluster_gpus: float) -> None:
        """All replicas run at once: on a cluster that cannot hold them, the last ones would
        wait for resources forever and the sweep would hang without a word. A fixed cluster
        (the embedded one) is an error; a joined one may autoscale, so only a warning."""
        import ray

        need = {"CPU": 0.0, "GPU": 0.0}
        for spec in specs.values():
            cpus, gpus = _pool_resources(spec, cluster_gpus)
            need["CPU"] += cpus * spec["replicas"]
            need["GPU"] += gpus * spec["replicas"]
        have = ray.cluster_resources()
        short = [f"{need[r]:g} {r}s (the cluster has {have.get(r, 0):g})"
                 for r in need if need[r] > have.get(r, 0) + 1e-9]
        if not short:
            return
        each = ", ".join(f"{n}: {s['replicas']} x {_pool_resources(s, cluster_gpus)[0]:g} CPU"
                         for n, s in specs.items())
        message = (f"the sweep's replicas need {' and '.join(short)} at once ({each}). Lower `num_cpus` "
                   f"(fractions are fine for small models) or `replicas` per model, or give the cluster more "
                   f"(`cluster.num_cpus` for the embedded one)")
        if self.fixed_cluster:
            raise ClusterError(message)
        self.console.print(f"[yellow]warning: {message}; waiting for the cluster to grow")

    async def run_finetunes(self, names: set[str]) -> dict[str, Any]:
        """The sweep's DAG: finetunes first, then the cells that evaluate them. Finished
        finetunes (same content id on disk) are not rerun."""
        if not names:
            return {}
        from orchestrator.finetunes import run_finetunes

        results = await asyncio.to_thread(run_finetunes, self.sweep, self.store.root, self.tracker, self.console,
                                          only=names)
        self.report.finetunes_trained = sum(r.trained for r in results.values())
        return results

    async def run_shard(self, cell: Cell, shard: Shard, job: Job, samples: dict, progress: SweepProgress) -> int:
        spec = self.sweep.jobs[cell.job_index]
        gate = asyncio.Semaphore(spec.concurrency)
        ids = {"sweep": self.sweep.name, "cell_id": cell.id, "shard_id": shard.id, "model": cell.model}

        async def one(sample_id: str) -> list[dict]:
            async with gate:
                try:
                    rows = await job.run(samples[sample_id], cell.params, ctx)
                    rows = [{**ids, "sample_id": sample_id, "error": None, **r} for r in rows]
                except Exception as e:  # this sample's failure is a row, not a dead sweep...
                    if isinstance(e, EngineError) and not isinstance(e, RequestError):
                        raise  # ...unless the serving side failed: retry the shard, or fail it
                    detail = "".join(traceback.format_exception_only(type(e), e)).strip()
                    rows = [{**ids, "sample_id": sample_id, "error": detail}]
                progress.sample_done()
                return rows

        for attempt in range(self.max_retries + 1):
            handles, used = usage.counted({role: self.handles[m] for role, m in cell.roles.items()})
            ctx = JobContext(handles, declared=job.roles, subject_plays=job.subject_plays)
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(one(sid)) for sid in shard.sample_ids]
                rows = [r for t in tasks for r in t.result()]
                break
            except* TransientError as group:
                done = sum(1 for t in tasks if t.done() and not t.cancelled() and t.exception() is None)
                progress.shard_retried(done)
                if attempt == self.max_retries:
                    raise group.exceptions[0] from None
                self.report.retries += 1
                self.console.log(f"[yellow]shard {shard.id} of {cell.kind}/{cell.model}: {group.exceptions[0]}; "
                                 "retrying")
                await asyncio.gather(*(p.wait_healthy() for p in self.pools.values()))
            except* EngineError as group:  # misconfigured (a wrong key): no row of this shard is kept
                raise group.exceptions[0] from None
        schema = row_schema(job.schema)
        await asyncio.to_thread(self.store.write_shard, cell.kind, cell.id, shard.id, rows, schema,
                                usage.encode(used))
        progress.shard_done()
        return len(rows)

    async def run_cell(self, cell: Cell, pending: list[Shard], progress: SweepProgress,
                       shard_gate: asyncio.Semaphore) -> None:
        job = get_job(cell.kind)
        samples = {s.id: s for s in job.samples(cell.params)}

        async def guarded(shard: Shard) -> None:
            async with shard_gate:
                try:
                    # Await first: `x += await f()` reads x before the await and loses
                    # the updates of shards that finish meanwhile.
                    written = await self.run_shard(cell, shard, job, samples, progress)
                    self.report.rows_written += written
                    self.report.shards_run += 1
                except Exception as e:
                    self.report.shards_failed.append(shard.id)
                    self.console.log(f"[red]shard {shard.id} of {cell.kind}/{cell.model} failed: {e}")
                finally:
                    self.report.shards_seconds = time.perf_counter() - self.started - self.report.startup_seconds

        await asyncio.gather(*(guarded(s) for s in pending))
        if all(self.store.has_shard(cell.kind, cell.id, s.id) for s in cell.shards):
            await asyncio.to_thread(finish_cell_or_say_why, self.store, self.tracker, cell, self.report, self.console)

    async def run(self, pending: dict[str, list[Shard]], progress: SweepProgress) -> None:
        cells = [c for c in self.plan.cells if pending.get(c.id)]
        try:
            await self.start_pools(self.plan.models_needed(cells))
            self.report.startup_seconds = time.perf_counter() - self.started
            replicas = sum(p.n for p in self.pools.values())
            shard_gate = asyncio.Semaphore(max(2, 2 * replicas))
            await asyncio.gather(*(self.run_cell(c, pending[c.id], progress, shard_gate) for c in cells))
        finally:
            self.report.generate_calls = sum(p.calls for p in self.pools.values())
            self.report.replica_restarts = sum(p.restarts for p in self.pools.values())
            for p in self.pools.values():
                p.shutdown()


def finish_cell(store: SweepStore, tracker: Tracker | None, cell: Cell, report: SubmitReport,
                earlier_rows: bool = False) -> None:
    """Summarise a complete cell and log it to MLflow, once. `earlier_rows`: every row was on
    disk before this submission, so a finished run of the cell may already be in MLflow (a
    crash between logging it and writing mlflow.json): that run is adopted, not repeated."""
    job = get_job(cell.kind)
    rows = store.read_cell(cell.kind, cell.id)
    summary = {k: float(v) for k, v in job.summarize(rows, cell.params).items()}
    summary["rows"] = float(rows.height)
    summary["error_rows"] = float(rows["error"].is_not_null().sum())
    summary.update(usage.summary(store.shard_metadata(cell.kind, cell.id)))
    cell_dir = store.cell_dir(cell.kind, cell.id)
    table = job.report(rows, cell.params)
    files: tuple[Path, ...] = ()
    if table is not None:
        write_parquet(cell_dir / "report.parquet", table)
        files = (cell_dir / "report.parquet",)
    write_json(cell_dir / "summary.json", summary)
    if tracker is not None:
        run_id = tracker.finished_cell_run(cell.id) if earlier_rows else None
        if run_id is None:
            run_id = tracker.log_cell(cell.manifest(), summary, cell_dir / "shards", files)
            report.cells_logged += 1
        write_json(cell_dir / "mlflow.json", {"run_id": run_id, "tracking_uri": tracker.uri})


def finish_cell_or_say_why(store: SweepStore, tracker: Tracker | None, cell: Cell, report: SubmitReport,
                           console: Console, earlier_rows: bool = False) -> None:
    """finish_cell, but a failure (a job's summary that raises, MLflow down) is reported and
    noted, not fatal to the other cells: the rows are safe on disk and the next submit
    summarises the cell again."""
    try:
        finish_cell(store, tracker, cell, report, earlier_rows)
    except Exception as e:
        report.cells_unfinished.append(cell.id)
        console.log(f"[red]cell {cell.id} of {cell.kind}/{cell.model}: summary or logging failed: "
                    f"{type(e).__name__}: {e}")
