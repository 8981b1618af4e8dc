"""From Parquet rows to sums per unit, lazily: the only pass over the rows a comparison makes.

A mean with a cluster-bootstrap interval needs, per independent unit, the sum of the values
and their count; nothing else. So each measure becomes one lazy query over the cells' shard
files (only the columns it reads), grouped by cell, split values and unit, and the rows never
sit in memory. Cells whose parameters are equal share one scan of all their files; a file
shared by several such cells (two thresholds over one judging stage) is read once and joined
to each.
"""
from __future__ import annotations

import json
from collections import defaultdict

import polars as pl

from jobs.measures import Measure
from jobs.registry import get_job
from orchestrator.compare.sources import CellRef
from orchestrator.storage import polars_source

FILE = "_file"
CELL = "cell_id"  # holds CellRef.key: a cell among all the sources compared


def _signature(measures: tuple[Measure, ...]) -> str:
    """What the measures compute, as text: cells whose measures read their rows the same way
    (most cells: a threshold is the usual difference) share one scan."""
    return json.dumps([[m.name, m.unit, list(m.split), m.value.meta.serialize(format="json"),
                        m.where.meta.serialize(format="json")] for m in measures])


def _param_groups(cells: list[CellRef]) -> list[list[CellRef]]:
    by_params: dict[str, list[CellRef]] = defaultdict(list)
    for c in cells:
        by_params[json.dumps(c.manifest["params"], sort_keys=True, default=str)].append(c)
    groups: dict[str, list[CellRef]] = defaultdict(list)
    for same in by_params.values():
        groups[_signature(get_job(same[0].kind).measures(same[0].params))] += same
    return list(groups.values())


def measures_of(kind: str, cells: list[CellRef]) -> dict[str, Measure]:
    """The kind's measures by name, as its first cell's parameters define them (the names are
    the same for every cell of a kind; the expressions may differ by threshold)."""
    return {m.name: m for m in get_job(kind).measures(cells[0].params)}


def unit_sums(kind: str, cells: list[CellRef], names: list[str] | None = None) -> dict[str, pl.DataFrame]:
    """Per measure name: one row per (cell_id, split values..., unit) with `s` (the sum of the
    values), `n` (their count). `names`: only these measures."""
    job = get_job(kind)
    queries: dict[str, list[pl.LazyFrame]] = defaultdict(list)
    for group in _param_groups(cells):
        measures = [m for m in job.measures(group[0].params) if names is None or m.name in names]
        if not measures:
            continue
        owners = pl.DataFrame([{FILE: str(f), CELL: c.key} for c in group for f in c.files()],
                              schema={FILE: pl.String, CELL: pl.String})
        columns = sorted(set().union(*(m.columns() for m in measures)))
        # every file of the group in one scan; a column an old file lacks reads as null. Files
        # on an object store are read by polars itself (s3://, gs://), with the store's endpoint.
        options = polars_source([f for c in group[:1] for f in c.files()[:1]])[1]
        rows = pl.scan_parquet(owners[FILE].unique().to_list(), include_file_paths=FILE, storage_options=options,
                               missing_columns="insert", extra_columns="ignore").select(
            pl.col(FILE).cast(pl.Categorical), *columns)  # a path per row as text: a third of the memory
        for m in measures:
            keys = [*m.split, m.unit]
            per_file = (rows.filter(m.where & m.value.is_not_null())
                        .group_by(FILE, *keys).agg(s=m.value.cast(pl.Float64).sum(), n=pl.len()))
            queries[m.name].append(per_file.with_columns(pl.col(FILE).cast(pl.String))
                                   .join(owners.lazy(), on=FILE).group_by(CELL, *keys)
                                   .agg(pl.col("s").sum(), pl.col("n").sum())
                                   # keys compare as text; a null split value is its own series
                                   .with_columns(pl.col(keys).cast(pl.String).fill_null("(none)")))
    flat = [(name, q) for name, qs in queries.items() for q in qs]
    frames = pl.collect_all([q for _, q in flat], engine="streaming")  # rows pass through, never all held
    out: dict[str, list[pl.DataFrame]] = defaultdict(list)
    for (name, _), frame in zip(flat, frames):
        out[name].append(frame)
    return {name: pl.concat(parts, how="vertical_relaxed") for name, parts in out.items()}


def row_values(kind: str, cells: list[CellRef], names: list[str]) -> pl.DataFrame:
    """The values themselves (for a distribution): cell_id, measure, the split columns, value.
    One column per row: cheap next to the rows, but not meant for ten million of them."""
    job = get_job(kind)
    parts = []
    for group in _param_groups(cells):
        for m in (m for m in job.measures(group[0].params) if m.name in names):
            for c in group:
                files, options = polars_source(c.files())
                rows = pl.scan_parquet(files, storage_options=options, missing_columns="insert",
                                       extra_columns="ignore")
                parts.append(rows.filter(m.where & m.value.is_not_null()).select(
                    pl.lit(c.key).alias(CELL), pl.lit(m.name).alias("measure"),
                    *[pl.col(k).cast(pl.String).fill_null("(none)") for k in m.split],
                    m.value.cast(pl.Float64).alias("value")))
    return pl.concat(pl.collect_all(parts), how="diagonal_relaxed") if parts else pl.DataFrame()
