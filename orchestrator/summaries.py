"""A complete cell's summary stage: its numbers, its report table and its MLflow run.

The summary is never stored under an id (`jobs.stages`): it is recomputed from the cell's
rows on every submit, with the summary parameters the sweep says now, so a new threshold or
bootstrap costs seconds and no model. A cell gets a new MLflow run only when its summary
changed (new numbers, or new summary parameters); the run records the stage ids the rows
came from.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console

from jobs.job import SUBJECT
from jobs.registry import get_job
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
    job = get_job(cell.kind)
    needs = job.needs(cell.params).get(SUBJECT)
    tags = {"cot": tag_text(bool(needs and needs.thinks)), "seed": tag_text(getattr(cell.params, "seed", None))}
    if cell.kind == "misalignment":  # arms formed from the trigger, alternatives and control
        from jobs.misalignment.job import MisalignmentParams, arms

        assert isinstance(cell.params, MisalignmentParams)
        tags["arms"] = ",".join(name for name, _ in arms(cell.params))
    elif declared := getattr(cell.params, "arms", None):  # arms named in the params (decompose)
        tags["arms"] = ",".join(declared)
    return tags


def summary_digest(cell: Cell, summary: dict[str, float]) -> str:
    """What a cell's MLflow run shows: the numbers (its id covers the summary parameters)."""
    return content_id({"cell": cell.id, "summary": summary})


def finish_cell(store: SweepStore, tracker: TrackerSource, cell: Cell, report: SubmitReport,
                earlier_rows: bool = False) -> None:
    """Summarise a complete cell and log it to MLflow when that summary is not there yet.
    `earlier_rows`: every row was on disk before this submission, so a run of this very
    summary may already be in MLflow (a crash between logging it and writing mlflow.json):
    that run is adopted, not repeated."""
    job = get_job(cell.kind)
    manifest = cell.manifest()
    rows = store.rows_of(manifest)  # read once: every submit summarises every complete cell
    summary = cell_summary(store, manifest, cell.params, rows)
    cell_dir = store.cell_dir(cell.kind, cell.id)
    table = job.report(rows, cell.params)
    files: tuple[Path, ...] = ()
    if table is not None:
        write_parquet(cell_dir / "report.parquet", table)
        files = (cell_dir / "report.parquet",)
    write_json(cell_dir / "summary.json", summary)
    report.cells_summarised += 1
    digest = summary_digest(cell, summary)
    logged = cell_dir / "mlflow.json"
    if logged.exists() and read_json(logged).get("summary_digest") == digest:
        return
    tracker = tracker() if callable(tracker) else tracker
    if tracker is None:
        return
    run_id = tracker.finished_cell_run(cell.id, digest) if earlier_rows else None
    if run_id is None:
        tags = {**{f"stage.{stage}": sid for stage, sid in cell.stages.items()}, "summary_digest": digest,
                **comparison_tags(cell)}
        final = store.stage_dir(cell.kind, cell.last_stage, cell.stages[cell.last_stage])
        run_id = tracker.log_cell(manifest, summary, final, files, tags)
        report.cells_logged += 1
    write_json(logged, {"run_id": run_id, "tracking_uri": tracker.uri, "summary_digest": digest})


def finish_cell_or_say_why(store: SweepStore, tracker: TrackerSource, cell: Cell, report: SubmitReport,
                           console: Console, earlier_rows: bool = False) -> None:
    """finish_cell, but a failure (a job's summary that raises, MLflow down) is reported and
    noted, not fatal to the other cells: the rows are safe on disk and the next submit
    summarises the cell again."""
    try:
        finish_cell(store, tracker, cell, report, earlier_rows)
    except Exception as e:
        report.cells_unfinished.append(cell.id)
        console.log(f"[red]cell {cell.id} of {cell.kind}/{cell.model}: summary or logging failed: "
                    f"{type(e).__name__}: {e}")
