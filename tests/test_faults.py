"""A submission under faults (issue 24): drivers killed with real signals, two submits of one
sweep, a shard writer killed mid-write, MLflow unreachable, a full disk. Real processes, real
local Ray, real Parquet and MLflow; what each test checks is what a researcher relies on: no
row lost or doubled, no partial file visible, no finished shard redone, a clear message."""
from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.load import load_sweep
from orchestrator.lock import read_holder
from orchestrator.plan import make_plan
from orchestrator.store import SweepStore
from orchestrator.submit import submit
from tests.conftest import free_port, serving
from tests.fault_tools import (
    assert_every_sample_once,
    descendants,
    end_processes,
    orchestrate,
    read_whole,
    shard_files,
    start_submit,
    still_running,
    temp_files,
    wait_for,
)
from tests.test_submit import N_PROMPTS, ray_tmp, write_sweep  # noqa: F401 (ray_tmp: a fixture)

SHARDS = 2 * N_PROMPTS // 2  # two cells (seeds) of 24 prompts in shards of 2
ROWS_PER_SAMPLE = 2  # n: 2


def said(text: str) -> str:
    """Console output with rich's line wrapping (80 columns off a terminal) undone."""
    return " ".join(text.split())


def slow_sweep(tmp_path: Path, tiny_model: Path) -> Path:
    """24 shards that run two at a time, a batch of two rows each: slow enough to be stopped
    (or to fill a disk) between shards. Batch sizes change no result, so a resubmit of the
    same file resumes it."""
    sweep_file = write_sweep(tmp_path, tiny_model, shard_size=2, max_tokens=24)
    text = sweep_file.read_text()
    slow = text.replace("num_cpus: 0.5}", "num_cpus: 0.5, engine_options: {max_batch_size: 2}}")
    assert slow != text, "the model line moved: make this sweep slow another way"
    sweep_file.write_text(slow)
    return sweep_file


def partial_run(tmp_path: Path, tiny_model: Path, ray_tmp: str, how: int
                ) -> tuple[Path, Path, dict, dict, Path, int]:
    """Start `orchestrate submit` of a 24-shard sweep, send it `how` once 2 shards are on disk
    (SIGINT: to its process group, as a terminal's Ctrl-C does; SIGKILL: to the driver only,
    as the OOM killer does), wait for it to end. Returns (sweep file, store root, the shard
    files when it ended, the processes it had started, its log, its exit code)."""
    sweep_file = slow_sweep(tmp_path, tiny_model)
    root = SweepStore(tmp_path / "results", "skeleton").root
    log = tmp_path / "first.log"
    driver = start_submit(sweep_file, ray_tmp, log)
    wait_for(lambda: len(shard_files(root)) >= 2 or driver.poll() is not None, 240, "two shards on disk")
    assert driver.poll() is None, f"the submit ended before it could be stopped:\n{log.read_text()[-3000:]}"
    started = descendants(driver.pid)
    if how == signal.SIGINT:
        os.killpg(driver.pid, signal.SIGINT)
    elif how == signal.SIGTERM:
        os.kill(driver.pid, signal.SIGTERM)  # `kill PID`, a batch scheduler preempting the job
    else:
        driver.kill()
    try:
        code = driver.wait(timeout=120)
    except subprocess.TimeoutExpired:
        driver.kill()
        end_processes(started)
        pytest.fail(f"the submit did not stop within 120 s of the signal:\n{log.read_text()[-3000:]}")
    done = shard_files(root)
    assert 2 <= len(done) < SHARDS, f"{len(done)} of {SHARDS} shards: not stopped mid-sweep"
    return sweep_file, root, done, started, log, code


def resubmit_completes(sweep_file: Path, root: Path, done: dict, ray_tmp: str) -> None:
    """Submitting again runs the rest, redoes no finished shard and leaves every sample once."""
    again = orchestrate("submit", str(sweep_file), "--no-progress", ray_tmp=ray_tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{SHARDS - len(done)} shards run, {len(done)} already done, 0 failed" in said(again.stderr), again.stderr
    after = shard_files(root)
    assert len(after) == SHARDS
    assert {p: after[p] for p in done} == done, "a finished shard was written again"
    assert_every_sample_once(root, N_PROMPTS, ROWS_PER_SAMPLE)
    assert not temp_files(root), temp_files(root)


def test_a_driver_killed_with_sigkill_blocks_nothing_and_the_resubmit_completes(tmp_path, tiny_model, ray_tmp):
    sweep_file, root, done, started, _, _ = partial_run(tmp_path, tiny_model, ray_tmp, signal.SIGKILL)
    try:
        assert json.loads((root / "submission.json").read_text())["state"] == "running"  # it never wrote its end
        status = CliRunner().invoke(main, ["status", str(sweep_file)])
        assert status.exit_code == 0 and "last submission: interrupted" in status.output, status.output
        assert "is gone" in status.output, status.output
        # Its lock is stale: the record names a dead process, and the kernel dropped the flock.
        holder = read_holder(root)
        assert holder is not None and holder.is_gone()
        resubmit_completes(sweep_file, root, done, ray_tmp)
    finally:
        end_processes(started)  # what the killed driver's embedded Ray left running


def test_ctrl_c_stops_cleanly_ray_shut_down_and_status_says_interrupted(tmp_path, tiny_model, ray_tmp):
    sweep_file, root, done, started, log, code = partial_run(tmp_path, tiny_model, ray_tmp, signal.SIGINT)
    try:
        output = log.read_text()
        assert code == 130, (code, output[-3000:])  # what a shell expects of a command Ctrl-C ended
        assert "interrupted" in output and "Traceback" not in output, output[-3000:]
        assert json.loads((root / "submission.json").read_text())["state"] == "interrupted"
        assert not temp_files(root), "a shard abandoned mid-write left a temporary file"
        read_whole(list(done))
        assert not (root / ".submit.lock").exists(), "the lock was not released"
        wait_for(lambda: not still_running(started), 30, f"Ray's processes gone: {still_running(started)}")
        status = CliRunner().invoke(main, ["status", str(sweep_file)])
        assert status.exit_code == 0 and "last submission: interrupted (stopped with Ctrl-C)" in status.output
        resubmit_completes(sweep_file, root, done, ray_tmp)
    finally:
        end_processes(started)


def test_sigterm_stops_like_ctrl_c(tmp_path, tiny_model, ray_tmp):
    """A preempted job gets SIGTERM: the same clean stop as Ctrl-C, exit 143, and status says
    which signal it was."""
    sweep_file, root, done, started, log, code = partial_run(tmp_path, tiny_model, ray_tmp, signal.SIGTERM)
    try:
        output = log.read_text()
        assert code == 143 and "interrupted" in output and "Traceback" not in output, (code, output[-3000:])
        assert json.loads((root / "submission.json").read_text())["stopped_by"] == "SIGTERM"
        assert not temp_files(root) and not (root / ".submit.lock").exists()
        read_whole(list(done))
        wait_for(lambda: not still_running(started), 30, f"Ray's processes gone: {still_running(started)}")
        status = CliRunner().invoke(main, ["status", str(sweep_file)])
        assert "last submission: interrupted (stopped with SIGTERM)" in status.output, status.output
        resubmit_completes(sweep_file, root, done, ray_tmp)
    finally:
        end_processes(started)


def test_a_second_submit_refuses_naming_the_first_or_waits_for_it(tmp_path, tiny_model, ray_tmp):
    sweep_file = write_sweep(tmp_path, tiny_model, shard_size=4)
    root = SweepStore(tmp_path / "results", "skeleton").root
    first = start_submit(sweep_file, ray_tmp, tmp_path / "first.log")
    try:
        wait_for(lambda: (h := read_holder(root)) is not None and h.pid == first.pid, 120, "the first holds the lock")
        began = time.monotonic()
        second = orchestrate("submit", str(sweep_file), "--no-progress", ray_tmp=ray_tmp)
        assert second.returncode == 2, second.stderr[-2000:]
        message = said(second.stderr)
        assert f"pid {first.pid} on {socket.gethostname()}, since " in message and "--wait" in message, message
        assert "Traceback" not in message and time.monotonic() - began < 60
        status = CliRunner().invoke(main, ["status", str(sweep_file)])
        assert f"running: `orchestrate submit` of {sweep_file} (pid {first.pid}" in status.output, status.output
        waiter_log = tmp_path / "waiter.log"
        waiter = start_submit(sweep_file, ray_tmp, waiter_log, "--wait")
        wait_for(lambda: "waiting for `orchestrate submit`" in said(waiter_log.read_text()) or waiter.poll() is not None,
                 120, "the waiter says whom it waits for")
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
        finished = shard_files(root)
        assert waiter.wait(timeout=120) == 0, waiter_log.read_text()[-3000:]
    finally:
        for p in (first,):
            if p.poll() is None:
                p.kill()
    assert "0 shards run, 12 already done" in said(waiter_log.read_text()), waiter_log.read_text()[-2000:]
    assert shard_files(root) == finished, "the waiter wrote shards the first had written"
    assert_every_sample_once(root, N_PROMPTS, ROWS_PER_SAMPLE)


def test_a_shard_writer_killed_at_20_random_moments_never_shows_a_partial_file(tmp_path, tiny_model):
    sweep_file = write_sweep(tmp_path, tiny_model, shard_size=4)
    sweep = load_sweep(sweep_file)
    store = SweepStore(sweep.output, sweep.name)
    expected = {store.shard_path(c.kind, "generate", c.stages["generate"], s.id): 2 * len(s.sample_ids)
                for c in make_plan(sweep).cells for s in c.shards}
    repo = Path(__file__).resolve().parents[1]

    def writer() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tests.fault_tools", "write", str(sweep_file)], cwd=repo,
                                stdout=subprocess.PIPE, text=True)

    first = writer()
    assert first.stdout is not None and first.stdout.readline() == "writing\n"
    assert first.stdout.readline() == "pass 1\n", "the writer died before a first pass"
    began = time.monotonic()
    assert first.stdout.readline() == "pass 2\n"
    one_pass = time.monotonic() - began
    first.kill()
    first.wait()
    rng = random.Random(24)
    for _ in range(20):
        w = writer()
        assert w.stdout is not None and w.stdout.readline() == "writing\n"
        assert w.stdout.readline() == "pass 1\n"  # warm (a first write loads pyarrow's codecs)
        time.sleep(rng.uniform(0, one_pass))  # anywhere in its second pass
        w.send_signal(signal.SIGKILL)
        w.wait()
        visible = {p: n for p, n in read_whole(sorted(store.root.rglob("*.parquet"))).items()}
        assert visible == expected, "a shard file is missing or holds another number of rows"
    left = temp_files(store.root)
    print(f"a pass of {len(expected)} shards took {one_pass:.3f} s; the kills left {len(left)} temporary file(s)")
    # Two stand-ins besides what the kills left: a killed writer's half file from long ago,
    # and a temporary file written after the next submit took the lock (a live writer's).
    shard = next(iter(expected))
    old = shard.with_name(f".{shard.name}.deadbeef.tmp")
    old.write_bytes(shard.read_bytes()[:500])
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    live = shard.with_name(f".{shard.name}.a11ve000.tmp")
    live.write_bytes(b"PAR1")
    os.utime(live, (time.time() + 3600, time.time() + 3600))

    runner = CliRunner()
    status = runner.invoke(main, ["status", str(sweep_file)])
    assert status.exit_code == 0 and f"{len(left) + 2} temporary file(s)" in status.output, status.output
    rows = runner.invoke(main, ["results", str(sweep_file), "--kind", "generate", "--rows", "--format", "csv"])
    assert rows.exit_code == 0 and len(rows.output.strip().splitlines()) == 1 + 2 * N_PROMPTS * 2, rows.output[-500:]
    compared = runner.invoke(main, ["compare", str(store.root)])
    assert compared.exit_code == 0, compared.output
    report = submit(sweep, sweep_file=str(sweep_file), progress=False, track=False)  # all on disk: no Ray
    assert report.ok and report.shards_run == 0
    assert temp_files(store.root) == [live], "stray temporary files not removed, or a live writer's removed"


def sync_twice_logs_each_cell_once(sweep_file: Path, root: Path, uri: str, experiment: str) -> None:
    """`orchestrate sync` (of the sweep file) logs the two cells; again (of the results folder)
    it logs nothing; MLflow holds one run per cell."""
    runner = CliRunner()
    status = runner.invoke(main, ["status", str(sweep_file)])
    assert "not in MLflow: 2 finished cell(s)" in status.output, status.output
    first = runner.invoke(main, ["sync", str(sweep_file)])
    assert first.exit_code == 0 and "2 cell run(s) logged" in first.output, first.output
    second = runner.invoke(main, ["sync", str(root)])
    assert second.exit_code == 0 and "0 cell run(s) logged" in second.output, second.output
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    cells = [r.data.tags["cell_id"] for r in runs if r.data.tags.get("kind") == "cell"]
    assert sorted(cells) == sorted({p.parent.name for p in root.glob("generate/*/cell.json")}), cells
    parents = [r for r in runs if r.data.tags.get("kind") == "submission"]
    assert len(parents) == 1 and parents[0].data.tags.get("synced") == "true"
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in runs if r not in parents)
    assert "not in MLflow" not in runner.invoke(main, ["status", str(sweep_file)]).output


def submit_without_mlflow(sweep_file: Path, ray_tmp: str, monkeypatch, why: str) -> Path:
    """`orchestrate submit` while MLflow cannot be reached: exit 0, every row on disk, and one
    line saying MLflow was skipped (`why`), no traceback. Returns the results folder."""
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    out = CliRunner().invoke(main, ["submit", str(sweep_file), "--no-progress"])
    text = said(out.output)
    assert out.exit_code == 0, out.output
    assert text.count("MLflow skipped") == 1 and why in text and "orchestrate sync" in text, out.output
    assert "Traceback" not in out.output
    root = SweepStore(sweep_file.parent / "results", "skeleton").root
    assert_every_sample_once(root, N_PROMPTS, ROWS_PER_SAMPLE)
    assert not list(root.glob("generate/*/mlflow.json"))
    return root


def test_mlflow_server_down_the_rows_land_and_sync_logs_each_cell_once_when_it_is_up(
        tmp_path, tiny_model, ray_tmp, monkeypatch):
    port = free_port()
    sweep_file = write_sweep(tmp_path, tiny_model, shard_size=12)
    sweep_file.write_text(sweep_file.read_text().replace(
        "cluster:", f"tracking: {{uri: 'http://127.0.0.1:{port}', experiment: faults}}\ncluster:"))
    began = time.monotonic()
    root = submit_without_mlflow(sweep_file, ray_tmp, monkeypatch, "no tracking server answers")
    assert time.monotonic() - began < 120, "waited on the server (MLflow's own retries take minutes)"
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--workers", "1",
               "--artifacts-destination", str(tmp_path / "server-artifacts")]
    with serving(command, port, tmp_path / "server.log", base_path="", ready_path="/health") as url:
        sync_twice_logs_each_cell_once(sweep_file, root, url, "faults")


def test_mlflow_sqlite_locked_the_rows_land_and_sync_logs_each_cell_once_when_it_is_free(
        tmp_path, tiny_model, ray_tmp, monkeypatch):
    sweep_file = write_sweep(tmp_path, tiny_model, shard_size=12)
    db = tmp_path / "results" / "skeleton" / "mlflow.db"  # the sweep's default tracking store
    db.parent.mkdir(parents=True)
    MlflowClient(f"sqlite:///{db}").search_experiments()  # MLflow's tables
    hold = "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); " \
           "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(600)"
    locker = subprocess.Popen([sys.executable, "-c", hold, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        root = submit_without_mlflow(sweep_file, ray_tmp, monkeypatch, "database is locked")
    finally:
        locker.kill()
        locker.wait()
    sync_twice_logs_each_cell_once(sweep_file, root, f"sqlite:///{db}", "skeleton")


def fill(path: Path) -> None:
    """Write to `path` until its file system is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


def test_a_full_disk_names_the_file_keeps_no_partial_shard_and_resume_works(tmp_path, tiny_model, ray_tmp):
    """The output on a 2 MiB tmpfs, filled up once two shards are on it (root mounts it: CI
    runs as root; a tmpfs is a real file system that says ENOSPC, unlike `ulimit -f`)."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs: run it as root (CI does)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        sweep_file = slow_sweep(tmp_path, tiny_model)
        sweep_file.write_text(sweep_file.read_text().replace(
            f"output: {tmp_path / 'results'}",
            f"output: {disk}\ntracking: {{uri: 'sqlite:///{tmp_path / 'mlflow.db'}'}}"))
        root = disk / "skeleton"
        log = tmp_path / "submit.log"
        driver = start_submit(sweep_file, ray_tmp, log)
        wait_for(lambda: len(shard_files(root)) >= 2 or driver.poll() is not None, 240, "two shards on disk")
        assert driver.poll() is None, log.read_text()[-3000:]
        fill(disk / "filler")
        code = driver.wait(timeout=300)
        output = log.read_text()
        assert code != 0, output[-3000:]
        assert f"{root}/submission.json: No space left on device" in output, output[-3000:]
        assert re.search(rf"{re.escape(str(root))}/generate/_stages/generate/\w+/\w+\.parquet: No space left",
                         said(output)), output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        done = shard_files(root)
        read_whole(list(done))
        assert len(done) < SHARDS and not temp_files(root)
        (disk / "filler").unlink()
        resubmit_completes(sweep_file, root, done, ray_tmp)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
