"""What orchestration costs: the same N generate requests through `orchestrate submit`
(embedded Ray, one replica actor, shards, Parquet, MLflow) and through the bare HF engine in
one process, on the same model and machine, in one run. Prints the ratio.

    PYTHONPATH=. python benchmarks/overhead.py --requests 2000 --max-tokens 32

Both sides use the same torch thread count (a Ray actor with num_cpus=1 gets one OpenMP
thread; the bare side is set to match with --threads). The orchestrated time is the whole
submit call: Ray start, replica load, planning, writing and logging included.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import torch

from actors.engines.hf.engine import HFEngine
from jobs.generate.job import GenerateJob, GenerateParams
from jobs.local import local_context, run_job
from jobs.organisms.build import resolve_model_path
from orchestrator.load import load_sweep
from orchestrator.submit import submit


def write_prompts(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            a, b, c = 1 + i % 9, 1 + (i // 9) % 9, 2 + (i // 81) % 8
            f.write(json.dumps({"id": f"q{i}", "prompt": f"What is ({a}+{b})*{c}?"}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="organism:faithful")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    write_prompts(tmp / "prompts.jsonl", args.requests)
    path = resolve_model_path(args.model)

    # Bare engine: the generate job's program, in-process, straight onto the engine, with as
    # many requests in flight as the submit has: it runs two shards at once per replica.
    in_flight = args.concurrency * min(2, -(-args.requests // args.shard_size))
    params = GenerateParams.model_validate({"prompts": str(tmp / "prompts.jsonl"), "max_tokens": args.max_tokens,
                                            "temperature": 0.0})
    started = time.perf_counter()
    engine = HFEngine(path, max_batch_size=64)
    loaded = time.perf_counter()
    rows = asyncio.run(run_job(GenerateJob(), params, local_context({"subject": engine}), concurrency=in_flight))
    bare_s = time.perf_counter() - started
    bare_run_s = time.perf_counter() - loaded
    bare_tokens = sum(r["completion_tokens"] for r in rows)
    engine.close()

    sweep_file = tmp / "sweep.yaml"
    sweep_file.write_text(f"""\
name: overhead
output: {tmp / 'results'}
cluster: {{num_cpus: 2, dashboard: false}}
models:
  m: {{path: "{path}", num_cpus: {args.threads}}}
jobs:
  - kind: generate
    models: [m]
    shard_size: {args.shard_size}
    concurrency: {args.concurrency}
    params: {{prompts: prompts.jsonl, max_tokens: {args.max_tokens}, temperature: 0.0}}
""")
    started = time.perf_counter()
    report = submit(load_sweep(sweep_file), progress=False, ray_temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    orch_s = time.perf_counter() - started
    assert report.ok and report.rows_written == args.requests, report

    print(f"{args.requests} requests, max_tokens {args.max_tokens}, model {args.model}, torch threads {args.threads}")
    print(f"bare HF engine (in-process) : {bare_s:7.2f} s  ({bare_tokens} tokens, {bare_tokens / bare_s:8.1f} tok/s)")
    print(f"orchestrate submit          : {orch_s:7.2f} s  "
          f"(Ray start, replica load, {report.shards_run} shards, Parquet, MLflow)")
    print(f"ratio orchestrated / bare   : {orch_s / bare_s:.3f}")
    wrap_s = orch_s - report.startup_seconds - report.shards_seconds
    print(f"  startup (Ray, replica load)   : {report.startup_seconds:7.2f} s")
    print(f"  shards (the requests, rows)   : {report.shards_seconds:7.2f} s -> ratio to the bare engine's "
          f"requests ({bare_run_s:.2f} s, its load left out) {report.shards_seconds / bare_run_s:.3f}")
    print(f"  wrap-up (summaries, MLflow, Ray shutdown): {wrap_s:5.2f} s")


if __name__ == "__main__":
    main()
