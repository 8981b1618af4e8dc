"""`orchestrate submit/status/cancel --address http://...`: a sweep as a Ray Job, against a
real `ray start --head` on this machine (its own temp dir and ports, token auth on), driven
through the command line as a user would."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.ray_job import base_submission_id
from orchestrator.results import rows_table
from orchestrator.store import SweepStore
from tests.conftest import free_port
from tests.ray_head import stop_head

VENV_BIN = Path(sys.executable).parent
PROMPTS = 4
SENTINEL = "sk-sentinel-2b7f0c1e9d"  # an API key's value: must never reach the cluster's job records
KEY_VAR = "ORCH_TEST_API_KEY"


@pytest.fixture(scope="module")
def dashboard() -> Iterator[str]:
    """A `ray start --head` with its dashboard on 127.0.0.1 and every port its own (other
    engineers' Ray runs on this machine too); its URL, as `ray job submit` takes it."""
    temp_dir = tempfile.mkdtemp(prefix="rayj-", dir="/tmp")  # Ray's socket paths must stay short
    ports = {name: free_port() for name in ("port", "dashboard-port", "dashboard-agent-listen-port",
                                            "dashboard-agent-grpc-port", "metrics-export-port",
                                            "runtime-env-agent-port", "ray-client-server-port")}
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", KEY_VAR)}
    # A job's entrypoint finds `python` on the PATH, as in a cluster's image.
    env.update(RAY_AUTH_MODE="token", PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    start = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--num-cpus=2", f"--temp-dir={temp_dir}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
         *(f"--{name}={port}" for name, port in ports.items())],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0, out
        yield f"http://127.0.0.1:{ports['dashboard-port']}"
    finally:
        stop_head(temp_dir, start.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def orchestrate_env() -> dict[str, str]:
    """The user's shell: an API key set here, no RAY_AUTH_MODE (orchestrate turns token auth
    on itself when a token is at hand)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env[KEY_VAR] = SENTINEL
    return env


def orchestrate(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=orchestrate_env(), text=True, check=False,
                          capture_output=True, timeout=timeout)


def write_sweep(folder: Path) -> Path:
    """A small sweep whose data sits beside its folder (`../data`): it must reach the job at
    the same place relative to the sweep. An API model, unused, names the key variable."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    prompts = Path(__file__).resolve().parents[1] / "examples" / "data" / "arithmetic_prompts.jsonl"
    (folder / "data" / "prompts.jsonl").write_text("".join(prompts.read_text().splitlines(True)[:PROMPTS]))
    (folder / "sweeps").mkdir(exist_ok=True)
    sweep = folder / "sweeps" / "tiny.yaml"
    sweep.write_text(f"""name: rayjob
models:
  faithful: {{path: "organism:faithful"}}
  api: {{path: some-model, engine: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: {KEY_VAR}}}
jobs:
  - kind: generate
    models: [faithful]
    params: {{prompts: ../data/prompts.jsonl, max_tokens: 16, temperature: 0.7, seed: 0}}
""")
    return sweep


def words(text: str) -> str:
    """`text` with its line breaks as spaces: the job's console wraps long lines (no terminal)."""
    return " ".join(text.split())


def job_client(url: str):
    from cluster.connect import job_submission_client

    return job_submission_client(url)


def test_submit_runs_a_ray_job_and_a_second_submit_attaches(tmp_path, dashboard):
    assert httpx.get(f"{dashboard}/api/jobs/").status_code == 401, "the head must ask for its token"
    sweep, output = write_sweep(tmp_path), tmp_path / "results"
    base = base_submission_id("rayjob", str(output))

    started = time.perf_counter()
    first = orchestrate("submit", str(sweep), "--address", dashboard, "--output", str(output), "--detach")
    assert first.returncode == 0, first.stderr
    assert f"submitted Ray job {base} " in first.stderr
    assert f"the job reads {KEY_VAR} from the cluster's environment" in first.stderr

    attached = orchestrate("submit", str(sweep), "--address", dashboard, "--output", str(output))
    assert attached.returncode == 0, attached.stdout + attached.stderr
    assert f"attached to the running Ray job {base} " in attached.stderr
    assert "rayjob: 1 shards run, 0 already done, 0 failed" in words(attached.stdout), attached.stdout  # its log
    assert f"Ray job {base}: SUCCEEDED" in attached.stderr
    print(f"submitted, ran and followed in {time.perf_counter() - started:.1f}s")

    client = job_client(dashboard)
    ours = [job for job in client.list_jobs() if (job.submission_id or "").startswith(base)]
    assert [job.submission_id for job in ours] == [base], "the second submit attached instead of submitting"
    info = client.get_job_info(base)
    assert info.runtime_env["working_dir"].startswith("gcs://"), "code and data travel in the job's package"
    assert info.metadata["orchestrate_keys_from_cluster_env"] == KEY_VAR
    assert SENTINEL not in json.dumps(info.model_dump(), default=str), "an API key's value reached the job's record"
    assert rows_table(SweepStore(output, "rayjob"), "generate").height == PROMPTS


def test_ctrl_c_detaches_and_cancel_stops_the_job(tmp_path, dashboard):
    sweep, output = write_sweep(tmp_path), tmp_path / "results"
    base = base_submission_id("rayjob", str(output))
    follower = subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", str(sweep), "--address", dashboard,
                                 "--output", str(output)], env=orchestrate_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert follower.stderr is not None
    for line in follower.stderr:  # following from here on
        if line.startswith("submitted Ray job"):
            break
    time.sleep(1)
    follower.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = follower.communicate(timeout=60)
    assert follower.returncode == 130, err
    assert f"detached: Ray job {base} keeps running" in err and "orchestrate cancel" in err
    assert not job_client(dashboard).get_job_status(base).is_terminal()

    running = orchestrate("status", str(sweep), "--address", dashboard, "--output", str(output))
    assert running.returncode == 0, running.stderr
    assert any(f"Ray job {base}: {state}" in running.stdout for state in ("PENDING", "RUNNING")), running.stdout

    started = time.perf_counter()
    cancelled = orchestrate("cancel", str(sweep), "--address", dashboard, "--output", str(output))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"Ray job {base}: STOPPED" in cancelled.stdout, cancelled.stdout
    print(f"cancel returned in {time.perf_counter() - started:.1f}s")

    stopped = orchestrate("status", str(sweep), "--address", dashboard, "--output", str(output))
    assert stopped.returncode == 0, stopped.stderr
    assert f"Ray job {base}: STOPPED" in stopped.stdout, stopped.stdout
    by_name = orchestrate("status", "rayjob", "--address", dashboard)  # found by the job's metadata
    assert by_name.returncode == 0 and f"Ray job {base}: STOPPED" in by_name.stdout, by_name.stdout + by_name.stderr
    again = orchestrate("cancel", str(sweep), "--address", dashboard, "--output", str(output))
    assert again.returncode == 0 and "nothing to cancel" in again.stdout, again.stdout + again.stderr

    # After it ended, the next submit is a new job (Ray never reuses an id); the head's
    # teardown stops it.
    resubmitted = orchestrate("submit", str(sweep), "--address", dashboard, "--output", str(output), "--detach")
    assert resubmitted.returncode == 0, resubmitted.stderr
    assert f"submitted Ray job {base}-2 " in resubmitted.stderr


def test_a_ray_job_needs_an_output_the_cluster_can_reach(tmp_path):
    sweep = write_sweep(tmp_path)
    relative = orchestrate("submit", str(sweep), "--address", "http://127.0.0.1:9")
    assert relative.returncode == 2
    assert "'results' is a relative path" in relative.stderr and "s3://" in relative.stderr
    nobody = orchestrate("submit", str(sweep), "--address", "http://127.0.0.1:9", "--output", str(tmp_path / "r"))
    assert nobody.returncode == 2 and "no Ray dashboard answers there" in nobody.stderr, nobody.stderr
    sweep.write_text(sweep.read_text() + "tracking: {uri: 'sqlite:///mlflow.db'}\n")
    tracking = orchestrate("submit", str(sweep), "--address", "http://127.0.0.1:9", "--output", str(tmp_path / "r"))
    assert tracking.returncode == 2 and "tracking.uri: 'sqlite:///mlflow.db' names a relative path" in tracking.stderr
    detached_here = orchestrate("submit", str(sweep), "--detach")
    assert detached_here.returncode == 2 and "--detach" in detached_here.stderr
