"""A new sweep's tracking database copied from a template ends up as MLflow builds one."""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.tracking_db import prepare_sqlite_db, template_dir

CONSTRAINT_STARTS = ("CONSTRAINT", "CHECK", "FOREIGN KEY", "UNIQUE", "PRIMARY KEY")


def schema(db: Path) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """Every table and index: its columns in order and its constraints as a set. MLflow's own
    migrations write a rebuilt table's constraints in an order that varies from process to
    process (two databases it builds itself differ so), which changes nothing they do."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        found = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    out = []
    for kind, name, sql in found:
        lines = [line.strip().rstrip(",").strip() for line in sql.splitlines() if line.strip()]
        constraints = tuple(sorted(line for line in lines if line.startswith(CONSTRAINT_STARTS)))
        out.append((kind, name, tuple(line for line in lines if not line.startswith(CONSTRAINT_STARTS)), constraints))
    return sorted(out)


def default_experiment(db: Path) -> tuple:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT name, artifact_location, lifecycle_stage FROM experiments "
                            "WHERE experiment_id = 0").fetchone()


def test_a_copied_database_is_the_database_mlflow_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # MLflow's Default experiment keeps its artifacts under the cwd
    built, copied = tmp_path / "built" / "mlflow.db", tmp_path / "copied" / "mlflow.db"
    built.parent.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{built}").search_experiments()

    assert prepare_sqlite_db(copied), "a new database is a copy of the template"
    templates = list(template_dir().glob("mlflow-*.db"))
    assert len(templates) == 1, templates
    assert default_experiment(templates[0]) is None, "the template leaves the Default experiment to MLflow"
    client = MlflowClient(tracking_uri=f"sqlite:///{copied}")
    assert schema(copied) == schema(built), "every table, index and migration of MLflow's own"
    assert default_experiment(copied) == default_experiment(built), "MLflow adds the Default experiment as it would"

    experiment = client.create_experiment("sweep", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment).info.run_id
    client.log_metric(run, "accuracy", 0.5)
    assert client.get_run(run).data.metrics == {"accuracy": 0.5}

    again = tmp_path / "again" / "mlflow.db"
    assert prepare_sqlite_db(again) and schema(again) == schema(built), "the next one copies the same template"


def test_an_existing_database_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db = tmp_path / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    kept = client.create_experiment("kept", artifact_location=str(tmp_path / "artifacts"))
    assert not prepare_sqlite_db(db)
    assert client.get_experiment(kept).name == "kept"
    assert not template_dir().exists(), "no template is made for a database that exists"
