"""A pool of replicas of one model, and the handles jobs call through it.

Routing: a request with an affinity key (e.g. all counterfactuals of one trace) goes to the
same live replica by rendezvous hashing, so prefix caching pays; a request for an adapter
prefers replicas that already hold it; otherwise the least-loaded replica wins. A replica that
dies fails its in-flight requests with ReplicaUnavailable (the scheduler retries the shard) and
is replaced in the background, and so is one whose engine reports itself unavailable (an
engine that closed after an error): its actor is killed first, freeing its GPUs.

Coalescing: a Ray actor call costs about as much as a small model's request, so requests
routed to the same replica are not sent one call each. Each waits in its replica's queue
until the event loop has run what was ready when it arrived (the other samples of a shard
start, or wake on their results, in the same loop iteration), then the whole queue goes in
one `generate_many` call. A lone request waits one loop iteration, no timer. Results stream
back per request as the engine finishes them. A caller that stops waiting (cancelled, timed
out, or its shard failed elsewhere) is told to the replica, which stops decoding for it.

Placement: a vllm replica sharded over several GPUs gets a placement group of its own
(actors.placement), freed with the replica.

Warm replicas: given a `warm_key` (what the replica is: its spec, adapters, resources and
code), a pool's first replicas are detached actors named by that key in WARM_NAMESPACE. A
later driver with the same key finds them loaded instead of starting its own, and shutdown
leaves them running (`orchestrate replicas --stop` ends them). Replacements of dead replicas
and sharded replicas (their placement group would have to outlive the driver too) are never
warm: nothing detached is left behind that no key names.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from actors.engines.protocol import Completion, Request
from actors.errors import ReplicaUnavailable
from actors.placement import TensorParallelPlacement, replica_placement
from actors.replica import ModelReplica

AFFINITY_SLACK = 64  # extra in-flight requests we accept on a replica to keep an adapter warm
MAX_BATCH = 256  # requests per actor call: bounds one message's size; more go in the next call
MAX_WAIT_TICKS = 4  # loop iterations a queue may wait while it keeps growing (a burst still arriving)
START_TRIES = 3  # attempts to start a replacement replica before its slot is left empty
WARM_NAMESPACE = "orchestrate-warm"  # where kept replicas live, found by name from any sweep


@dataclass
class _Slot:
    index: int
    generation: int
    actor: Any
    inflight: int = 0
    adapters: set[str] = field(default_factory=set)
    alive: bool = True
    queue: list[tuple[Request, asyncio.Future]] = field(default_factory=list)  # picked, not sent yet
    flush_pending: bool = False  # a flush of `queue` is scheduled on the loop
    placement: TensorParallelPlacement | None = None
    warm: bool = False  # detached and named by the pool's warm key: outlives this driver
    left: list[tuple[int, int]] = field(default_factory=list)  # (batch, index) whose callers left


class ReplicaPool:
    def __init__(self, model: str, spec: dict[str, Any], *, replicas: int, name_prefix: str,
                 num_cpus: float, num_gpus: float, adapters: dict[str, str] | None = None,
                 ready_timeout_s: float = 1800.0, warm_key: str | None = None) -> None:
        self.model, self.spec, self.n = model, spec, replicas
        self.warm_key = warm_key
        self.reused = 0  # warm replicas found already running
        self.name_prefix, self.num_cpus, self.num_gpus = name_prefix, num_cpus, num_gpus
        self.adapter_paths = dict(adapters or {})
        self.ready_timeout_s = ready_timeout_s
        self.slots: list[_Slot] = []
        self.restarts = 0
        self.calls = 0  # requests served (the submit report's generate_calls)
        self.actor_calls = 0  # generate_many calls: calls / actor_calls is the coalescing factor
        self.start_error: str | None = None  # why the last replacement that failed to start failed
        self._replacing: dict[int, asyncio.Task] = {}
        self._batch_ids = itertools.count()
        self._sending: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    async def _spawn(self, index: int, generation: int) -> _Slot:
        suffix = f".r{generation}" if generation else ""
        name = f"{self.name_prefix}/{self.model}/{index}{suffix}"
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        spec = self.spec
        placement = await asyncio.to_thread(replica_placement, spec, num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                            name=name, timeout_s=self.ready_timeout_s)
        if placement is not None:
            options = placement.actor_options()
            # The placement decides how vLLM starts its ranks (local processes or Ray workers).
            spec = {**spec, "engine_options": {**(spec.get("engine_options") or {}), **placement.engine_options()}}
        warm = self.warm_key is not None and generation == 0 and placement is None
        if warm:
            name = f"{self.model}/{self.warm_key}/{index}"
            options.update(namespace=WARM_NAMESPACE, lifetime="detached", get_if_exists=True)
            self.reused += await asyncio.to_thread(_running, name)
        actor = cast(Any, ModelReplica).options(name=name, max_concurrency=1000, **options).remote(  # Ray's API
            self.model, spec, self.adapter_paths)
        # Adapters are loaded at start (vLLM sizes its LoRA slots then), so every replica
        # already holds every adapter of this pool.
        return _Slot(index=index, generation=generation, actor=actor, adapters=set(self.adapter_paths),
                     placement=placement, warm=warm)

    async def start(self) -> list[dict[str, Any]]:
        spawned = await asyncio.gather(*(self._spawn(i, 0) for i in range(self.n)), return_exceptions=True)
        self.slots = [s for s in spawned if isinstance(s, _Slot)]  # shutdown() releases these
        for outcome in spawned:
            if isinstance(outcome, BaseException):
                raise outcome
        ready = asyncio.gather(*(s.actor.ready.remote() for s in self.slots))
        return await asyncio.wait_for(ready, self.ready_timeout_s)

    def _pick(self, request: Request) -> _Slot:
        live = [s for s in self.slots if s.alive]
        if not live:
            why = f"; the last replacement failed to start: {self.start_error}" if self.start_error else ""
            raise ReplicaUnavailable(f"no live replica of {self.model}{why}")
        if request.affinity is not None:
            return max(live, key=lambda s: hashlib.sha256(f"{request.affinity}/{s.index}".encode()).digest())
        least = min(live, key=lambda s: s.inflight)
        if request.adapter:
            warm = [s for s in live if request.adapter in s.adapters and s.inflight <= least.inflight + AFFINITY_SLACK]
            if warm:
                return min(warm, key=lambda s: s.inflight)
        return least

    async def generate(self, request: Request) -> list[Completion]:
        slot = self._pick(request)
        slot.inflight += 1
        self.calls += 1
        try:
            if request.adapter and request.adapter not in slot.adapters:
                await slot.actor.add_adapter.remote(request.adapter, self.adapter_paths[request.adapter])
                slot.adapters.add(request.adapter)
            future = asyncio.get_running_loop().create_future()
            self._enqueue(slot, request, future)
            return await future
        except (RayActorError, ActorUnavailableError) as e:  # from add_adapter; batches fail in _send
            self._replace(slot)
            raise ReplicaUnavailable(f"replica {self.model}/{slot.index} died: {type(e).__name__}") from None
        finally:
            slot.inflight -= 1

    # ---- coalescing -------------------------------------------------------------------------

    def _enqueue(self, slot: _Slot, request: Request, future: asyncio.Future) -> None:
        slot.queue.append((request, future))
        if len(slot.queue) >= MAX_BATCH:
            self._flush(slot)
        elif not slot.flush_pending:
            slot.flush_pending = True
            # call_soon runs after every callback already ready in this iteration: the other
            # tasks woken with this one get to enqueue first.
            asyncio.get_running_loop().call_soon(self._flush_when_quiet, slot, len(slot.queue), 0)

    def _flush_when_quiet(self, slot: _Slot, seen: int, ticks: int) -> None:
        """Send the queue once an iteration passes without it growing (or after
        MAX_WAIT_TICKS iterations): a burst arriving over a few iterations (tasks woken by
        a task woken by a result) goes in one call; a lone request waits one iteration."""
        if len(slot.queue) > seen and ticks < MAX_WAIT_TICKS:
            asyncio.get_running_loop().call_soon(self._flush_when_quiet, slot, len(slot.queue), ticks + 1)
            return
        slot.flush_pending = False
        self._flush(slot)

    def _flush(self, slot: _Slot) -> None:
        batch = [(r, f) for r, f in slot.queue if not f.done()]  # a cancelled caller needs no call
        slot.queue = []
        if not batch:
            return
        if not slot.alive:  # it died after these were routed to it
            for _, future in batch:
                future.set_exception(ReplicaUnavailable(f"replica {self.model}/{slot.index} died"))
            return
        self.actor_calls += 1
        batch_id = next(self._batch_ids)
        for index, (_, future) in enumerate(batch):
            future.add_done_callback(functools.partial(self._caller_left, slot, batch_id, index))
        self._background(self._send(slot, batch_id, batch))

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _caller_left(self, slot: _Slot, batch_id: int, index: int, future: asyncio.Future) -> None:
        """A sent request whose caller stopped waiting: tell its replica, with the others that
        leave in the same loop iteration (a failed shard cancels all its requests at once)."""
        if not future.cancelled() or not slot.alive:
            return
        slot.left.append((batch_id, index))
        if len(slot.left) == 1:
            asyncio.get_running_loop().call_soon(self._tell_left, slot)

    def _tell_left(self, slot: _Slot) -> None:
        left, slot.left = slot.left, []

        async def tell() -> None:
            try:
                await slot.actor.cancel.remote(left)
            except Exception:  # the replica died meanwhile: nothing left to stop
                pass

        self._background(tell())

    async def _send(self, slot: _Slot, batch_id: int, batch: list[tuple[Request, asyncio.Future]]) -> None:
        """One generate_many call; each result or error goes to its own request's future as it
        streams in. Only a failure of the call itself (the replica died) fails them all."""
        futures = [f for _, f in batch]
        error: BaseException | None = None
        try:
            async for ref in slot.actor.generate_many.remote([r for r, _ in batch], batch_id):
                for index, outcome in await ref:
                    future = futures[index]
                    if future.done():  # its caller left
                        continue
                    if isinstance(outcome, ReplicaUnavailable):  # the engine itself is gone
                        self._replace(slot)
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        except (RayActorError, ActorUnavailableError) as e:
            self._replace(slot)
            error = ReplicaUnavailable(f"replica {self.model}/{slot.index} died: {type(e).__name__}")
        except Exception as e:  # the call failed as a whole (a bug, not a request's own error)
            error = e
        for future in futures:
            if not future.done():
                future.set_exception(error or ReplicaUnavailable(
                    f"replica {self.model}/{slot.index} ended a batch without answering every request"))

    # ---- replacement ------------------------------------------------------------------------

    def _replace(self, slot: _Slot) -> None:
        if not slot.alive:
            return
        slot.alive = False
        self.restarts += 1
        _release(slot)  # a replica whose engine closed is still alive, holding its GPUs
        self._replacing[slot.index] = asyncio.ensure_future(self._respawn(slot))

    async def _respawn(self, dead: _Slot) -> None:
        """Start a replica in the dead one's place, trying START_TRIES times; after that the
        slot stays empty: its requests go to the other replicas, and with none left they fail
        with ReplicaUnavailable (saying why) until the shard's retries run out."""
        try:
            for attempt in range(1, START_TRIES + 1):
                new = None
                try:
                    new = await self._spawn(dead.index, dead.generation + attempt)
                    await asyncio.wait_for(new.actor.ready.remote(), self.ready_timeout_s)
                except BaseException as e:
                    if new is not None:
                        _release(new)
                    if not isinstance(e, Exception):  # cancelled: the pool is shutting down
                        raise
                    self.start_error = f"{type(e).__name__}: {e}"
                    continue
                self.slots[next(i for i, s in enumerate(self.slots) if s is dead)] = new
                self.start_error = None
                return
        finally:
            self._replacing.pop(dead.index, None)

    async def wait_healthy(self) -> None:
        """Wait for replacements in progress (before a shard retry). Never raises, and a
        cancelled waiter leaves the replacements running."""
        if self._replacing:
            await asyncio.wait(list(self._replacing.values()))

    def handle(self, served_name: str, adapter: str | None = None) -> PoolHandle:
        return PoolHandle(served_name, self, adapter)

    async def stats(self) -> list[dict[str, Any]]:
        return await asyncio.gather(*(s.actor.stats.remote() for s in self.slots if s.alive))

    def shutdown(self) -> None:
        for task in self._replacing.values():
            task.cancel()
        for s in self.slots:
            if not (s.warm and s.alive):
                _release(s)


def _running(name: str) -> bool:
    """Whether a warm replica of that name is alive now."""
    try:
        ray.get_actor(name, namespace=WARM_NAMESPACE)
    except ValueError:
        return False
    return True


def _release(slot: _Slot) -> None:
    """Kill a replica's actor and free its placement group (both may be gone already)."""
    try:
        ray.kill(slot.actor, no_restart=True)
    except Exception:
        pass
    if slot.placement is not None:
        try:
            slot.placement.remove()
        except Exception:
            pass


class PoolHandle:
    """A model as a job sees it: generate() routed through a pool, with its adapter set."""

    def __init__(self, name: str, pool: ReplicaPool, adapter: str | None) -> None:
        self.name, self.pool, self.adapter = name, pool, adapter

    async def generate(self, request: Request) -> list[Completion]:
        if self.adapter and request.adapter is None:
            request = request.model_copy(update={"adapter": self.adapter})
        return await self.pool.generate(request)
