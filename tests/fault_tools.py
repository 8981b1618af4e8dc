"""Tools of the fault tests (tests/test_faults.py): drivers started as real processes, the
processes they start, the shard files they leave, and a shard writer to kill mid-write.

`python -m tests.fault_tools write SWEEP_FILE` writes every shard of the sweep's cells through
SweepStore.write_shard, over and over, with rows shaped like the job's (the test kills it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

ORCHESTRATE = str(Path(sys.executable).with_name("orchestrate"))


def start_submit(sweep_file: Path, ray_tmp: str, log: Path, *args: str) -> subprocess.Popen:
    """`orchestrate submit` as its own process group (as a shell runs a command), with its
    embedded Ray under `ray_tmp`."""
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "COLUMNS": "500"}  # rich: no wrapped paths in the log
    with open(log, "ab") as out:
        return subprocess.Popen([ORCHESTRATE, "submit", str(sweep_file), "--no-progress", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def orchestrate(*args: str, ray_tmp: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "500", **({"RAY_TMPDIR": ray_tmp} if ray_tmp else {})}
    return subprocess.run([ORCHESTRATE, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


def wait_for(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(poll)


def shard_files(root: Path) -> dict[Path, tuple[int, int]]:
    """Every visible shard file of a sweep: path -> (inode, mtime in ns). A shard written again
    gets a new inode (written to a temporary file, renamed)."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.glob("*/_stages/*/*/*.parquet")}


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".*.tmp"))


def read_whole(files: list[Path]) -> dict[Path, int]:
    """Rows of each Parquet file, read whole (footer, every row group, every page): a partial
    or corrupt file raises here."""
    return {f: pq.read_table(f).num_rows for f in files}


def assert_every_sample_once(root: Path, samples_per_stage: int, rows_per_sample: int) -> None:
    """Each stage holds every sample in exactly one shard file, with each of its rows once."""
    import polars as pl

    stages = sorted({p.parent for p in root.glob("*/_stages/*/*/*.parquet")})
    assert stages, f"no stage folders under {root}"
    for stage in stages:
        files = sorted(stage.glob("*.parquet"))
        read_whole(files)
        rows = pl.read_parquet(files, include_file_paths="file")
        per_sample = rows.group_by("sample_id").agg(pl.col("file").n_unique().alias("files"), pl.len().alias("rows"))
        assert per_sample.height == samples_per_stage, (stage, per_sample.height, samples_per_stage)
        assert (per_sample["files"] == 1).all(), f"{stage}: a sample in two shard files"
        assert (per_sample["rows"] == rows_per_sample).all(), per_sample.filter(pl.col("rows") != rows_per_sample)


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else int(fields[19])  # state, ..., starttime (man 5 proc)


def descendants(pid: int) -> dict[int, int]:
    """The processes under `pid` now (pid -> start time, which tells a reused pid apart)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found: dict[int, int] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if (start := _start_time(child)) is not None:
            found[child] = start
        todo += children.get(child, [])
    return found


def still_running(processes: dict[int, int]) -> list[int]:
    """Those of `processes` still running (not zombies, not a new process with a reused pid)."""
    return [pid for pid, start in processes.items() if _start_time(pid) == start]


def end_processes(processes: dict[int, int]) -> None:
    """SIGKILL what is left of `processes` (the ones a test's driver started), by pid."""
    for pid in still_running(processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def write_forever(sweep_file: str) -> None:
    """Every shard of the sweep's generate cells, written through SweepStore.write_shard again
    and again; prints `writing` when it starts and `pass N` after each full pass (the test kills it)."""
    from jobs.registry import get_job
    from orchestrator.load import load_sweep
    from orchestrator.plan import make_plan
    from orchestrator.store import SweepStore, row_schema, write_json

    sweep = load_sweep(sweep_file)
    store = SweepStore(sweep.output, sweep.name)
    cells = store.settle_plan(make_plan(sweep)).cells
    for cell in cells:
        write_json(store.cell_dir(cell.kind, cell.id) / "cell.json", cell.manifest())
        store.record_layout(cell)
    filler = os.urandom(3000).hex()  # incompressible: each shard takes a while to write
    print("writing", flush=True)
    n = 0
    while True:
        n += 1
        for cell in cells:
            schema = row_schema(get_job(cell.kind).schema)
            for shard in cell.shards:
                rows = [{"sweep": sweep.name, "stage_id": cell.stages["generate"], "shard_id": shard.id,
                         "sample_id": sid, "model": cell.model, "error": None, "prompt_id": sid, "sample_index": i,
                         "prompt": f"pass {n}", "completion": filler, "prompt_tokens": 3, "completion_tokens": 5,
                         "finish_reason": "stop"}
                        for sid in shard.sample_ids for i in range(2)]
                store.write_shard(cell.kind, "generate", cell.stages["generate"], shard.id, rows, schema)
        print(f"pass {n}", flush=True)


if __name__ == "__main__":
    assert sys.argv[1] == "write", sys.argv
    write_forever(sys.argv[2])
