"""Planning at scale: `orchestrate plan` of a generate job over a generated prompt file, from
10k to 10M samples and 1 to 1,000 cells (a grid of temperatures x seeds over one file); then
`orchestrate status` and a resubmit of a finished sweep; then the driver's memory during a
real `submit` at two sizes (it must not grow with the number of samples).

Each command runs as the user runs it (`.venv/bin/orchestrate ...` in a fresh process);
seconds are its wall time, peak RSS its own (`wait4`'s ru_maxrss; for a submit, the driver
process alone, sampled with psutil, since Ray's processes are its children).

    PYTHONPATH=. python benchmarks/plan_scale.py                        # everything below
    PYTHONPATH=. python benchmarks/plan_scale.py --curve 10k:1,1M:100   # chosen points only
    PYTHONPATH=. python benchmarks/plan_scale.py --finished 1M:100 --submits 10k,50k

The finished sweep is laid out as `submit` writes it (every cell.json, every shard file of the
stage) without running a model: each shard file is a hard link to one Parquet file of
`shard_size` rows, so its rows are not the shard's own samples. `status` never opens a shard
file; the first submit reads every row to compute the summaries, the next keeps them
(summary.key.json).
Goals (issue 26): plan of 1M x 100 under 10 s and 1 GB; status and resubmit of it finished
under 10 s; the driver's memory during a submit flat in the number of samples.
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

import psutil

ROOT = Path(__file__).parents[1]
CLI = str(ROOT / ".venv" / "bin" / "orchestrate")
DEFAULT_CURVE = ("10k:1,10k:10,10k:100,10k:1000,100k:1,100k:10,100k:100,100k:1000,"
                 "1M:1,1M:10,1M:100,1M:1000,10M:1,10M:100")


def count(text: str) -> int:
    """`10k`, `1M`, `50000` as a number."""
    scale = {"k": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "kM" else text) * scale)


def prompts_file(folder: Path, samples: int) -> Path:
    """A prompt file of `samples` lines (made once per size)."""
    path = folder / f"prompts-{samples}.jsonl"
    if not path.exists():
        with path.open("w") as f:
            for i in range(samples):
                f.write(json.dumps({"id": f"q{i}", "prompt": f"What is ({i % 9 + 1}+{i % 7 + 2})*{i % 5 + 1}?"}) + "\n")
    return path


def write_sweep(folder: Path, name: str, samples: int, cells: int, shard_size: int, max_tokens: int = 4) -> Path:
    """A generate job over one prompt file: `cells` grid points (up to 10 temperatures x seeds)."""
    temperatures = min(cells, 10)
    assert cells % temperatures == 0, f"{cells} cells: a multiple of 10, or fewer than 10"
    grid = ""
    if temperatures > 1:
        grid += f"      temperature: {{values: {[round(0.1 * t, 1) for t in range(temperatures)]}}}\n"
    if cells // temperatures > 1:
        grid += f"      seed: {{values: {list(range(cells // temperatures))}}}\n"
    sweep = folder / f"{name}.yaml"
    sweep.write_text(f"""\
name: {name}
output: {folder / 'results'}
cluster: {{num_cpus: 2, dashboard: false}}
models:
  faithful: {{path: "organism:faithful", dtype: float32, num_cpus: 1}}
jobs:
  - kind: generate
    models: [faithful]
    shard_size: {shard_size}
    params:
      prompts: {prompts_file(folder, samples)}
      max_tokens: {max_tokens}
{grid}""")
    return sweep


def timed(args: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, CPU seconds) of a command, in a fresh process. The CPU
    seconds (user + system) say what it costs on a machine that others share too."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def curve(folder: Path, points: list[tuple[int, int]]) -> None:
    print("\n## plan\n\n| samples | cells | shards | seconds | CPU seconds | peak RSS |\n|---|---|---|---|---|---|")
    for samples, cells in points:
        prompts_file(folder, samples)  # not timed
        sweep = write_sweep(folder, f"plan-{samples}-{cells}", samples, cells, shard_size=32)
        seconds, rss, cpu = timed([CLI, "plan", str(sweep)])
        shards = cells * -(-samples // 32)
        print(f"| {samples:,} | {cells:,} | {shards:,} | {seconds:.1f} | {cpu:.1f} | {rss:,.0f} MB |", flush=True)


def lay_out_finished(sweep_file: Path) -> int:
    """Every cell.json and every shard file of the sweep, as a finished submit leaves them
    (shard files hard-linked to one file of `shard_size` rows). Returns the shard files made."""
    import polars as pl

    from jobs.generate.job import GenerateJob
    from orchestrator.load import load_sweep
    from orchestrator.plan import make_plan
    from orchestrator.store import SweepStore, row_schema, write_json

    sweep = load_sweep(sweep_file)
    store = SweepStore(sweep.output, sweep.name)
    plan = make_plan(sweep)
    size = plan.cells[0].shard_size
    template = store.root / "template.parquet"
    store.root.mkdir(parents=True, exist_ok=True)
    rows = [{"sweep": sweep.name, "stage_id": "x", "shard_id": "x", "sample_id": f"q{i}", "model": "faithful",
             "error": None, "prompt_id": f"q{i}", "sample_index": 0, "prompt": "p", "completion": "4",
             "cot": None, "answer": "4", "prompt_tokens": 9, "completion_tokens": 1, "finish_reason": "stop"}
            for i in range(size)]
    pl.from_arrow(__import__("pyarrow").Table.from_pylist(rows, schema=row_schema(GenerateJob.schema))
                  ).write_parquet(template)
    made = 0
    for i, cell in enumerate(plan.cells):
        folder = store.stage_dir(cell.kind, "generate", cell.stages["generate"])
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "stage.json", {"shard_size": size, "samples": cell.n_samples})
        own = template.with_name(f"template-{i}.parquet")  # a file has at most 65,000 links (ext4)
        own.write_bytes(template.read_bytes())
        for shard_id in cell.shard_ids("generate"):
            os.link(own, folder / f"{shard_id}.parquet")
            made += 1
        write_json(store.cell_dir(cell.kind, cell.id) / "cell.json", cell.manifest())
    return made


def finished(folder: Path, samples: int, cells: int, shard_size: int) -> None:
    sweep = write_sweep(folder, f"done-{samples}-{cells}", samples, cells, shard_size=shard_size)
    started = time.perf_counter()
    made = lay_out_finished(sweep)
    print(f"\n## a finished sweep: {samples:,} samples x {cells} cells, shards of {shard_size} ({made:,} shard "
          f"files, laid out in {time.perf_counter() - started:.0f} s)\n\n"
          "| command | seconds | CPU seconds | peak RSS |\n|---|---|---|---|")
    for label, args in [("status", [CLI, "status", str(sweep)]),
                        ("plan", [CLI, "plan", str(sweep)]),
                        ("submit (the first: logs a run a cell)", [CLI, "submit", "--no-progress", str(sweep)]),
                        ("submit again (nothing new to log)", [CLI, "submit", "--no-progress", str(sweep)])]:
        seconds, rss, cpu = timed(args)
        print(f"| {label} | {seconds:.1f} | {cpu:.1f} | {rss:,.0f} MB |", flush=True)


def submit_memory(folder: Path, sizes: list[int]) -> None:
    """A real submit (1 greedy token a prompt on the faithful organism, shards of 100), the
    driver's RSS sampled every 0.2 s."""
    print("\n## submit: the driver's memory\n\n| samples | seconds | driver peak RSS | driver RSS at the end |\n"
          "|---|---|---|---|")
    for samples in sizes:
        sweep = write_sweep(folder, f"submit-{samples}", samples, 1, shard_size=100, max_tokens=1)
        started = time.perf_counter()
        proc = subprocess.Popen([CLI, "submit", "--no-progress", str(sweep)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "RAY_TMPDIR": tempfile.mkdtemp()})
        driver = psutil.Process(proc.pid)
        peak = last = 0.0
        while proc.poll() is None:
            try:
                last = driver.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                break
            peak = max(peak, last)
            time.sleep(0.2)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.wait() != 0:
            raise SystemExit(f"submit of {samples} failed:\n{err[-3000:]}")
        print(f"| {samples:,} | {time.perf_counter() - started:.0f} | {peak:,.0f} MB | {last:,.0f} MB |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curve", default=DEFAULT_CURVE, help="samples:cells points of the plan curve ('' for none)")
    ap.add_argument("--finished", default="1M:100", help="samples:cells of the finished sweep ('' for none)")
    ap.add_argument("--finished-shard-size", type=int, default=1000)
    ap.add_argument("--submits", default="10k,50k", help="sizes of the real submits ('' for none)")
    ap.add_argument("--folder", help="where the prompt files and results go (default: a new temporary folder)")
    args = ap.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="plan-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, load {os.getloadavg()[0]:.1f}; "
          f"files under {folder}", file=sys.stderr)
    pairs = [tuple(count(x) for x in p.split(":")) for p in args.curve.split(",") if p]
    if pairs:
        curve(folder, [(s, c) for s, c in pairs])
    if args.finished:
        samples, cells = (count(x) for x in args.finished.split(":"))
        finished(folder, samples, cells, args.finished_shard_size)
    if args.submits:
        submit_memory(folder, [count(x) for x in args.submits.split(",")])


if __name__ == "__main__":
    main()
