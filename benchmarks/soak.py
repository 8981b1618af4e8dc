"""A soak: 100,000 cheap samples through `orchestrate submit`, the driver's and the replicas'
memory sampled every few seconds. A leak (rows held after their shard is written, a growing
request log, futures never released) shows as memory that grows with the samples done.

The sweep: the `faithful` organism generating 4 tokens greedily for each of N short prompts
(one generate cell, shards of 1,000), one replica. The submit runs as a subprocess; its process
tree is read with psutil: the driver (the submit's own process) and the replica actors (Ray's
`ray::ModelReplica` workers). Prints the first, last and peak RSS of each after warm-up and the
slope in MB per 10,000 samples (least squares over the samples after the first shards), writes
the samples to CSV and a plot to PNG.

    PYTHONPATH=. python benchmarks/soak.py [--samples 100000] [--out benchmarks/soak]
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

SHARD = 1000
EVERY_S = 3.0


def write_sweep(folder: Path, samples: int) -> Path:
    prompts = folder / "prompts.jsonl"
    with prompts.open("w") as f:
        for i in range(samples):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"What is ({i % 9 + 1}+{i % 7 + 2})*{i % 5 + 1}?"}) + "\n")
    sweep = folder / "soak.yaml"
    sweep.write_text(f"""\
name: soak
output: {folder / 'results'}
cluster: {{num_cpus: 2, dashboard: false}}
models:
  faithful: {{path: "organism:faithful", dtype: float32, num_cpus: 1}}
jobs:
  - kind: generate
    models: [faithful]
    shard_size: {SHARD}
    params: {{prompts: {prompts}, max_tokens: 4, temperature: 0.0}}
""")
    return sweep


def rss_mb(proc: psutil.Process) -> float:
    try:
        return proc.memory_info().rss / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def replicas(driver: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in driver.children(recursive=True):
        try:
            if "ModelReplica" in " ".join(child.cmdline()):
                found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def shards_done(root: Path) -> int:
    return sum(1 for _ in root.glob("results/soak/generate/_stages/generate/*/*.parquet"))


def slope_per_10k(samples: list[dict[str, float]], key: str) -> float:
    """MB per 10,000 samples, fitted after the first two shards (model load and warm-up)."""
    steady = [s for s in samples if s["samples_done"] >= 2 * SHARD and s[key] > 0]
    if len(steady) < 3:
        return float("nan")
    x = np.array([s["samples_done"] for s in steady])
    y = np.array([s[key] for s in steady])
    return float(np.polyfit(x, y, 1)[0] * 10_000) if np.ptp(x) > 0 else float("nan")


def plot(samples: list[dict[str, float]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = fig.subplots()
    x = [s["samples_done"] for s in samples]
    ax.plot(x, [s["driver_mb"] for s in samples], label="driver (orchestrate submit)")
    ax.plot(x, [s["replica_mb"] for s in samples], label="replica (ray::ModelReplica)")
    ax.set_xlabel("samples written")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--out", default="benchmarks/soak", help="writes OUT.csv and OUT.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        sweep = write_sweep(folder, args.samples)
        started = time.perf_counter()
        command = str(Path(sys.executable).with_name("orchestrate"))  # the venv's entry point
        proc = subprocess.Popen([command, "submit", str(sweep), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        driver = psutil.Process(proc.pid)
        samples: list[dict[str, float]] = []
        while proc.poll() is None:
            workers = replicas(driver)
            samples.append({"seconds": time.perf_counter() - started, "samples_done": shards_done(folder) * SHARD,
                            "driver_mb": rss_mb(driver), "replica_mb": sum(rss_mb(w) for w in workers),
                            "replicas": len(workers)})
            time.sleep(EVERY_S)
        output = proc.stdout.read() if proc.stdout else ""
        assert proc.returncode == 0, output[-3000:]
        done = shards_done(folder) * SHARD
        assert done >= args.samples, f"{done} of {args.samples} samples written: {output[-2000:]}"
    wall = time.perf_counter() - started
    out = Path(args.out)
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(samples[0]))
        writer.writeheader()
        writer.writerows(samples)
    plot(samples, out.with_suffix(".png"))
    print(f"{done:,} samples in {wall:.0f} s ({done / wall:.0f}/s), {len(samples)} memory samples every {EVERY_S:g} s")
    for key, name in (("driver_mb", "driver"), ("replica_mb", "replica")):
        steady = [s[key] for s in samples if s["samples_done"] >= 2 * SHARD and s[key] > 0]
        if steady:
            print(f"{name:8s} after warm-up: first {steady[0]:.0f} MB, last {steady[-1]:.0f} MB, peak {max(steady):.0f}"
                  f" MB; slope {slope_per_10k(samples, key):+.1f} MB per 10k samples")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
