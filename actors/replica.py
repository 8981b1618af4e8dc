"""ModelReplica: a Ray actor that hosts one engine and serves requests to it.

An async actor: many requests are in flight at once and the engine batches them. Named
`<sweep>/<model>/<index>` so the Ray dashboard shows which model each process holds.

The pool sends requests in batches (`generate_many`): one Ray call per batch instead of one per
request, which is most of what a request through Ray used to cost. Results still come back as
each request finishes (a streaming generator), so a slow request does not hold up the others
and the engine's continuous batching is not turned into static batches.
"""
from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import cloudpickle

from actors.engines.factory import build_engine
from actors.engines.protocol import Completion, Engine, Request
from actors.errors import EngineError, RequestError, TransientError
from actors.fetch import fetched

# What generate_many streams: (index of the request in the batch, its completions or its error).
Outcome = tuple[int, list[Completion] | BaseException]


def skip_unused_imports() -> None:
    """transformers imports scikit-learn whenever it is installed (mlflow installs it), for
    an assisted-generation heuristic no engine here uses: 1-1.5 s of a replica's start on a
    2-core machine (`python -X importtime`). A replica's process serves one engine, so it
    hides the package from the import system before transformers looks for it."""
    if "transformers" not in sys.modules:
        sys.modules.setdefault("sklearn", None)  # type: ignore[arg-type]  # None: "not importable"


@ray.remote(max_restarts=0)
class ModelReplica:
    def __init__(self, model: str, spec: dict[str, Any], adapters: dict[str, str] | None = None) -> None:
        started = time.perf_counter()
        skip_unused_imports()
        self.model = model
        self.engine: Engine = build_engine(spec, adapters=adapters)
        self.load_seconds = time.perf_counter() - started
        self.served = 0
        self.cancelled = 0  # requests stopped because their callers left
        self._batches: dict[int, list[asyncio.Task]] = {}  # generate_many calls in progress

    async def ready(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"model": self.model, "pid": os.getpid(), "node": ctx.get_node_id(),
                "gpus": [str(g) for g in ray.get_gpu_ids()], "load_seconds": self.load_seconds,
                "threads": torch.get_num_threads() if (torch := sys.modules.get("torch")) else None}

    async def generate(self, request: Request) -> list[Completion]:
        """One request, one call: for callers outside the pool (benchmarks, scripts)."""
        out = await self.engine.generate(request)
        self.served += 1
        return out

    @ray.method(num_returns="streaming")
    async def generate_many(self, requests: list[Request], batch_id: int) -> AsyncIterator[list[Outcome]]:
        """All `requests` go to the engine at once (it batches them with everything else in
        flight). Yields lists of (index, completions or error): everything that finished
        since the previous yield, so the completions of one engine step cost one streamed
        object, not one each. A request's own failure is its outcome, never the batch's.
        batch_id: the caller's name for this batch, for `cancel`."""
        finished: list[Outcome] = []
        wake = asyncio.Event()

        def settle(index: int, task: asyncio.Task) -> None:
            if task.cancelled():
                # Only a caller that left is cancelled on purpose (it no longer reads this).
                outcome: list[Completion] | BaseException = TransientError("the request was cancelled in the replica")
            elif (error := task.exception()) is not None:
                outcome = _portable(error)
            else:
                outcome = task.result()
                self.served += 1
            finished.append((index, outcome))
            wake.set()

        tasks = []
        for index, request in enumerate(requests):
            task = asyncio.ensure_future(self.engine.generate(request))
            task.add_done_callback(functools.partial(settle, index))
            tasks.append(task)
        self._batches[batch_id] = tasks
        remaining = len(tasks)
        try:
            while remaining:
                await wake.wait()
                wake.clear()
                group = finished[:]
                finished.clear()
                remaining -= len(group)
                yield group
        finally:  # the call was cancelled or the stream dropped: stop the engine work too
            del self._batches[batch_id]
            for task in tasks:
                if not task.done():
                    task.cancel()

    async def cancel(self, requests: list[tuple[int, int]]) -> int:
        """Stop the engine work of these (batch_id, index) requests, whose callers left (the
        engine frees their rows or KV cache). Returns how many were still running."""
        stopped = 0
        for batch_id, index in requests:
            tasks = self._batches.get(batch_id)
            if tasks is not None and not tasks[index].done():
                tasks[index].cancel()
                stopped += 1
        self.cancelled += stopped
        return stopped

    async def add_adapter(self, name: str, path: str) -> None:
        # A URI (a finetune's adapter on an object store) is fetched into this node's cache
        # first, off the event loop: requests to the loaded adapters go on meanwhile.
        self.engine.add_adapter(name, await asyncio.to_thread(fetched, path))

    async def close(self) -> None:
        """Close the engine (frees its accelerator memory); later requests fail with
        ReplicaUnavailable, and a pool replaces a replica that answers so."""
        self.engine.close()

    async def stats(self) -> dict[str, Any]:
        return {"served": self.served, "cancelled": self.cancelled, **dict(self.engine.stats)}


def _portable(error: BaseException) -> BaseException:
    """The error itself when it survives pickling (so a RequestError stays a RequestError for
    the job that catches it); otherwise one that carries its text and keeps what the scheduler
    does with it: the same branch of the engine tree, or a RequestError (an error row, as
    any other exception of one request would be)."""
    try:
        cloudpickle.loads(cloudpickle.dumps(error))
        return error
    except Exception:
        family = next((kind for kind in type(error).__mro__
                       if issubclass(kind, EngineError) and kind.__module__ == EngineError.__module__), RequestError)
        return family(f"{type(error).__name__}: {error}")
