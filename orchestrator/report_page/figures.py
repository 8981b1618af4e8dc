"""Which figures a sweep's page shows: each job kind's, from its comparison and, where a figure
needs them, its rows (phi's distribution) or its own report table (a scan's ranking)."""
from __future__ import annotations

from collections.abc import Callable

import polars as pl

from jobs.registry import get_job
from orchestrator.compare import CellRef, Comparison
from orchestrator.compare.gather import CELL, row_values
from orchestrator.compare.table import default_by
from orchestrator.figures import ariadne, decompose, generate, misalignment, trigger_scan
from orchestrator.figures.common import Figure

FromMeans = Callable[[pl.DataFrame, list[str]], Figure | None]
BY_MEANS: dict[str, tuple[FromMeans, ...]] = {
    "misalignment": misalignment.FIGURES, "ariadne": ariadne.FIGURES, "decompose": decompose.FIGURES,
    "generate": generate.FIGURES,
}


def kind_figures(kind: str, cells: list[CellRef], comparison: Comparison) -> list[Figure]:
    keys = default_by(cells)
    means = comparison.means.filter(pl.col("kind") == kind) if not comparison.means.is_empty() else pl.DataFrame()
    out = [f for make in BY_MEANS.get(kind, ()) if (f := make(means, keys)) is not None]
    if kind == "ariadne":
        out += [f for f in [_phi_distribution(cells, keys)] if f is not None]
    if kind == "trigger_scan":
        true = {c.id: getattr(c.params, "true_trigger", None) for c in cells}
        if (f := trigger_scan.ranking(_rankings(cells), true)) is not None:
            out.append(f)
    return out


def _rankings(cells: list[CellRef]) -> pl.DataFrame:
    """Each scanned cell's ranked candidates (`Job.report`), read from the cells on the page
    only, with the cell's model and id."""
    parts = []
    for c in cells:
        table = get_job(c.kind).report(c.store.rows_of(c.manifest), c.params)
        if table is not None and table.height:
            parts.append(table.with_columns(model=pl.lit(c.manifest["model"]), cell_id=pl.lit(c.id)))
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def _phi_distribution(cells: list[CellRef], keys: list[str]) -> Figure | None:
    values = row_values("ariadne", cells, ["phi", "baseline_phi"])
    if values.is_empty():
        return None
    labels = pl.DataFrame([{CELL: c.key, **{k: c.keys.get(k) for k in keys}} for c in cells],
                          schema={CELL: pl.String, **dict.fromkeys(keys, pl.String)})
    values = values.join(labels, on=CELL).with_columns(
        arm=pl.when(pl.col("measure") == "phi").then(pl.lit("intervention")).otherwise(pl.lit("baseline")))
    return ariadne.phi_distribution(values, keys)
