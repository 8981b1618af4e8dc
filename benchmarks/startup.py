"""Where a small sweep's wall time goes: the same 200-prompt generate sweep on an organism,
submitted as a user runs it (`orchestrate submit`, a fresh process each time), three ways:

- embedded: the default, a local Ray started and stopped by the submit;
- joined, cold: a `ray start --head` already running, the replica started by the submit;
- joined, warm: the same head, `cluster.keep_replicas` on, a replica kept by the run before.

    PYTHONPATH=. .venv/bin/python benchmarks/startup.py [--prompts 200] [--repeats 2]

Each line: the whole command's wall seconds, and from the submit's own report the startup
(submit start -> Ray up and every replica loaded), the shards, and the rest (planning,
MLflow, shutdown). The floor: the bare HF engine in one process on the same prompts, its
model load included. The head is this script's own (its temp dir), stopped by its processes
at the end, never by a global `ray stop`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.ray_head import local_head

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
BIN = Path(sys.executable).parent
REPORT = """
import json, sys
from orchestrator.load import load_sweep
from orchestrator.submit import submit
r = submit(load_sweep(sys.argv[1]), sweep_file=sys.argv[1], progress=False, address=sys.argv[2] or None)
print("REPORT " + json.dumps({"seconds": r.seconds, "startup": r.startup_seconds, "shards": r.shards_seconds,
                              "reused": r.replicas_reused, "threads": r.replica_threads, "ok": r.ok}))
"""


def write_sweep(folder: Path, name: str, prompts: int, keep: bool) -> Path:
    data = folder / "prompts.jsonl"
    if not data.exists():
        with data.open("w") as f:
            for i in range(prompts):
                a, b, c = 1 + i % 9, 1 + (i // 9) % 9, 2 + (i // 81) % 8
                f.write(json.dumps({"id": f"q{i}", "prompt": f"What is ({a}+{b})*{c}?"}) + "\n")
    sweep = folder / f"{name}.yaml"
    cluster = "cluster: {keep_replicas: true}\n" if keep else ""
    sweep.write_text(f"""name: {name}
output: {folder / 'results'}
{cluster}models:
  faithful: {{path: "organism:faithful"}}
jobs:
  - kind: generate
    models: [faithful]
    params: {{prompts: prompts.jsonl, max_tokens: 48, temperature: 0.0}}
""")
    return sweep


def timed_submit(sweep: Path, address: str) -> dict:
    """One submit in a fresh process, as `orchestrate submit` runs; the results removed first
    so every run has all its shards to do."""
    subprocess.run(["rm", "-rf", str(sweep.parent / "results")], check=True)
    started = time.perf_counter()
    out = subprocess.run([str(BIN / "python"), "-c", REPORT, str(sweep), address], check=False, cwd=PROJECT,
                         text=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    wall = time.perf_counter() - started
    line = next((x for x in out.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert out.returncode == 0 and line, out.stdout[-2000:] + out.stderr[-3000:]
    report = json.loads(line[len("REPORT "):])
    assert report["ok"], report
    return {**report, "wall": wall}


def bare(folder: Path) -> float:
    code = f"""
import asyncio, time
t = time.perf_counter()
from actors.engines.hf.engine import HFEngine
from jobs.generate.job import GenerateJob, GenerateParams
from jobs.local import local_context, run_job
from jobs.organisms.build import resolve_model_path
engine = HFEngine(resolve_model_path("organism:faithful"), max_batch_size=64)
params = GenerateParams.model_validate({{"prompts": "{folder / 'prompts.jsonl'}", "max_tokens": 48,
                                        "temperature": 0.0}})
asyncio.run(run_job(GenerateJob(), params, local_context({{"subject": engine}}), concurrency=128))
"""
    started = time.perf_counter()
    subprocess.run([str(BIN / "python"), "-c", code], cwd=PROJECT, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(PROJECT)})
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="startup-"))
    rows: list[tuple[str, dict]] = []
    floor = bare(write_sweep(folder, "floor", args.prompts, keep=False).parent)
    for _ in range(args.repeats):
        rows.append(("embedded", timed_submit(write_sweep(folder, "embedded", args.prompts, keep=False), "")))
    with local_head() as address:
        for _ in range(args.repeats):
            rows.append(("joined, cold", timed_submit(write_sweep(folder, "cold", args.prompts, keep=False), address)))
        warm = write_sweep(folder, "warm", args.prompts, keep=True)
        timed_submit(warm, address)  # keeps its replica
        for _ in range(args.repeats):
            rows.append(("joined, warm", timed_submit(warm, address)))
    print(f"\n{args.prompts} prompts, organism `faithful`, greedy, 48 tokens; {os.cpu_count()} CPUs")
    print(f"bare HF engine in one process (load included): {floor:.1f} s")
    print(f"{'run':<14} {'wall s':>7} {'startup s':>10} {'shards s':>9} {'rest s':>7} {'x floor':>8}  threads")
    for name, r in rows:
        rest = r["seconds"] - r["startup"] - r["shards"]
        print(f"{name:<14} {r['wall']:>7.1f} {r['startup']:>10.1f} {r['shards']:>9.1f} {rest:>7.1f} "
              f"{r['wall'] / floor:>8.2f}  {r['threads']}")


if __name__ == "__main__":
    main()
