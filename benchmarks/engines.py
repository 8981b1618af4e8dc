"""Every engine on the same model and prompts, bare (in this process) and through a replica
actor (ModelReplica on a local Ray), in one run: requests/s and tokens/s of each.

    PYTHONPATH=. python benchmarks/engines.py                        # hf and vllm, organism-sized random Llama
    PYTHONPATH=. python benchmarks/engines.py --engines hf,vllm,openai --model organism:faithful
    PYTHONPATH=. python benchmarks/engines.py --model /models/x --dtype bfloat16 --prompts 2048 --max-tokens 256

`openai` runs against `vllm serve` of the same model, started here on loopback, in token-id
mode (tokenizer_path), so all three decode the same prompt tokens. Both sides of an engine
are built before timing and timed alternately (--repeat), the best run of each kept, so
drifting load on a shared machine hits both alike. The replica's overhead is
1 - replica req/s / bare req/s; the target is under 5%. The Ray floor is the same requests
sent to an actor that answers at once: the part of the overhead that is Ray's per-call cost,
whatever the engine. On CPU, --threads pins torch's threads in this process, the replica and
the server alike (vLLM's CPU backend would otherwise pick its own count in each).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
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


def bench_engine(engine: str, path: str, args: argparse.Namespace, requests: list) -> tuple[Run, Run]:
    import ray

    from actors.engines.factory import build_engine
    from actors.replica import ModelReplica

    server, base_url = start_server(path, args) if engine == "openai" else (None, None)
    try:
        spec = spec_for(engine, path, args, base_url)
        bare = build_engine(spec)
        replica = ModelReplica.options(name=f"bench/{engine}", num_cpus=1, max_concurrency=10_000).remote(engine, spec)
        ray.get(replica.ready.remote())

        async def through_replica(request):
            return await replica.generate.remote(request)

        warm = requests[: min(8, len(requests))]
        asyncio.run(timed(bare.generate, warm))
        asyncio.run(timed(through_replica, warm))
        best_bare = best_replica = None
        for _ in range(args.repeat):
            run = asyncio.run(timed(bare.generate, requests))
            best_bare = run if best_bare is None or run.seconds < best_bare.seconds else best_bare
            run = asyncio.run(timed(through_replica, requests))
            best_replica = run if best_replica is None or run.seconds < best_replica.seconds else best_replica
        ray.kill(replica)
        if hasattr(bare, "close"):
            bare.close()
        return best_bare, best_replica
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
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    assert set(engines) <= {"hf", "vllm", "openai"}, f"unknown engines in {engines}"

    # Before torch loads anywhere: this process, the replica actors (Ray workers inherit the
    # driver's environment on a local cluster) and the vLLM server all read it.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import ray

    from actors.engines.paths import resolve_model_path
    from benchmarks.hf_engine import prompts, tiny_llama

    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as tmp:
        path = resolve_model_path(args.model) if args.model else str(tiny_llama(Path(tmp) / "organism-sized"))
        requests = prompts(args.prompts, args.max_tokens)
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, _temp_dir=f"{tmp}/ray",
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}})
        results = {}
        try:
            for engine in engines:
                results[engine] = bench_engine(engine, path, args, requests)
                bare, replica = results[engine]
                print(f"{engine}: bare {bare.rps:.1f} req/s, replica {replica.rps:.1f} req/s", flush=True)
            floor = ray_floor(requests, args.repeat)
        finally:
            ray.shutdown()

    print(f"\n{args.prompts} prompts, max_tokens {args.max_tokens}, dtype {args.dtype}, threads {args.threads}, "
          f"best of {args.repeat}; model {args.model or 'organism-sized random Llama'}")
    print(f"{'engine':8} {'bare req/s':>11} {'tok/s':>9} {'replica req/s':>14} {'tok/s':>9} {'overhead':>9}")
    for engine, (bare, replica) in results.items():
        overhead = 1 - replica.rps / bare.rps
        print(f"{engine:8} {bare.rps:11.1f} {bare.tps:9.0f} {replica.rps:14.1f} {replica.tps:9.0f} {overhead:9.1%}")
        if bare.tokens != replica.tokens:
            print(f"  note: {engine} generated {bare.tokens} tokens bare and {replica.tokens} through the replica")
    print(f"Ray floor: {args.prompts} calls to an instant actor take {floor:.3f} s; the replica's extra time "
          "per engine: " + ", ".join(f"{e} {r.seconds - b.seconds:.3f} s" for e, (b, r) in results.items()))


if __name__ == "__main__":
    main()
