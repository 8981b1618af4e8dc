"""`orchestrate compare` at scale: 10 million rows in 1,000 cells, against reading them eagerly.

Writes a sweep's results folder as `submit` lays it out (cell.json manifests, one Parquet file
per shard) for the generate kind: 10 models x 10 temperatures x 10 seeds = 1,000 cells, each of
1,000 prompts x 10 samples. Then, each in a fresh process (so peak memory is its own):
    compare    `orchestrate compare`'s code path: every cell's measures, seeds pooled, 95%
               intervals from the two-level bootstrap (2,000 resamples)
    eager      the floor a user would write: every row read into one polars DataFrame, then
               the means per series (no intervals)
and prints wall seconds, peak RSS and the ratios.

    PYTHONPATH=. python benchmarks/compare_scale.py [--cells 1000] [--rows-per-cell 10000]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

MODELS, TEMPERATURES = 10, 10
SHARD = 10_000


def write_results(root: Path, cells: int, rows_per_cell: int) -> None:
    """A results folder of `cells` generate cells (models x temperatures x seeds)."""
    rng = np.random.default_rng(0)
    prompts = rows_per_cell // 10
    seeds = max(1, cells // (MODELS * TEMPERATURES))
    for i in range(cells):
        model, temp, seed = i % MODELS, (i // MODELS) % TEMPERATURES, i // (MODELS * TEMPERATURES) % seeds
        cell_id, stage_id = f"{i:016x}", f"{i:015x}s"
        shard_ids = [f"{stage_id}-{k}" for k in range(-(-rows_per_cell // SHARD))]
        stage_dir = root / "generate" / "_stages" / "generate" / stage_id
        stage_dir.mkdir(parents=True, exist_ok=True)
        for k, shard in enumerate(shard_ids):
            n = min(SHARD, rows_per_cell - k * SHARD)
            index = np.arange(k * SHARD, k * SHARD + n)
            tokens = rng.poisson(20 + model + temp, size=n).astype(np.int32)
            pl.DataFrame({
                "sweep": "scale", "stage_id": stage_id, "shard_id": shard,
                "sample_id": [f"p{j}" for j in index % prompts], "model": f"m{model}", "error": None,
                "prompt_id": [f"p{j}" for j in index % prompts], "sample_index": (index // prompts).astype(np.int32),
                "completion_tokens": tokens,
                "finish_reason": np.where(tokens < 48, "stop", "length"),
            }, schema_overrides={"error": pl.String}).write_parquet(stage_dir / f"{shard}.parquet")
        point = {"temperature": temp / 10, "seed": seed}
        params = {"prompts": ["inline"], "temperature": temp / 10, "seed": seed, "max_tokens": 48}
        manifest = {"cell_id": cell_id, "sweep": "scale", "kind": "generate", "model": f"m{model}",
                    "roles": {"subject": f"m{model}"}, "point": point, "params": params,
                    "stages": {"generate": {"id": stage_id, "shards": shard_ids}},
                    "shard_size": SHARD, "samples": prompts, "versions": {"generate": "1"},
                    "replicates": f"m{model}"}
        cell_dir = root / "generate" / cell_id
        cell_dir.mkdir(parents=True, exist_ok=True)
        (cell_dir / "cell.json").write_text(json.dumps(manifest))


def run_compare(root: str) -> dict[str, float]:
    from orchestrator.compare import compare, read_sources

    found = read_sources([root])
    result = compare(found, draws=2000)
    return {"series": float(result.means.height)}


def run_eager(root: str) -> dict[str, float]:
    files = sorted(Path(root).glob("generate/_stages/generate/*/*.parquet"))
    rows = pl.read_parquet(files)  # every column of every row, in memory
    means = rows.group_by("model", "stage_id").agg(pl.col("completion_tokens").mean())
    return {"series": float(means.height)}


def child(mode: str, root: str) -> None:
    started = time.perf_counter()
    out = (run_compare if mode == "compare" else run_eager)(root)
    out["seconds"] = time.perf_counter() - started
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--rows-per-cell", type=int, default=10_000)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="compare-scale-") as tmp:
        root = Path(tmp) / "scale"
        started = time.perf_counter()
        write_results(root, args.cells, args.rows_per_cell)
        print(f"wrote {args.cells} cells x {args.rows_per_cell} rows = {args.cells * args.rows_per_cell:,} rows "
              f"in {time.perf_counter() - started:.0f} s")
        results = {}
        for mode in ("eager", "compare"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(root)], check=True,
                                 capture_output=True, text=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[mode]
            print(f"{mode:8s} {r['seconds']:6.1f} s  peak {r['peak_mb']:6.0f} MB  ({r['series']:.0f} result rows)")
        c, e = results["compare"], results["eager"]
        print(f"compare / eager: {c['seconds'] / e['seconds']:.2f}x the time, {c['peak_mb'] / e['peak_mb']:.2f}x "
              "the memory (compare also computes 95% intervals; eager only means)")


if __name__ == "__main__":
    main()
