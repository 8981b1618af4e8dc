"""Joining an existing Ray cluster (`--address`), with Ray's token authentication on."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestrator.load import load_sweep
from orchestrator.store import SweepStore
from orchestrator.submit import submit
from tests.test_ray_job import stop_head
from tests.test_submit import N_PROMPTS, write_sweep

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def ray_head():
    """A real `ray start --head` in its own temp dir; stopped by its processes' group."""
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    start = subprocess.Popen([RAY, "start", "--head", "--num-cpus=2", "--port=0", f"--temp-dir={temp_dir}",
                              "--include-dashboard=false", "--disable-usage-stats"], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0, out
        yield (Path(temp_dir) / "ray_current_cluster").read_text().strip()
    finally:  # this head only: `ray stop` stops every Ray on the machine, other users' too
        stop_head(temp_dir, start.pid)


def test_submit_joins_existing_cluster(tmp_path, tiny_model, ray_head, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # orchestrate must turn token auth on itself
    sweep_file = write_sweep(tmp_path, tiny_model)
    sweep = load_sweep(sweep_file)
    report = submit(sweep, sweep_file=str(sweep_file), address=ray_head, progress=False)
    assert report.ok and report.replicas_started == 1
    assert os.environ.get("RAY_AUTH_MODE") == "token"
    assert not ray.is_initialized(), "the driver disconnects when the sweep is done"
    from orchestrator.results import rows_table

    rows = rows_table(SweepStore(sweep.output, sweep.name), "generate")
    assert rows.height == 2 * N_PROMPTS * 2
