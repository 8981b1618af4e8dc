"""A new sweep's sqlite tracking database, copied from a template instead of built.

MLflow builds a new sqlite database by running its schema migrations, one after another:
2.7 s of a new sweep's submit on 2 cores, after the shards on a warm replica. The schema
is the same for every database of one MLflow version, so the first new database a machine
makes under a version is kept as that version's template (in `~/.cache/orchestrate/mlflow`,
or `$XDG_CACHE_HOME`), and later ones are copies of it.

The template holds MLflow's tables and nothing else: its Default experiment (id 0, which
MLflow makes with every new database) is deleted, because it records the artifact folder
of the process that made it. MLflow itself adds that experiment back when it opens a
database without one, with the folder of the process that opens it: a copy then ends up
exactly as MLflow would have built it. Anything unexpected (a schema that moved, a cache
that cannot be written) leaves the database to MLflow, as before.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

DEFAULT_EXPERIMENT_ID = 0  # MLflow's, in every tracking store


def template_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "orchestrate" / "mlflow"


def prepare_sqlite_db(db: Path) -> bool:
    """Put a copy of this MLflow version's template at `db` when no database is there yet
    (the template is made first if need be). True when `db` is such a copy; False leaves the
    database to MLflow (it exists already, or no template could be made)."""
    if db.exists():
        return False
    try:
        template = _template()
        db.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{db.name}.", dir=db.parent)
        os.close(fd)
        try:
            shutil.copyfile(template, tmp)
            os.link(tmp, db)  # never over a database another process made meanwhile
        finally:
            os.unlink(tmp)
        return True
    except (OSError, sqlite3.Error, ImportError):
        return False


def _template() -> Path:
    """This MLflow version's template, made by MLflow itself the first time."""
    import mlflow
    from mlflow.tracking import MlflowClient

    path = template_dir() / f"mlflow-{mlflow.__version__}.db"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        made = Path(scratch) / "template.db"
        client = MlflowClient(tracking_uri=f"sqlite:///{made}")
        client.search_experiments()  # opening the store builds every table (and the Default experiment)
        with contextlib.closing(sqlite3.connect(made)) as conn, conn:
            deleted = conn.execute("DELETE FROM experiments WHERE experiment_id = ?", (DEFAULT_EXPERIMENT_ID,))
            if deleted.rowcount != 1:
                raise sqlite3.DatabaseError("MLflow's new database has no Default experiment where expected")
        os.replace(made, path)  # whole or not at all, whoever makes it first
    return path
