"""MLflow as a server: a sweep whose `tracking.uri` is http://... logs its runs and their
artifacts to a real `mlflow server` the test starts on 127.0.0.1 (artifacts proxied by the
server, nothing written to a local artifact folder), and `orchestrate report` attaches the
page to the sweep's run there."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.load import load_sweep
from orchestrator.store import SweepStore
from orchestrator.submit import submit
from tests.conftest import free_port, serving
from tests.report_sweeps import PROMPTS


def test_runs_and_artifacts_reach_a_tracking_server(tmp_path):
    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
               "--artifacts-destination", str(server_dir / "artifacts")]
    with serving(command, port, tmp_path / "server.log", base_path="", ready_path="/health") as url:
        sweep_file = tmp_path / "served.yaml"
        sweep_file.write_text(f"""\
name: served
output: {tmp_path / 'results'}
tracking: {{uri: "{url}", experiment: served-sweeps}}
cluster: {{num_cpus: 2, dashboard: false}}
models:
  faithful: {{path: "organism:faithful", dtype: float32, num_cpus: 1}}
jobs:
  - kind: generate
    models: [faithful]
    params: {{prompts: {PROMPTS}, limit: 4, max_tokens: 12, temperature: 0.0}}
""")
        report = submit(load_sweep(sweep_file), sweep_file=str(sweep_file), progress=False,
                        ray_temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        assert report.ok and report.cells_logged == 1, report
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("served-sweeps")
        assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:"), experiment
        (cell,) = client.search_runs([experiment.experiment_id], "tags.kind = 'cell'")
        assert cell.data.tags["job"] == "generate" and cell.data.metrics["completions"] == 4
        tables = [a.path for a in client.list_artifacts(cell.info.run_id, "tables")]
        assert any(p.endswith(".parquet") for p in tables), tables
        assert list((server_dir / "artifacts").rglob("*.parquet")), "the server keeps the artifacts"
        store = SweepStore(tmp_path / "results", "served")
        assert not (store.root / "mlartifacts").exists() and not (store.root / "mlflow.db").exists()
        page = CliRunner().invoke(main, ["report", str(store.root)])
        assert page.exit_code == 0 and "logged to MLflow run" in page.output, page.output
        parent = page.output.rsplit("logged to MLflow run ", 1)[1].split()[0]
        assert "report/report.html" in {a.path for a in client.list_artifacts(parent, "report")}
