"""Run a job in-process against engines, without Ray: for tests, notebooks and GPU checks."""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from actors.engines.protocol import Completion, Engine, Request
from jobs.job import Job, JobContext, JobParams, Sample


class EngineHandle:
    """A model handle that calls an engine object directly."""

    def __init__(self, name: str, engine: Engine) -> None:
        self.name = name
        self.engine = engine

    async def generate(self, request: Request) -> list[Completion]:
        return await self.engine.generate(request)


def local_context(engines: Mapping[str, Engine], seed: int = 0) -> JobContext:
    return JobContext({role: EngineHandle(role, e) for role, e in engines.items()}, seed=seed)


async def run_job(job: Job[Any], params: JobParams, ctx: JobContext, concurrency: int = 64) -> list[dict[str, Any]]:
    """All samples of a job, both stored stages, `concurrency` samples at a time, rows in
    sample order (as stored: `derive` adds the summary stage's columns). The context is bound
    to the job: a role it does not declare is an error (jobs.errors.UnknownRole), and the
    judging stage sees its judging roles only."""
    gate = asyncio.Semaphore(concurrency)
    ctx = ctx.bound(job)
    judging = ctx.only(job.judging_roles)

    async def one(sample: Sample) -> list[dict[str, Any]]:
        async with gate:
            rows = await job.run(sample, params, ctx)
            if job.has_judging():
                rows = await job.judge(sample, rows, params, judging)
            return [{"sample_id": sample.id, **row} for row in rows]

    results = await asyncio.gather(*(one(s) for s in job.samples(params)))
    return [row for rows in results for row in rows]
