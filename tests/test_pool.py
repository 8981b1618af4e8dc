"""The replica pool coalesces the requests it routes to one replica into one actor call:
real local Ray, a real ModelReplica with the hf engine on the tiny model."""
from __future__ import annotations

import asyncio
import shutil
import tempfile

import pytest

from actors.engines.hf.engine import HFEngine
from actors.engines.protocol import Request, Sampling
from actors.errors import ReplicaUnavailable, RequestError
from actors.pool import ReplicaPool
from tests.test_hf_engine import greedy, questions, sharp_model  # noqa: F401 (a fixture)

MAX_MODEL_LEN = 160
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def spec(sharp_model) -> dict:
    return {"engine": "hf", "path": str(sharp_model), "dtype": "float32", "max_model_len": MAX_MODEL_LEN,
            "engine_options": {"device": "cpu"}}


@pytest.fixture(scope="module")
def pool(local_ray, spec):
    pool = ReplicaPool("tiny", spec, replicas=1, name_prefix="pool-test", num_cpus=0.5, num_gpus=0)
    asyncio.run(pool.start())
    yield pool
    pool.shutdown()


def mixed_requests(count: int) -> list[Request]:
    """Different prompt lengths and token budgets, so requests finish at different engine
    steps and stream back in several groups."""
    return [r.model_copy(update={"sampling": greedy(max_tokens=2 + i % 7)})
            for i, r in enumerate(questions(count, greedy()))]


@pytest.fixture(scope="module")
def bare(spec, sharp_model):
    engine = HFEngine(str(sharp_model), device="cpu", max_model_len=MAX_MODEL_LEN)
    yield engine
    engine.close()


async def through(pool: ReplicaPool, requests: list[Request]) -> list:
    handle = pool.handle("tiny")
    return await asyncio.gather(*(handle.generate(r) for r in requests), return_exceptions=True)


def test_concurrent_requests_go_in_one_actor_call_and_each_gets_its_own_result(pool, bare):
    requests = mixed_requests(48)
    # Batching never changes a greedy row (tests/test_hf_engine.py), so the bare engine's
    # answers are each request's own.
    expected = asyncio.run(through_engine(bare, requests))
    calls, actor_calls = pool.calls, pool.actor_calls
    got = asyncio.run(through(pool, requests))
    assert pool.calls - calls == 48
    assert pool.actor_calls - actor_calls == 1, "requests issued in one loop iteration must share one call"
    assert len({c[0].text for c in expected}) > 10, "the prompts must get distinct answers, or matching proves nothing"
    for request, want, out in zip(requests, expected, got):
        assert not isinstance(out, BaseException), out
        assert [(c.text, c.completion_tokens, c.finish_reason) for c in out] == \
               [(c.text, c.completion_tokens, c.finish_reason) for c in want]
        assert out[0].completion_tokens <= request.sampling.max_tokens
    assert all(s.inflight == 0 for s in pool.slots)


def test_a_request_that_fails_on_its_own_fails_alone_inside_a_batch(pool, bare):
    good = mixed_requests(12)
    too_long = Request(prompt="what is one plus one " * 100, sampling=greedy())
    empty = Request(prompt="", sampling=greedy())
    requests = good[:5] + [too_long] + good[5:] + [empty]
    expected = asyncio.run(through_engine(bare, good))
    actor_calls = pool.actor_calls
    got = asyncio.run(through(pool, requests))
    assert pool.actor_calls - actor_calls == 1, "the bad requests must travel in the same call as the good ones"
    assert isinstance(got[5], RequestError) and "max_model_len" in str(got[5]), got[5]
    assert isinstance(got[-1], RequestError) and "zero tokens" in str(got[-1]), got[-1]
    answers = got[:5] + got[6:-1]
    assert [out[0].text for out in answers] == [c[0].text for c in expected]


def test_a_dead_replica_fails_its_batch_with_replica_unavailable_and_is_replaced(pool):
    import ray

    async def kill_mid_batch_then_retry() -> tuple[list, list]:
        calls = pool.actor_calls
        batch = asyncio.ensure_future(through(pool, mixed_requests(16)))
        while pool.actor_calls == calls:  # until the batch is on its way to the replica
            await asyncio.sleep(0)
        ray.kill(pool.slots[0].actor, no_restart=True)
        failed = await batch
        await pool.wait_healthy()  # what the scheduler does before it retries a shard
        return failed, await through(pool, mixed_requests(4))

    restarts = pool.restarts
    failed, again = asyncio.run(kill_mid_batch_then_retry())
    assert all(isinstance(out, ReplicaUnavailable) for out in failed), failed
    assert pool.restarts == restarts + 1
    assert pool.slots[0].alive and pool.slots[0].generation == 1
    assert all(not isinstance(out, BaseException) and out[0].completion_tokens > 0 for out in again), again
    assert all(s.inflight == 0 for s in pool.slots)


def test_a_replica_whose_engine_closed_is_replaced(pool):
    import ray

    async def close_engine_then_retry() -> tuple[list, list]:
        await pool.slots[0].actor.close.remote()  # the actor lives on; its engine is gone
        failed = await through(pool, mixed_requests(4))
        await pool.wait_healthy()
        return failed, await through(pool, mixed_requests(4))

    restarts, generation = pool.restarts, pool.slots[0].generation
    closed = pool.slots[0].actor
    failed, again = asyncio.run(close_engine_then_retry())
    assert all(isinstance(out, ReplicaUnavailable) for out in failed), failed
    assert pool.restarts == restarts + 1, "one replacement, however many requests saw the closed engine"
    assert pool.slots[0].alive and pool.slots[0].generation == generation + 1
    assert all(not isinstance(out, BaseException) and out[0].completion_tokens > 0 for out in again), again
    with pytest.raises(ray.exceptions.RayActorError):  # killed, so it no longer holds its resources
        ray.get(closed.ready.remote(), timeout=60)


async def through_engine(engine: HFEngine, requests: list[Request]) -> list:
    return await asyncio.gather(*(engine.generate(r) for r in requests))


def test_a_caller_that_leaves_stops_its_requests_on_the_replica(pool):
    """A shard that fails cancels its other requests: the replica must stop decoding them,
    not finish work nobody waits for."""
    long = [Request.chat(f"Question {i}: tell me everything.", sampling=Sampling(max_tokens=120, temperature=1.0, seed=i))
            for i in range(16)]
    actor = pool.slots[0].actor

    async def leave_once_they_run() -> tuple[dict, dict]:
        before = await actor.stats.remote()
        batch = asyncio.ensure_future(through(pool, long))
        while (await actor.stats.remote())["rows"] == before["rows"]:  # until the engine decodes them
            await asyncio.sleep(0.005)
        batch.cancel()
        for _ in range(600):  # the loop must live on while the pool tells the replica
            after = await actor.stats.remote()
            if after["cancelled"] > before["cancelled"]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the engine drops the rows at its next step
        return before, await actor.stats.remote()

    before, after = asyncio.run(leave_once_they_run())
    assert after["cancelled"] - before["cancelled"] >= 1, "the replica was never told its callers left"
    assert after["aborted"] > before["aborted"], "the engine must drop the rows of requests nobody waits for"
    assert after["served"] - before["served"] < len(long)
    assert all(s.inflight == 0 for s in pool.slots)


def test_a_replacement_that_cannot_start_leaves_the_slot_empty_and_says_why(local_ray, sharp_model, tmp_path):
    import ray

    model = tmp_path / "model"
    shutil.copytree(sharp_model, model)
    fragile = ReplicaPool("fragile", {"engine": "hf", "path": str(model), "dtype": "float32",
                                      "max_model_len": MAX_MODEL_LEN, "engine_options": {"device": "cpu"}},
                          replicas=1, name_prefix="pool-fragile", num_cpus=0.5, num_gpus=0, ready_timeout_s=120)
    asyncio.run(fragile.start())
    try:
        for weights in model.glob("*.safetensors"):
            weights.unlink()  # every replacement will fail to load

        async def kill_then_retry() -> tuple[list, list]:
            ray.kill(fragile.slots[0].actor, no_restart=True)
            failed = await through(fragile, mixed_requests(2))
            await fragile.wait_healthy()  # returns, though no replacement started
            return failed, await through(fragile, mixed_requests(1))

        failed, later = asyncio.run(kill_then_retry())
        assert all(isinstance(out, ReplicaUnavailable) for out in failed), failed
        assert not fragile.slots[0].alive and not fragile._replacing
        assert isinstance(later[0], ReplicaUnavailable) and "failed to start" in str(later[0]), later
        assert fragile.restarts == 1, "one replica died, whatever the attempts to replace it"
    finally:
        fragile.shutdown()


def test_an_engine_error_that_cannot_be_pickled_keeps_what_the_scheduler_does_with_it():
    """Errors cross from the replica by pickling; one that cannot (it holds a lock) arrives as
    its nearest branch of the engine tree, so a busy endpoint is still retried and a
    request's own failure is still an error row."""
    import threading

    from actors.errors import EndpointUnavailable
    from actors.replica import _portable

    class Busy(EndpointUnavailable):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.lock = threading.Lock()

    class Odd(ValueError):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.lock = threading.Lock()

    busy, odd = _portable(Busy("503 again")), _portable(Odd("bad token"))
    assert type(busy) is EndpointUnavailable and "Busy: 503 again" in str(busy)
    assert type(odd) is RequestError and "Odd: bad token" in str(odd)
    plain = RequestError("too long")
    assert _portable(plain) is plain
