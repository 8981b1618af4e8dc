"""Reading results back: the per-cell summary table and the rows, with polars."""
from __future__ import annotations

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
    return store.scan_kind(kind).collect()
