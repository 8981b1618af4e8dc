"""Run a plan on Ray: start replica pools, feed shards to shard runners, retry, resume.

The shard runners are asyncio tasks on the driver: each runs a job's per-sample program for
many samples at once, and every model call goes through a pool handle to a replica actor, so
the replicas' engines see enough concurrent requests to batch. A shard's rows are written only
when every sample of it is done; a replica that dies mid-shard makes the whole shard run again.

What the driver holds is bounded by the shards in flight, not by the sweep: a cell's shards
become tasks only as the shard gate lets them in, and a shard's samples are built when it
runs (`ShardSamples`), so a sweep of a million samples holds no million of anything but
their ids.
"""
from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from rich.console import Console

from actors.errors import EngineError, RequestError, TransientError
from jobs.job import Job, JobContext, Sample
from jobs.registry import get_job
from jobs.stages import Stage
from orchestrator import usage
from orchestrator.errors import ClusterError
from orchestrator.plan import Cell, Plan, Shard, ShardSamples
from orchestrator.progress import SweepProgress
from orchestrator.report import SubmitReport
from orchestrator.serving import pool_layout, pool_resources, pool_specs, shards_in_flight, share_cores, warm_key
from orchestrator.spec import Sweep
from orchestrator.store import DiskFull, SweepStore, row_schema
from orchestrator.summaries import TrackerSource, finish_cell_or_say_why


class Scheduler:
    def __init__(self, sweep: Sweep, plan: Plan, store: SweepStore, tracker: TrackerSource,
                 console: Console, report: SubmitReport, max_retries: int = 2, fixed_cluster: bool = True) -> None:
        self.sweep, self.plan, self.store, self.tracker = sweep, plan, store, tracker
        self.fixed_cluster = fixed_cluster  # the embedded Ray: it never grows
        self.console, self.report, self.max_retries = console, report, max_retries
        self.pools: dict[str, Any] = {}
        self.handles: dict[str, Any] = {}
        self._samples_done: dict[tuple[str, str], int] = {}  # (shard, stage) -> samples of this attempt
        # (stage, id, shard) -> the shard's work while it runs (or the failure it ended in)
        self._stage_shards: dict[tuple[str, str, str], asyncio.Future[list[dict]]] = {}
        self._stop: DiskFull | None = None  # a full disk: no further shard is started
        self.started = time.perf_counter()

    async def start_pools(self, models: set[str]) -> None:
        """One pool per base model; adapters (declared or finetuned with LoRA) ride on their
        base's replicas, so N finetuned variants of one base cost one base load."""
        import ray

        from actors.pool import ReplicaPool
        from orchestrator.capacity import only_this_machine

        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        self.check_capacity(models, cluster_gpus)
        finetuned = await self.run_finetunes({m for m in models if m in self.sweep.finetunes})
        pools, served = pool_layout(self.sweep, models, finetuned)
        if not cluster_gpus and (self.fixed_cluster or only_this_machine()):
            share_cores(pools, ray.cluster_resources().get("CPU", 1))
        keep = self.sweep.cluster.keep_replicas and not self.fixed_cluster  # an embedded Ray ends with the driver
        for pool_name, (spec, adapters) in pools.items():
            cpus, gpus = pool_resources(spec, cluster_gpus)
            self.pools[pool_name] = ReplicaPool(pool_name, spec, replicas=spec["replicas"], name_prefix=self.sweep.name,
                                                num_cpus=cpus, num_gpus=gpus, adapters=adapters,
                                                warm_key=warm_key(spec, adapters, cpus, gpus) if keep else None)
        infos = await asyncio.gather(*(p.start() for p in self.pools.values()))
        self.report.replicas_started = sum(len(i) for i in infos)
        self.report.replicas_reused = sum(p.reused for p in self.pools.values())
        self.report.replica_threads = {name: i[0].get("threads") for name, i in zip(self.pools, infos) if i}
        self.report.models_started = sorted(self.pools)
        for name, (pool_name, adapter) in served.items():
            self.handles[name] = self.pools[pool_name].handle(name, adapter=adapter)

    def check_capacity(self, models: set[str], cluster_gpus: float) -> None:
        """Before anything starts: the finetunes still to train (one at a time, each with its
        ranks at once), then every replica at once, placed on the cluster's nodes
        (`orchestrator.capacity`). What cannot fit is named. A fixed cluster (the embedded
        one) or one without an autoscaler cannot grow: an error; an autoscaling one may add
        nodes this check cannot see: a warning."""
        from orchestrator.capacity import Need, autoscaling, cluster_nodes, describe, place
        from orchestrator.finetunes import trained

        nodes = cluster_nodes()
        problems = []
        for name in sorted(m for m in models if m in self.sweep.finetunes):
            ft = self.sweep.finetunes[name]
            if trained(self.sweep, self.store.root, name):
                continue
            gpus = ft.gpus_per_rank or (1.0 if cluster_gpus else 0.0)
            _, missing = place([Need(f"rank {r} of finetune `{name}`", 1.0, gpus) for r in range(ft.ranks)], nodes)
            problems += missing
        needs = []
        for pool, spec in pool_specs(self.sweep, models).items():
            cpus, gpus = pool_resources(spec, cluster_gpus)
            needs += [Need(f"replica {i + 1} of `{pool}`", cpus, gpus, int(spec.get("tensor_parallel", 1)))
                      for i in range(spec["replicas"])]
        _, missing = place(needs, nodes)
        problems += missing
        if not problems:
            return
        message = (f"the cluster cannot hold what the sweep needs at once: {'; '.join(problems)}. Its nodes: "
                   f"{describe(nodes)}. Lower `num_cpus` (fractions are fine for small models), `replicas`, "
                   f"`tensor_parallel` or a finetune's `ranks`, or give the cluster more (`cluster.num_cpus` "
                   f"for the embedded one)")
        if self.fixed_cluster or autoscaling() is False:
            raise ClusterError(message)
        self.console.print(f"[yellow]warning: {message}; waiting for the autoscaler to add nodes")

    async def run_finetunes(self, names: set[str]) -> dict[str, Any]:
        """The sweep's DAG: finetunes first, then the cells that evaluate them. Finished
        finetunes (same content id on disk) are not rerun."""
        if not names:
            return {}
        from orchestrator.finetunes import run_finetunes

        tracker = self.tracker() if callable(self.tracker) else self.tracker
        results = await asyncio.to_thread(run_finetunes, self.sweep, self.store.root, tracker, self.console,
                                          only=names)
        self.report.finetunes_trained = sum(r.trained for r in results.values())
        return results

    async def run_shard(self, cell: Cell, shard: Shard, job: Job, source: ShardSamples,
                        progress: SweepProgress) -> int:
        """Whatever of the shard's stages is not on disk: generation, then its judging (from
        the generation just made, or read back from disk: a judge swap never calls the
        subject). Its samples are built only if a stage runs. Returns the rows written."""
        loaded: dict[str, Sample] = {}

        async def samples() -> dict[str, Sample]:
            if not loaded:
                loaded.update(await asyncio.to_thread(source.of, shard))
            return loaded

        written = 0
        generated: list[dict] | None = None
        judged = job.has_judging()
        if not self.store.has_shard(cell.kind, "generate", cell.stages["generate"], shard.id):
            key = ("generate", cell.stages["generate"], shard.id)
            generated, ran = await self._once(cell.kind, key, lambda: self._attempts(
                cell, shard, "generate", lambda ctx: self._generate(cell, shard, job, samples, ctx, progress,
                                                                    count=not judged), progress))
            written += len(generated) if ran else 0
            if not ran and not judged:  # another cell's samples: count them done here too
                progress.sample_done(len(shard.sample_ids))
        judge_shard = cell.shard_id("judge", shard) if judged else ""
        if judged and not self.store.has_shard(cell.kind, "judge", cell.stages["judge"], judge_shard):
            rows = generated if generated is not None else await asyncio.to_thread(
                self.store.read_shard, cell.kind, "generate", cell.stages["generate"], shard.id)
            key = ("judge", cell.stages["judge"], judge_shard)
            judged_rows, ran = await self._once(cell.kind, key, lambda: self._attempts(
                cell, shard, "judge", lambda ctx: self._judge(cell, shard, job, samples, rows, ctx, progress),
                progress))
            written += len(judged_rows) if ran else 0
            if not ran:
                progress.sample_done(len(shard.sample_ids))
        progress.shard_done()
        return written

    async def _once(self, kind: str, key: tuple[str, str, str], work: Callable[[], Awaitable[list[dict]]]
                    ) -> tuple[list[dict], bool]:
        """(rows, whether this caller ran it) of one shard of a stage (`key`: stage, stage id,
        shard id), computed once however many cells read it (two judges of one generation,
        two thresholds of one judging). Once written, it is forgotten here (a sweep of a
        million samples would otherwise hold an entry per shard, and every row it made): a
        later reader finds the file."""
        stage, stage_id, shard_id = key
        if key in self._stage_shards:
            return await asyncio.shield(self._stage_shards[key]), False
        if self.store.has_shard(kind, stage, stage_id, shard_id):  # written since the caller looked
            return await asyncio.to_thread(self.store.read_shard, kind, stage, stage_id, shard_id), False
        future = asyncio.ensure_future(work())
        self._stage_shards[key] = future
        rows = await asyncio.shield(future)
        del self._stage_shards[key]  # written whole (a failure raised above and stays for the others)
        return rows, True

    async def _attempts(self, cell: Cell, shard: Shard, stage: Stage,
                        work: Callable[[JobContext], Awaitable[list[dict]]], progress: SweepProgress) -> list[dict]:
        """One stage of one shard, retried when a replica dies; written once, whole."""
        job = get_job(cell.kind)
        for attempt in range(self.max_retries + 1):
            handles, used = usage.counted({role: self.handles[m] for role, m in cell.roles_of(stage).items()})
            ctx = JobContext(handles, declared=job.roles, subject_plays=job.subject_plays)
            if stage == "judge":
                ctx = ctx.only(job.judging_roles)
            try:
                rows = await work(ctx)
                break
            except* TransientError as group:
                progress.shard_retried(self._samples_done.pop((shard.id, stage), 0))
                if attempt == self.max_retries:
                    raise group.exceptions[0] from None
                self.report.retries += 1
                self.console.log(f"[yellow]shard {shard.id} of {cell.kind}/{cell.model} ({stage}): "
                                 f"{group.exceptions[0]}; retrying")
                await asyncio.gather(*(p.wait_healthy() for p in self.pools.values()))
            except* EngineError as group:  # misconfigured (a wrong key): no row of this shard is kept
                raise group.exceptions[0] from None
        self._samples_done.pop((shard.id, stage), None)
        stage_id, shard_id = cell.stages[stage], cell.shard_id(stage, shard)
        rows = [{**r, "stage_id": stage_id, "shard_id": shard_id} for r in rows]
        await asyncio.to_thread(self.store.write_shard, cell.kind, stage, stage_id, shard_id, rows,
                                row_schema(job.schema), usage.encode(used))
        self.report.stage_shards_run[stage] = self.report.stage_shards_run.get(stage, 0) + 1
        return rows

    async def _generate(self, cell: Cell, shard: Shard, job: Job, samples: Callable[[], Awaitable[dict[str, Sample]]],
                        ctx: JobContext, progress: SweepProgress, count: bool) -> list[dict]:
        by_id = await samples()
        spec = self.sweep.jobs[cell.job_index]
        gate = asyncio.Semaphore(spec.concurrency)
        ids = {"sweep": self.sweep.name, "stage_id": cell.stages["generate"], "shard_id": shard.id, "model": cell.model}

        async def one(sample_id: str) -> list[dict]:
            async with gate:
                try:
                    rows = await job.run(by_id[sample_id], cell.params, ctx)
                    rows = [{**ids, "sample_id": sample_id, "error": None, **r} for r in rows]
                except Exception as e:  # this sample's failure is a row, not a dead sweep...
                    if isinstance(e, EngineError) and not isinstance(e, RequestError):
                        raise  # ...unless the serving side failed: retry the shard, or fail it
                    rows = [{**ids, "sample_id": sample_id, "error": _error_text(e)}]
                if count:
                    self._sample_done(shard, "generate", progress)
                return rows

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(sid)) for sid in shard.sample_ids]
        return [r for t in tasks for r in t.result()]

    async def _judge(self, cell: Cell, shard: Shard, job: Job, samples: Callable[[], Awaitable[dict[str, Sample]]],
                     generated: list[dict], ctx: JobContext, progress: SweepProgress) -> list[dict]:
        """The judging stage of one shard: each sample's generated rows, judged together; a
        sample whose generation failed keeps its error row, and one whose judging fails keeps
        its generated rows with the error."""
        by_id = await samples()
        spec = self.sweep.jobs[cell.job_index]
        gate = asyncio.Semaphore(spec.concurrency)
        by_sample: dict[str, list[dict]] = {}
        for row in generated:
            by_sample.setdefault(row["sample_id"], []).append(row)

        async def one(sample_id: str) -> list[dict]:
            rows = by_sample.get(sample_id, [])
            async with gate:
                if rows and all(r["error"] is None for r in rows):
                    try:
                        rows = await job.judge(by_id[sample_id], rows, cell.params, ctx)
                    except Exception as e:
                        if isinstance(e, EngineError) and not isinstance(e, RequestError):
                            raise
                        rows = [{**r, "error": f"judging: {_error_text(e)}"} for r in rows]
                self._sample_done(shard, "judge", progress)
                return rows

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(sid)) for sid in shard.sample_ids]
        return [r for t in tasks for r in t.result()]

    def _sample_done(self, shard: Shard, stage: Stage, progress: SweepProgress) -> None:
        key = (shard.id, stage)
        self._samples_done[key] = self._samples_done.get(key, 0) + 1
        progress.sample_done()

    async def run_cell(self, cell: Cell, pending: Sequence[Shard], progress: SweepProgress,
                       shard_gate: asyncio.Semaphore) -> None:
        """The cell's pending shards, each a task only once the shard gate lets it in (a cell
        of a million samples is tens of thousands of shards), then its summary."""
        job = get_job(cell.kind)
        source = ShardSamples(job, cell.params)

        async def guarded(shard: Shard) -> None:
            try:
                # Await first: `x += await f()` reads x before the await and loses
                # the updates of shards that finish meanwhile.
                written = await self.run_shard(cell, shard, job, source, progress)
                self.report.rows_written += written
                self.report.shards_run += 1
            except DiskFull as e:
                self.report.shards_failed.append(shard.id)
                self._stop = e  # every other shard would fail the same way: stop the sweep, say it once
            except Exception as e:
                self.report.shards_failed.append(shard.id)
                self.console.log(f"[red]shard {shard.id} of {cell.kind}/{cell.model} failed: {e}")
            finally:
                shard_gate.release()
                self.report.shards_seconds = time.perf_counter() - self.started - self.report.startup_seconds

        running: set[asyncio.Task[None]] = set()
        try:
            for shard in pending:
                await shard_gate.acquire()
                if self._stop is not None:
                    shard_gate.release()
                    break
                task = asyncio.create_task(guarded(shard))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)
        except BaseException:  # cancelled (Ctrl-C, SIGTERM): the shards in flight go with it
            for task in running:
                task.cancel()
            raise
        if self._stop is not None:
            raise self._stop
        if not self.store.missing(cell, cell.last_stage):
            await asyncio.to_thread(finish_cell_or_say_why, self.store, self.tracker, cell, self.report, self.console)

    async def run(self, pending: Mapping[str, Sequence[Shard]], progress: SweepProgress) -> None:
        cells = [c for c in self.plan.cells if pending.get(c.id)]
        try:
            await self.start_pools(models_needed(self.store, cells))
            self.report.startup_seconds = time.perf_counter() - self.started
            in_flight = max(min(c.shard_size, self.sweep.jobs[c.job_index].concurrency) for c in cells)
            layout = [(p.spec, p.n, p.num_gpus) for p in self.pools.values()]
            shard_gate = asyncio.Semaphore(shards_in_flight(layout, in_flight))
            # Every stage's shard size is on disk before its first shard (see store.settle_layout),
            # written here once rather than checked before each shard.
            for c in cells:
                await asyncio.to_thread(self.store.record_layout, c)
            try:
                async with asyncio.TaskGroup() as group:  # one cell failing cancels the others, cleanly
                    for c in cells:
                        group.create_task(self.run_cell(c, pending[c.id], progress, shard_gate))
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None
        finally:
            self.report.generate_calls = sum(p.calls for p in self.pools.values())
            self.report.calls_by_model = {name: p.calls for name, p in self.pools.items()}
            self.report.replica_restarts = sum(p.restarts for p in self.pools.values())
            for p in self.pools.values():
                p.shutdown()


def models_needed(store: SweepStore, cells: list[Cell]) -> set[str]:
    """The models the missing stages of `cells` call: a cell whose generation is on disk
    needs only its judging roles."""
    needed: set[str] = set()
    for cell in cells:
        for stage in cell.stages:
            if store.missing(cell, stage):
                needed |= set(cell.roles_of(stage).values())
    return needed


def _error_text(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()
