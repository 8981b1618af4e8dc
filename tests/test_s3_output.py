"""Results on an object store: a sweep whose `output` is an s3:// URI, against a real
S3-compatible server (moto's server mode) on 127.0.0.1, through the real CLI and real Ray."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.load import load_sweep
from orchestrator.storage import ObjectPath
from orchestrator.store import SweepStore
from orchestrator.submit import submit
from tests.conftest import free_port, serving
from tests.test_submit import N_PROMPTS, ray_tmp, write_sweep  # noqa: F401  (ray_tmp: a fixture)

BUCKET = "sweeps"


@pytest.fixture
def s3(monkeypatch, tmp_path) -> str:
    """A moto S3 server with an empty bucket; the URI of a prefix in it, its endpoint in the query
    as pyarrow's S3 URIs take it. Credentials only in the environment, as on a cluster."""
    port = free_port()
    # Its own process: moto imports flask, whose request-bound globals break vLLM's kernel
    # registry when they sit in the test process's modules (`hasattr` on them raises).
    with serving([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port,
                 tmp_path / "moto.log", base_path="", ready_path="/moto-api/"):
        yield from _bucket(monkeypatch, tmp_path, port)


def _bucket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, port: int) -> Iterator[str]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                        # MLflow's s3 artifact store (boto3) finds the endpoint here, not in our URI
                        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                        "XDG_STATE_HOME": str(tmp_path / "state")}.items():
        monkeypatch.setenv(name, value)
    endpoint = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}?{endpoint}&allow_bucket_creation=true")
    fs.create_dir(BUCKET)
    yield f"s3://{BUCKET}/runs?{endpoint}"


def objects(uri: str) -> list[str]:
    root = ObjectPath.from_uri(uri)
    return sorted(i.path[len(root.path) + 1:] for i in root.fs.get_file_info(
        pafs.FileSelector(root.path, recursive=True, allow_not_found=True)) if i.type == pafs.FileType.File)


def test_a_sweep_with_its_results_on_s3(s3, tmp_path, tiny_model, ray_tmp, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    sweep_file = write_sweep(work, tiny_model)
    sweep_file.write_text(sweep_file.read_text().replace(f"output: {work / 'results'}", f'output: "{s3}"'))
    monkeypatch.chdir(work)
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    runner = CliRunner()
    out = runner.invoke(main, ["submit", str(sweep_file), "--no-progress"])
    assert out.exit_code == 0, out.output

    stored = objects(s3)
    shards = [o for o in stored if o.endswith(".parquet") and "/_stages/generate/" in o]
    assert len(shards) == 2 * N_PROMPTS // 4, stored  # 2 cells (seeds) x 24 prompts / shard_size 4
    assert sum(o.endswith("/cell.json") for o in stored) == 2 and sum(o.endswith("/summary.json") for o in stored) == 2
    assert sum(o.endswith("/stage.json") and "/_stages/" in o for o in stored) == 2 and "skeleton/submission.json" in stored, stored
    assert not [o for o in stored if o.endswith(".tmp") or ".submit.lock" in o], stored  # nothing half-written
    assert sum(o.endswith("/mlflow.json") for o in stored) == 2, out.output  # logged to MLflow
    submission = json.loads(ObjectPath.from_uri(s3).joinpath("skeleton", "submission.json").read_text())
    assert submission["state"] == "finished", submission
    assert "testing" not in json.dumps(submission)  # no credential in what the store keeps
    # Nothing went to a local results folder; the lock and the sqlite MLflow store are in the
    # local state folder, the MLflow artifacts on the store beside the results.
    assert sorted(p.name for p in work.iterdir()) == ["prompts.jsonl", "sweep.yaml"]
    client = MlflowClient(submission["tracking_uri"])
    assert submission["tracking_uri"].startswith(f"sqlite:///{tmp_path / 'state'}")
    experiment = client.get_experiment_by_name("skeleton")
    assert experiment.artifact_location == f"s3://{BUCKET}/runs/skeleton/mlartifacts"
    cell_run = client.search_runs([experiment.experiment_id], "tags.kind = 'cell'")[0]
    assert [a.path for a in client.list_artifacts(cell_run.info.run_id)] == ["tables"]
    assert any(o.startswith("skeleton/mlartifacts/") for o in objects(s3))

    out = runner.invoke(main, ["status", str(sweep_file)])
    assert out.exit_code == 0 and "finished" in out.output and "pending" not in out.output, out.output
    folder_uri = f"s3://{BUCKET}/runs/skeleton?{s3.split('?')[1]}"  # the sweep's folder, as compare takes it
    out = runner.invoke(main, ["status", folder_uri])
    assert out.exit_code == 0 and "finished" in out.output and "pending" not in out.output, out.output
    out = runner.invoke(main, ["results", str(sweep_file), "--format", "csv"])
    assert out.exit_code == 0 and len(out.output.strip().splitlines()) == 3, out.output  # a header, 2 cells
    out = runner.invoke(main, ["results", "skeleton", "--output", s3, "--kind", "generate", "--rows",
                               "--format", "json"])
    assert out.exit_code == 0 and len(json.loads(out.output)) == 2 * N_PROMPTS * 2, out.output[-500:]
    out = runner.invoke(main, ["compare", str(sweep_file), "--by", "seed", "--resamples", "100"])
    assert out.exit_code == 0 and "completion_tokens" in out.output, out.output
    out = runner.invoke(main, ["compare", folder_uri, "--resamples", "100"])
    assert out.exit_code == 0 and "completion_tokens" in out.output, out.output
    out = runner.invoke(main, ["report", str(sweep_file)])
    assert out.exit_code == 0, out.output
    assert "skeleton/report.html" in objects(s3)

    # Resume: a shard gone from the store is the only work the next submit does; a finished
    # sweep resubmitted does none.
    sweep = load_sweep(sweep_file)
    store = SweepStore(sweep.output, sweep.name)
    (store.root / shards[0][len("skeleton/"):]).unlink()
    again = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert again.ok and again.shards_run == 1 and again.generate_calls == 4, again
    done = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert done.shards_run == 0 and done.replicas_started == 0
    assert objects(s3) == sorted(set(objects(s3)))  # (listing sanity)
    assert [o for o in objects(s3) if "/_stages/generate/" in o and o.endswith(".parquet")] == shards
    assert sorted(p.name for p in work.iterdir()) == ["prompts.jsonl", "sweep.yaml"]


def test_two_runs_on_this_machine_are_kept_apart_and_another_machines_record_is_said(s3, tmp_path):
    from orchestrator.lock import LOCK_NAME, SweepBusy, read_holder, sweep_lock

    root = ObjectPath.from_uri(s3) / "locked"
    said: list[str] = []
    with sweep_lock(root, "submit", "a.yaml", warn=said.append) as held:
        assert read_holder(root) == held  # the record beside the results, for `status` anywhere
        with pytest.raises(SweepBusy, match=r"a\.yaml"):
            with sweep_lock(root, "submit"):
                pass
    assert not (root / LOCK_NAME).exists() and not said
    (root / LOCK_NAME).write_text(json.dumps({**held.__dict__, "host": "elsewhere"}))  # another machine's
    with sweep_lock(root, "submit", warn=said.append):
        pass
    assert len(said) == 1 and "elsewhere" in said[0] and "not kept apart" in said[0], said


def test_a_bad_output_uri_is_a_clear_error(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("x")
    out = CliRunner().invoke(main, ["status", "skeleton", "--output", "s3://bucket/p?bogus=1"])
    assert out.exit_code == 2 and "bogus" in out.output and "s3://bucket/p" in out.output, out.output
