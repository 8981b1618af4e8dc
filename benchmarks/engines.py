"""Every engine on the same model and prompts, bare (in this process) and through a replica
actor (ModelReplica on a local Ray), in one run: requests/s and tokens/s of each.

    PYTHONPATH=. python benchmarks/engines.py                        # hf and vllm, organism-sized random Llama
    PYTHONPATH=. python benchmarks/engines.py --engines hf,vllm,openai --model organism:faithful
    PYTHONPATH=. python benchmarks/engines.py --model /models/x --dtype bfloat16 --prompts 2048 --max-tokens 256

`openai` runs against `vllm serve` of the same model, started here on loopback, in token-id
mode (tokenizer_path), so all three decode the same prompt tokens.

Two ways through Ray, on the same replica actor: `replica`, one actor call per request
(ModelReplica.generate), and `pool`, what jobs use: a ReplicaPool that coalesces the requests
of one event-loop iteration into one generate_many call and streams results back. Overhead is
1 - req/s through it / bare req/s; the target is under 5%. All sides are built and warmed up
(--warmup whole rounds) before timing, then timed in turn for --repeat rounds (the order
rotating), so drifting load on a shared machine hits them alike; printed are the best run of
each side, the median of the per-round ratios and a bootstrap 95% interval of their mean. The
Ray floor is the same requests sent one call each to an actor that answers at once: the part
of the per-call overhead that is Ray's, whatever the engine. On CPU, --threads pins torch's
threads in this process, the replica and the server alike (vLLM's CPU backend would otherwise
pick its own count in each).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVED_NAME = "bench"


@dataclass
class Run:
    requests: int
    tokens: int
    seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


async def timed(generate, requests: list) -> Run:
    start = time.perf_counter()
    results = await asyncio.gather(*(generate(r) for r in requests))
    seconds = time.perf_counter() - start
    return Run(len(requests), sum(c.completion_tokens for out in results for c in out), seconds)


def spec_for(engine: str, path: str, args: argparse.Namespace, base_url: str | None) -> dict[str, Any]:
    """The model spec a sweep would give the replica; the bare engine is built from the same."""
    spec: dict[str, Any] = {"engine": engine, "path": path, "dtype": args.dtype, "max_model_len": args.max_model_len}
    if engine == "hf":
        spec["engine_options"] = {"max_batch_size": args.batch_size} | ({"device": args.device} if args.device else {})
    elif engine == "vllm":
        spec["engine_options"] = {"in_process": True, "enforce_eager": True, "kv_cache_memory_bytes": 512 << 20}
    else:
        spec.update(path=SERVED_NAME, base_url=base_url, max_concurrency=args.prompts,
                    engine_options={"tokenizer_path": path})
    return spec


def start_server(path: str, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name",
        SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", args.dtype, "--enforce-eager",
        "--max-model-len", str(args.max_model_len), "--kv-cache-memory-bytes", str(512 << 20), "--block-size", "32",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    import httpx

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        assert server.poll() is None, f"vllm serve exited with {server.returncode}"
        try:
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                return server, base_url
        except httpx.TransportError:
            pass
        time.sleep(1)
    stop_server(server)
    raise TimeoutError("vllm serve did not come up in 900 s")


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def bench_engine(engine: str, path: str, args: argparse.Namespace, requests: list) -> dict[str, list[Run]]:
    """Every run of each side, round by round: bare, replica (one call per request), pool
    (coalesced)."""
    from actors.engines.factory import build_engine
    from actors.pool import ReplicaPool

    server, base_url = start_server(path, args) if engine == "openai" else (None, None)
    try:
        spec = spec_for(engine, path, args, base_url)
        bare = build_engine(spec)
        pool = ReplicaPool(engine, spec, replicas=1, name_prefix="bench", num_cpus=1, num_gpus=0)
        asyncio.run(pool.start())
        replica = pool.slots[0].actor  # the same process serves both ways through Ray
        handle = pool.handle(engine)

        async def through_replica(request):
            return await replica.generate.remote(request)

        sides = {"bare": bare.generate, "replica": through_replica, "pool": handle.generate}
        # Whole untimed rounds per side first: after a warm-up of 8 requests vLLM's bare engine
        # ran its first timed rounds slower (session 4: 44 -> 89 req/s over five rounds), so
        # best-of and per-round ratios paired a cold side with a warm one.
        for _ in range(args.warmup):
            for generate in sides.values():
                asyncio.run(timed(generate, requests))
        runs: dict[str, list[Run]] = {side: [] for side in sides}
        actor_calls = pool.actor_calls
        order = list(sides)
        for _ in range(args.repeat):
            for side in order:
                runs[side].append(asyncio.run(timed(sides[side], requests)))
            order = order[1:] + order[:1]  # rotate, so no side always runs right after another
        print(f"{engine}: pool sent {args.repeat * len(requests)} requests in {pool.actor_calls - actor_calls} "
              "actor calls", flush=True)
        pool.shutdown()
        if hasattr(bare, "close"):
            bare.close()
        return runs
    finally:
        if server is not None:
            stop_server(server)


def ray_floor(requests: list, repeat: int) -> float:
    """Seconds for the requests through an actor that answers each with a canned completion."""
    import ray

    from actors.engines.protocol import Completion

    @ray.remote(num_cpus=1)
    class Instant:
        async def generate(self, request):
            return [Completion(text="x" * 64, prompt_tokens=32, completion_tokens=request.sampling.max_tokens,
                               finish_reason="length")]

    actor = Instant.options(max_concurrency=10_000).remote()

    async def through(request):
        return await actor.generate.remote(request)

    asyncio.run(timed(through, requests[:8]))
    best = min(asyncio.run(timed(through, requests)).seconds for _ in range(repeat))
    ray.kill(actor)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF folder or organism:<name> (default: an organism-sized random Llama)")
    parser.add_argument("--engines", default="hf,vllm", help="comma-separated: hf, vllm, openai")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64, help="hf engine batch size")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None, help="hf engine device (default: cuda if present)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of every side before timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    assert set(engines) <= {"hf", "vllm", "openai"}, f"unknown engines in {engines}"

    # Before torch loads anywhere: this process, the replica actors (Ray workers inherit the
    # driver's environment on a local cluster) and the vLLM server all read it.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import ray

    from benchmarks.hf_engine import prompts, random_llama
    from jobs.common.stats import bootstrap_ci
    from jobs.organisms.build import resolve_model_path

    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as tmp:
        if args.model:
            path = resolve_model_path(args.model)
        else:
            path = str(random_llama(Path(tmp) / "organism-sized", "tiny", "cpu"))
        requests = prompts(args.prompts, args.max_tokens)
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, _temp_dir=f"{tmp}/ray",
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}})
        results = {}
        try:
            for engine in engines:
                results[engine] = bench_engine(engine, path, args, requests)
                print(f"{engine}: " + ", ".join(f"{side} " + " ".join(f"{r.rps:.1f}" for r in runs) + " req/s"
                                               for side, runs in results[engine].items()), flush=True)
            floor = ray_floor(requests, args.repeat)
        finally:
            ray.shutdown()

    # Best run of each side, and over rounds each round's own ratio: its median, and a bootstrap
    # 95% interval of its mean. On a shared machine the load drifts between rounds, and a
    # ratio within one round sees it less; the interval says whether 5% can be told apart.
    print(f"\n{args.prompts} prompts, max_tokens {args.max_tokens}, dtype {args.dtype}, threads {args.threads}, "
          f"{args.repeat} rounds; model {args.model or 'organism-sized random Llama'}")
    print(f"{'engine':8} {'bare req/s':>11} {'tok/s':>7} {'replica req/s':>14} {'overhead':>9} {'median':>7} "
          f"{'95% CI of mean':>16} {'pool req/s':>11} {'overhead':>9} {'median':>7} {'95% CI of mean':>16}")
    for engine, runs in results.items():
        best = {side: min(side_runs, key=lambda r: r.seconds) for side, side_runs in runs.items()}
        bare = best["bare"]
        line = f"{engine:8} {bare.rps:11.1f} {bare.tps:7.0f}"
        for side in ("replica", "pool"):
            per_round = [1 - r.rps / b.rps for r, b in zip(runs[side], runs["bare"])]
            low, high = bootstrap_ci(per_round)
            width = 14 if side == "replica" else 11
            line += (f" {best[side].rps:{width}.1f} {1 - best[side].rps / bare.rps:9.1%} "
                     f"{statistics.median(per_round):7.1%} {f'[{low:.1%}, {high:.1%}]':>16}")
            if best[side].tokens != bare.tokens:
                line += f"\n  note: {engine} generated {bare.tokens} tokens bare and {best[side].tokens} through {side}"
        print(line)
    print(f"Ray floor: {args.prompts} calls to an instant actor take {floor:.3f} s; best extra time over bare per "
          "engine (replica / pool): " + ", ".join(
              f"{e} {min(r.seconds for r in runs['replica']) - min(r.seconds for r in runs['bare']):.3f} / "
              f"{min(r.seconds for r in runs['pool']) - min(r.seconds for r in runs['bare']):.3f} s"
              for e, runs in results.items()))


if __name__ == "__main__":
    main()
