"""The comparison: each measure's mean per series with its interval, and differences between
the levels of one key (arms, sweeps, models) with theirs.

A series is the cells that agree on the `by` keys (and the rows that agree on the measure's
own split columns, such as the arm). Cells that differ only in what `by` leaves out are pooled:
by default, seeds and a finetune's replicas. Two series are set against each other only when
they are comparable: the same job versions, and the same units (questions) so the difference
is paired; otherwise the table says why there is no number.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from orchestrator.compare.gather import CELL, measures_of, unit_sums
from orchestrator.compare.intervals import Pooled, Resampler
from orchestrator.compare.sources import REPLICATE_KEYS, CellRef, SourceError, Sources

BASELINE_NAMES = ("none", "off", "false", "base", "direct")  # the level a difference is taken against


@dataclass
class Comparison:
    means: pl.DataFrame
    differences: pl.DataFrame
    notes: list[str] = field(default_factory=list)


def default_by(cells: list[CellRef]) -> list[str]:
    """The keys whose values differ between the cells, replicates (seeds, a finetune's seeds)
    pooled."""
    values: dict[str, set[str]] = defaultdict(set)
    for c in cells:
        for k, v in c.keys.items():
            values[k].add(v)
    varying = [k for k, v in values.items() if len(v) > 1 and k not in REPLICATE_KEYS + ("model", "model_group")]
    # the subject always shows (a table without it cannot be read); a finetune's seeds pooled
    # under their group's name
    varying.append("model_group" if len(values["model_group"]) < len(values["model"]) else "model")
    order = ["sweep", "model", "model_group"]
    return sorted(varying, key=lambda k: (order.index(k) if k in order else len(order), k))


def _baseline(levels: list[str], asked: str | None, sources: list[str]) -> str:
    """The level asked for; else a level named like a control (none, off, base); else, for
    sweeps, the first source given; else the first in sorted order."""
    if asked is not None:
        return asked
    if named := [lv for lv in levels if lv.lower() in BASELINE_NAMES]:
        return named[0]
    given = [s for s in sources if s in levels]
    return given[0] if given else sorted(levels)[0]


def _check_keys(kind: str, cells: list[CellRef], by: list[str], splits: set[str]) -> None:
    known = set().union(*(c.keys for c in cells)) | splits
    unknown = [k for k in by if k not in known]
    if unknown:
        raise SourceError(f"{kind}: cannot group by {', '.join(unknown)}: its cells have the keys "
                          f"{', '.join(sorted(known))}")


def compare(sources: Sources, by: list[str] | None = None, diff: str | None = None, baseline: str | None = None,
            measures: list[str] | None = None, kinds: list[str] | None = None, draws: int = 2000,
            seed: int = 0, details: bool = False) -> Comparison:
    """Means and differences of every measure of every kind in `sources` (see the module);
    `details`: the breakdowns meant for figures too (`Measure.detail`)."""
    notes = [f"{n} cell(s) of {src} not complete: left out" for src, n in sources.incomplete.items()]
    resampler = Resampler(draws, seed)
    mean_rows: list[dict[str, Any]] = []
    diff_rows: list[dict[str, Any]] = []
    by_kind: dict[str, list[CellRef]] = defaultdict(list)
    for c in sources.cells:
        if kinds is None or c.kind in kinds:
            by_kind[c.kind].append(c)
    for kind, cells in sorted(by_kind.items()):
        defined = measures_of(kind, cells)
        wanted = [n for n, m in defined.items()
                  if (n in measures if measures is not None else details or not m.detail)]
        if not wanted:
            continue
        splits = {s for n in wanted for s in defined[n].split}
        keys = list(by) if by is not None else default_by(cells)
        _check_keys(kind, cells, keys, splits)
        if diff and diff not in keys and any(diff in c.keys for c in cells):
            keys.append(diff)  # a kind without the key has no differences to show, and is no error
        cell_keys = [k for k in keys if k not in splits]
        table = pl.DataFrame([{CELL: c.key, **{k: c.keys.get(k) for k in cell_keys}} for c in cells],
                             schema={CELL: pl.String, **dict.fromkeys(cell_keys, pl.String)})
        info = {c.key: c for c in cells}
        for name, sums in unit_sums(kind, cells, wanted).items():
            m = defined[name]
            series_keys = [*cell_keys, *m.split]
            rows = sums.join(table, on=CELL)
            series: dict[tuple[str, ...], Pooled] = {}
            for values, part in rows.group_by(series_keys, maintain_order=True) if series_keys else [((), rows)]:
                pooled = Pooled.of(part, m.unit, m.rate)
                series[tuple(values)] = pooled
                lo, hi = resampler.mean_ci(pooled)
                mean_rows.append({"kind": kind, "_order": list(defined).index(name), "measure": name,
                                  **dict(zip(series_keys, values)),
                                  "mean": pooled.mean(), "ci_lo": lo, "ci_hi": hi, "rows": pooled.rows,
                                  "units": len(pooled.units), "cells": len(pooled.cells),
                                  "note": _pooling_note([info[c] for c in pooled.cells], series_keys)})
            if diff in series_keys:
                order = list(defined).index(name)
                diff_rows += [{"_order": order, **r}
                              for r in _differences(kind, name, series_keys, series, diff, baseline, info, resampler)]
    return Comparison(_sorted(mean_rows), _sorted(diff_rows), notes)


VALUES = {"mean", "diff", "ci_lo", "ci_hi", "rows", "units", "cells", "paired", "note", "_order"}


def _sorted(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Kinds, then each kind's measures in the order it defines them, then the keys."""
    if not rows:
        return pl.DataFrame()
    table = pl.DataFrame(rows, infer_schema_length=None)
    keys = [c for c in table.columns if c not in VALUES and c not in ("kind", "measure")]
    return table.sort(["kind", "_order", *keys], nulls_last=True).drop("_order")


def _pooling_note(cells: list[CellRef], series_keys: list[str]) -> str:
    """Says what a pooled series mixes beyond replicates: different job versions, or keys the
    grouping left out."""
    parts = []
    versions = {str(sorted((c.manifest.get("versions") or {}).items())) for c in cells}
    if len(versions) > 1:
        parts.append("pools different job versions")
    left_out = sorted({k for c in cells for k in c.keys}
                      - set(series_keys) - set(REPLICATE_KEYS) - {"model", "model_group", "sweep"})
    mixed = [k for k in left_out if len({c.keys.get(k) for c in cells}) > 1]
    if mixed:
        parts.append(f"pools cells that differ in {', '.join(mixed)}")
    return "; ".join(parts)


def _differences(kind: str, name: str, series_keys: list[str], series: dict[tuple[str, ...], Pooled], diff: str,
                 baseline: str | None, info: dict[str, CellRef], resampler: Resampler) -> list[dict[str, Any]]:
    at = series_keys.index(diff)
    groups: dict[tuple[str, ...], dict[str, Pooled]] = defaultdict(dict)
    for values, pooled in series.items():
        groups[values[:at] + values[at + 1:]][values[at]] = pooled
    others = [k for k in series_keys if k != diff]
    out = []
    for rest, levels in groups.items():
        base_level = _baseline(list(levels), baseline, list(dict.fromkeys(c.source for c in info.values())))
        if base_level not in levels:
            continue
        b = levels[base_level]
        for level, a in levels.items():
            if level == base_level:
                continue
            row: dict[str, Any] = {"kind": kind, "measure": name, **dict(zip(others, rest)), "vs": diff,
                                   "level": level, "baseline": base_level, "diff": None, "ci_lo": None,
                                   "ci_hi": None, "paired": a.units == b.units, "note": ""}
            versions = {str(sorted((info[c].manifest.get("versions") or {}).items())) for c in a.cells + b.cells}
            if len(versions) > 1:
                row["note"] = "not comparable: different job versions"
            elif a.units != b.units:
                shared = len(set(a.units) & set(b.units))
                row["note"] = (f"not comparable: different items ({shared} shared of {len(a.units)} and "
                               f"{len(b.units)})")
            else:
                row["diff"] = a.mean() - b.mean()
                row["ci_lo"], row["ci_hi"] = resampler.difference_ci(a, b)
                row["note"] = _pooling_note([info[c] for c in dict.fromkeys(a.cells + b.cells)], series_keys)
            out.append(row)
    return out
