"""Joining an existing Ray cluster (`--address`), with Ray's token authentication on."""
from __future__ import annotations

import os

import pytest

from orchestrator.load import load_sweep
from orchestrator.store import SweepStore
from orchestrator.submit import submit
from tests.ray_head import local_head
from tests.test_submit import N_PROMPTS, write_sweep


@pytest.fixture
def ray_head():
    """A real `ray start --head` (2 CPUs) in its own temp dir; stopped by its processes."""
    with local_head(num_cpus=2) as address:
        yield address


def test_submit_joins_existing_cluster(tmp_path, tiny_model, ray_head, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # orchestrate must turn token auth on itself
    sweep_file = write_sweep(tmp_path, tiny_model)
    sweep = load_sweep(sweep_file)
    report = submit(sweep, sweep_file=str(sweep_file), address=ray_head, progress=False)
    assert report.ok and report.replicas_started == 1
    # The head is this machine alone (2 CPUs, no autoscaler): its cores go to the replica,
    # as on an embedded Ray, not the one thread of the replica's num_cpus.
    assert report.replica_threads == {"tiny": 2}, report.replica_threads
    assert os.environ.get("RAY_AUTH_MODE") == "token"
    assert not ray.is_initialized(), "the driver disconnects when the sweep is done"
    from orchestrator.results import rows_table

    rows = rows_table(SweepStore(sweep.output, sweep.name), "generate")
    assert rows.height == 2 * N_PROMPTS * 2


def test_kept_replicas_serve_the_next_sweep_and_stop_on_request(tmp_path, tiny_model, ray_head, monkeypatch):
    """cluster.keep_replicas: the first sweep leaves its replica loaded on the cluster, a
    second sweep of the same model uses it instead of starting one, and `orchestrate
    replicas --stop` ends it."""
    import time

    from click.testing import CliRunner

    from orchestrator.cli import main
    from orchestrator.results import rows_table

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    sweep_file = write_sweep(tmp_path, tiny_model)
    kept = sweep_file.read_text().replace("dashboard: false}", "dashboard: false, keep_replicas: true}")
    assert kept != sweep_file.read_text()
    sweep_file.write_text(kept)
    first = submit(load_sweep(sweep_file), sweep_file=str(sweep_file), address=ray_head, progress=False)
    assert first.ok and (first.replicas_started, first.replicas_reused) == (1, 0)

    sweep_file.write_text(kept.replace("name: skeleton", "name: again"))
    sweep = load_sweep(sweep_file)
    second = submit(sweep, sweep_file=str(sweep_file), address=ray_head, progress=False)
    assert second.ok and (second.replicas_started, second.replicas_reused) == (1, 1)
    assert rows_table(SweepStore(sweep.output, sweep.name), "generate").height == 2 * N_PROMPTS * 2

    runner = CliRunner()
    listed = runner.invoke(main, ["replicas", "--address", ray_head])
    assert listed.exit_code == 0 and listed.output.count("running  tiny/") == 1, listed.output
    stopped = runner.invoke(main, ["replicas", "--address", ray_head, "--stop"])
    assert stopped.exit_code == 0 and "stopped  tiny/" in stopped.output, stopped.output
    deadline = time.time() + 30
    while "no kept replicas" not in (left := runner.invoke(main, ["replicas", "--address", ray_head])).output:
        assert time.time() < deadline, f"a stopped replica is still listed: {left.output}"
        time.sleep(1)
