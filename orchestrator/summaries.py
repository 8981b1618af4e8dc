"""A complete cell's summary stage: its numbers, its report table and its MLflow run.

The summary is never stored under an id (`jobs.stages`): it is computed from the cell's rows
with the summary parameters the sweep says now, so a new threshold or bootstrap costs
seconds and no model. A resubmit keeps a summary computed from the same cell (same id) by
the same code (`summary_key`) instead of reading the rows again. A cell gets a new MLflow run only when its summary
changed (new numbers, or new summary parameters); the run records the stage ids the rows
came from.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console

from jobs.job import SUBJECT, JobParams
from jobs.registry import get_job
from jobs.source_digest import import_closure, source_digest
from orchestrator import usage
from orchestrator.ids import content_id
from orchestrator.plan import Cell
from orchestrator.report import SubmitReport
from orchestrator.store import SweepStore, read_json, write_json, write_parquet
from orchestrator.tracking import Tracker, tag_text

TrackerSource = Tracker | Callable[[], Tracker | None] | None  # a tracker, or how to start one when needed


def cell_summary(store: SweepStore, manifest: dict[str, Any], params: Any,
                 rows: pl.DataFrame | None = None) -> dict[str, float]:
    """The summary of a complete cell on disk (a cell.json as `store.cells` gives it, or
    `Cell.manifest()`) with `params`: its own, or what the sweep says now. `rows`: the cell's
    rows when the caller has read them already."""
    job = get_job(manifest["kind"])
    rows = store.rows_of(manifest) if rows is None else rows
    summary = {k: float(v) for k, v in job.summarize(rows, params).items()}
    summary["rows"] = float(rows.height)
    summary["error_rows"] = float(rows["error"].is_not_null().sum())
    summary.update(usage.summary(store.cell_metadata(manifest)))
    return summary


def comparison_tags(cell: Cell) -> dict[str, str]:
    """The tags a comparison across sweeps filters a cell run on that only the job knows:
    `cot` (the subject is asked to reason in a think block, in the job's own words),
    `seed`, and `arms` where the job has arms (comma-separated, in the job's order)."""
    return job_tags(cell.kind, cell.params)


def job_tags(kind: str, params: JobParams) -> dict[str, str]:
    """comparison_tags of a cell of `kind` with `params` (a cell.json read back, for sync)."""
    job = get_job(kind)
    needs = job.needs(params).get(SUBJECT)
    tags = {"cot": tag_text(bool(needs and needs.thinks)), "seed": tag_text(getattr(params, "seed", None))}
    if kind == "misalignment":  # arms formed from the trigger, alternatives and control
        from jobs.misalignment.job import MisalignmentParams, arms

        assert isinstance(params, MisalignmentParams)
        tags["arms"] = ",".join(name for name, _ in arms(params))
    elif declared := getattr(params, "arms", None):  # arms named in the params (decompose)
        tags["arms"] = ",".join(declared)
    return tags


SUMMARY_KEY = "summary.key.json"  # what the summary.json beside it was computed from


@functools.cache
def summary_code(kind: str) -> str:
    """The code a kind's summary comes from: its job's modules and this one's (syntax trees,
    so comments and moves do not count), and the libraries that compute it. Computed once per
    process; submit asks for it before any thread of its own starts (see source_digest)."""
    modules = import_closure([type(get_job(kind)).__module__, __name__, usage.__name__],
                             lambda m: m.startswith("jobs.") or m in (__name__, usage.__name__))
    return content_id({"code": source_digest(modules), "polars": pl.__version__, "numpy": np.__version__})


def summary_key(cell: Cell) -> str:
    """What a complete cell's summary follows from: the cell (its id covers its stages, hence
    every input of its rows, and its summary parameters) and the code that summarises it."""
    return content_id({"cell": cell.id, "code": summary_code(cell.kind)})


def kept_summary(store: SweepStore, cell: Cell, key: str) -> dict[str, float] | None:
    """The summary on disk when it was computed from this very cell and code, else None. A
    resubmit of a big finished sweep then reads no rows (reading 100M rows to recompute the
    same numbers took most of a minute: benchmarks/plan_scale.py)."""
    cell_dir = store.cell_dir(cell.kind, cell.id)
    kept, summary = cell_dir / SUMMARY_KEY, cell_dir / "summary.json"
    if not (kept.exists() and summary.exists()) or read_json(kept).get("key") != key:
        return None
    values = read_json(summary)
    return values if isinstance(values, dict) else None


def summary_digest(cell_id: str, summary: dict[str, float]) -> str:
    """What a cell's MLflow run shows: the numbers (its id covers the summary parameters)."""
    return content_id({"cell": cell_id, "summary": summary})


class TrackingGate:
    """How a submission (or a sync) reaches MLflow: started the first time something is
    logged; when MLflow cannot be reached then or later (a server that is down, a locked
    sqlite file), it says so in one line and logs nothing more. The cells it did not log have
    no mlflow.json, so `orchestrate sync` logs them later; the rows are on disk either way."""

    def __init__(self, start: Callable[[], Tracker], console: Console, uri: str, later: str) -> None:
        """`start`: make the Tracker (and its parent run); `later`: the command that logs
        what was skipped."""
        self._start, self.console, self.uri, self.later = start, console, uri, later
        self.tracker: Tracker | None = None
        self.skipped = ""  # why MLflow was skipped; empty while it works
        self._lock = threading.Lock()  # cells finish in worker threads

    def __call__(self) -> Tracker | None:
        with self._lock:
            if self.tracker is None and not self.skipped:
                try:
                    self.tracker = self._start()
                except Exception as e:
                    self._skip(e)
            return None if self.skipped else self.tracker

    def skip(self, error: BaseException) -> None:
        with self._lock:
            self._skip(error)

    def _skip(self, error: BaseException) -> None:
        if self.skipped:
            return
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        self.skipped = f"{type(error).__name__}: {first_line}"
        self.console.print(f"[yellow]MLflow skipped ({self.uri}: {self.skipped}); the results are on disk. "
                           f"Log them later with: {self.later}")


def finish_cell(store: SweepStore, tracker: TrackerSource, cell: Cell, report: SubmitReport,
                earlier_rows: bool = False) -> None:
    """Summarise a complete cell and log it to MLflow when that summary is not there yet.
    `earlier_rows`: every row was on disk before this submission, so a run of this very
    summary may already be in MLflow (a crash between logging it and writing mlflow.json):
    that run is adopted, not repeated."""
    job = get_job(cell.kind)
    manifest = cell.manifest()
    cell_dir = store.cell_dir(cell.kind, cell.id)
    key = summary_key(cell)
    summary = kept_summary(store, cell, key) if earlier_rows else None
    if summary is None:
        rows = store.rows_of(manifest)  # read once for the summary and the job's table
        summary = cell_summary(store, manifest, cell.params, rows)
        table = job.report(rows, cell.params)
        if table is not None:
            write_parquet(cell_dir / "report.parquet", table)
        write_json(cell_dir / "summary.json", summary)
        write_json(cell_dir / SUMMARY_KEY, {"key": key})  # after the summary: a crash between means a recompute
        report.cells_summarised += 1
    if log_summary(store, tracker, manifest, cell.params, summary, earlier_rows) == "logged":
        report.cells_logged += 1


def log_summary(store: SweepStore, source: TrackerSource, manifest: dict[str, Any], params: JobParams,
                summary: dict[str, float], earlier_rows: bool) -> str:
    """Log a cell's summary (with its report table, when it has one) unless its mlflow.json
    says this very summary is logged. Returns "logged", "adopted" (a finished run of it was
    found: see finish_cell), "present" (nothing to do) or "skipped" (no MLflow). MLflow
    failing through a TrackingGate skips MLflow; through a plain Tracker it raises."""
    cell_id, kind = manifest["cell_id"], manifest["kind"]
    cell_dir = store.cell_dir(kind, cell_id)
    digest = summary_digest(cell_id, summary)
    logged = cell_dir / "mlflow.json"
    if logged.exists() and read_json(logged).get("summary_digest") == digest:
        return "present"
    tags = {**{f"stage.{stage}": info["id"] for stage, info in manifest["stages"].items()},
            "summary_digest": digest, **job_tags(kind, params)}
    files = tuple(f for f in (cell_dir / "report.parquet",) if f.exists())
    last_stage, info = list(manifest["stages"].items())[-1]
    tracker = source() if callable(source) else source
    if tracker is None:
        return "skipped"
    try:
        run_id = tracker.finished_cell_run(cell_id, digest) if earlier_rows else None
        outcome = "adopted" if run_id else "logged"
        if run_id is None:
            run_id = tracker.log_cell(manifest, summary, store.stage_dir(kind, last_stage, info["id"]), files, tags)
    except Exception as e:
        if not isinstance(source, TrackingGate):
            raise
        source.skip(e)
        return "skipped"
    write_json(logged, {"run_id": run_id, "tracking_uri": tracker.uri, "summary_digest": digest})
    return outcome


def finish_cell_or_say_why(store: SweepStore, tracker: TrackerSource, cell: Cell, report: SubmitReport,
                           console: Console, earlier_rows: bool = False) -> None:
    """finish_cell, but a failure (a job's summary that raises, a full disk) is reported and
    noted, not fatal to the other cells: the rows are safe on disk and the next submit
    summarises the cell again. (MLflow failing is not such a failure: see TrackingGate.)"""
    try:
        finish_cell(store, tracker, cell, report, earlier_rows)
    except Exception as e:
        report.cells_unfinished.append(cell.id)
        console.log(f"[red]cell {cell.id} of {cell.kind}/{cell.model}: summary or logging failed: "
                    f"{type(e).__name__}: {e}")


def sync_cells(store: SweepStore, source: TrackingGate, only: set[str] | None = None) -> dict[str, int]:
    """Log every complete cell on disk (of `only`, when given) whose summary.json is not in
    MLflow yet, as the submit that skipped MLflow would have: counts per outcome of
    log_summary. A run logged before its mlflow.json was written is adopted, not repeated."""
    counts: dict[str, int] = {}
    for manifest in store.cells():
        if (only is not None and manifest["cell_id"] not in only) or manifest["summary"] is None \
                or not store.is_complete(manifest):
            continue
        summary = manifest.pop("summary")
        params = get_job(manifest["kind"]).Params.model_validate(manifest["params"])
        outcome = log_summary(store, source, manifest, params, summary, earlier_rows=True)
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == "skipped":
            break  # MLflow is still unreachable: said once, nothing more to try
    return counts
