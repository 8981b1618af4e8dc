"""Reading results back: the per-cell summary table, the rows, and the jobs' own reports.

Summaries are the summary stage's (`jobs.stages`): recomputed here from the stored rows. Given
a sweep file, the cells are those the file asks for now, so a threshold edited in the file
shows without a submit (the rows it reads are on disk); given a sweep name, the cells on disk.
Rows carry the summary stage's derived columns (`Job.derive`) and the id of the cell they are
read for.
"""
from __future__ import annotations

import fnmatch
import json
from typing import Any

import polars as pl

from jobs.job import JobParams
from jobs.registry import get_job
from orchestrator.spec import Sweep
from orchestrator.store import SweepStore
from orchestrator.summaries import cell_summary


def cells_of(store: SweepStore, kind: str | None, sweep: Sweep | None) -> list[tuple[dict[str, Any], JobParams]]:
    """(manifest, params) of the cells the sweep file asks for now, or of those on disk."""
    if sweep is None:
        return [(cell, get_job(cell["kind"]).Params.model_validate(cell["params"])) for cell in store.cells(kind)]
    from orchestrator.plan import make_plan

    planned = store.settle_plan(make_plan(sweep)).cells
    return [(c.manifest(), c.params) for c in planned if kind is None or c.kind == kind]


def summary_table(store: SweepStore, kind: str | None = None, sweep: Sweep | None = None) -> pl.DataFrame:
    """One row per cell: job, model, the swept point, and its summary metrics (complete cells)."""
    records = []
    for cell, params in cells_of(store, kind, sweep):
        complete = store.is_complete(cell)
        rec = {"kind": cell["kind"], "model": cell["model"], "cell_id": cell["cell_id"],
               "shards": len(cell["stages"]["generate"]["shards"]), "complete": complete}
        rec.update({k: v for k, v in cell["point"].items() if not isinstance(v, (list, dict))})
        if complete:
            rec.update(cell_summary(store, cell, params))
        records.append(rec)
    if not records:
        return pl.DataFrame()
    return pl.DataFrame(records, infer_schema_length=None).sort(["kind", "model", "cell_id"])


def rows_table(store: SweepStore, kind: str, sweep: Sweep | None = None) -> pl.DataFrame:
    """Every row of one job kind on disk, cell by cell, with the derived columns."""
    job = get_job(kind)
    parts = []
    for cell, params in cells_of(store, kind, sweep):
        stage = list(cell["stages"])[-1]
        if store.shards_done(cell, stage):
            parts.append(job.derive(store.rows_of(cell), params))
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def report_table(store: SweepStore, kind: str, sweep: Sweep | None = None) -> pl.DataFrame:
    """Each cell's `Job.report` (recomputed from its rows and params), with the cell's model
    and id in front; empty when the job has no report or nothing is on disk."""
    job = get_job(kind)
    parts = []
    for cell, params in cells_of(store, kind, sweep):
        if not store.is_complete(cell):  # a report of part of a cell would read as the whole
            continue
        rows = store.rows_of(cell)
        if rows.is_empty():
            continue
        table = job.report(rows, params)
        if table is None:
            return pl.DataFrame()
        parts.append(table.select(pl.lit(cell["model"]).alias("model"), pl.lit(cell["cell_id"]).alias("cell_id"),
                                  pl.exclude("model", "cell_id")))
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def flat_for_csv(df: pl.DataFrame) -> pl.DataFrame:
    """CSV holds no lists or structs: those columns become JSON text."""
    nested = [c for c, dtype in df.schema.items() if dtype.is_nested()]
    return df.with_columns(pl.Series(c, [None if v is None else json.dumps(v, default=str) for v in df[c].to_list()],
                                     dtype=pl.String) for c in nested)


def headline_columns(df: pl.DataFrame, store: SweepStore, kind: str | None = None) -> list[str]:
    """The summary's columns worth a terminal: kind, model, the swept values that differ
    between the cells shown, then each job's `headline` metrics. All columns when no job
    names a headline."""
    patterns = [p for k in df["kind"].unique().sort() for p in get_job(k).headline]
    if not patterns:
        return df.columns
    swept = {k for cell in store.cells(kind) for k, v in cell["point"].items() if not isinstance(v, (list, dict))}
    varying = [c for c in df.columns if c in swept and df[c].n_unique() > 1]
    metrics = [c for p in patterns for c in df.columns if fnmatch.fnmatchcase(c, p)]
    return list(dict.fromkeys(["kind", "model", *varying, *metrics]))
