"""Reading results back: the per-cell summary table, the rows, and the jobs' own reports."""
from __future__ import annotations

import fnmatch
import json

import polars as pl

from orchestrator.store import SweepStore


def summary_table(store: SweepStore, kind: str | None = None) -> pl.DataFrame:
    """One row per cell: job, model, the swept point, and its summary metrics."""
    records = []
    for cell in store.cells(kind):
        rec = {"kind": cell["kind"], "model": cell["model"], "cell_id": cell["cell_id"],
               "shards": len(cell["shards"]), "complete": cell["summary"] is not None}
        rec.update({f"{k}": v for k, v in cell["point"].items() if not isinstance(v, (list, dict))})
        rec.update(cell["summary"] or {})
        records.append(rec)
    if not records:
        return pl.DataFrame()
    return pl.DataFrame(records, infer_schema_length=None).sort(["kind", "model", "cell_id"])


def rows_table(store: SweepStore, kind: str) -> pl.DataFrame:
    rows = store.scan_kind(kind)
    return pl.DataFrame() if rows is None else rows.collect()


def report_table(store: SweepStore, kind: str) -> pl.DataFrame:
    """Each cell's `Job.report` (recomputed from its rows and params), with the cell's model
    and id in front; empty when the job has no report or nothing is on disk."""
    from jobs.registry import get_job

    job = get_job(kind)
    parts = []
    for cell in store.cells(kind):
        if not store.is_complete(cell):  # a report of part of a cell would read as the whole
            continue
        rows = store.read_cell(kind, cell["cell_id"])
        if rows.is_empty():
            continue
        table = job.report(rows, job.Params.model_validate(cell["params"]))
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
    from jobs.registry import get_job

    patterns = [p for k in df["kind"].unique().sort() for p in get_job(k).headline]
    if not patterns:
        return df.columns
    swept = {k for cell in store.cells(kind) for k, v in cell["point"].items() if not isinstance(v, (list, dict))}
    varying = [c for c in df.columns if c in swept and df[c].n_unique() > 1]
    metrics = [c for p in patterns for c in df.columns if fnmatch.fnmatchcase(c, p)]
    return list(dict.fromkeys(["kind", "model", *varying, *metrics]))
