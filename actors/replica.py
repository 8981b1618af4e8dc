"""ModelReplica: a Ray actor that hosts one engine and serves requests to it.

An async actor: many requests are in flight at once and the engine batches them. Named
`<sweep>/<model>/<index>` so the Ray dashboard shows which model each process holds.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import ray

from actors.engines.factory import build_engine
from actors.engines.protocol import Completion, Request


@ray.remote(max_restarts=0)
class ModelReplica:
    def __init__(self, model: str, spec: dict[str, Any], adapters: dict[str, str] | None = None) -> None:
        started = time.perf_counter()
        self.model = model
        self.engine = build_engine(spec, adapters=adapters)
        self.load_seconds = time.perf_counter() - started
        self.served = 0

    async def ready(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"model": self.model, "pid": os.getpid(), "node": ctx.get_node_id(),
                "gpus": [str(g) for g in ray.get_gpu_ids()], "load_seconds": self.load_seconds}

    async def generate(self, request: Request) -> list[Completion]:
        out = await self.engine.generate(request)
        self.served += 1
        return out

    async def add_adapter(self, name: str, path: str) -> None:
        self.engine.add_adapter(name, path)

    async def stats(self) -> dict[str, Any]:
        stats = getattr(self.engine, "stats", {})
        if dataclasses.is_dataclass(stats):
            stats = dataclasses.asdict(stats)
        return {"served": self.served, **dict(stats)}
