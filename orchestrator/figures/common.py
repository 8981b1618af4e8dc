"""What every figure shares: a figure object, series labels, and intervals drawn one way.

A figure function takes a comparison's means (`orchestrator.compare`: one row per series
with `mean`, `ci_lo`, `ci_hi`) of one job kind and the keys that tell its cells apart, and
returns a `Figure`, or None when the sweep has nothing to draw for it. Intervals are error
bars on points and bars, and shaded bands on curves: a reader sees every interval.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure  # no pyplot: no global state, no display needed

WIDTH = 7.5  # inches: a report column


@dataclass
class Figure:
    name: str  # a file name's stem, e.g. "misalignment-per-question"
    title: str
    caption: str
    figure: MplFigure

    def axes(self) -> list[Axes]:
        return list(self.figure.axes)


def measure(means: pl.DataFrame, name: str) -> pl.DataFrame:
    """The rows of one measure, without the columns other measures use."""
    if means.is_empty() or "measure" not in means.columns:
        return pl.DataFrame()
    rows = means.filter(pl.col("measure") == name)
    return rows.select([c for c in rows.columns if rows[c].null_count() < rows.height]) if rows.height else rows


def label_of(row: dict[str, object], keys: list[str]) -> str:
    """A series' name from the keys that set its cells apart: 'backdoored, cot=on'."""
    parts = [str(row[k]) if k in ("model", "model_group") else f"{k}={row[k]}" for k in keys if row.get(k) is not None]
    return ", ".join(parts) or "all"


def series(rows: pl.DataFrame, keys: list[str]) -> Iterator[tuple[str, pl.DataFrame]]:
    """(label, rows) per series: the rows that share the values of `keys`."""
    keys = [k for k in keys if k in rows.columns]
    if not keys:
        yield "all", rows
        return
    for _, part in rows.group_by(keys, maintain_order=True):
        yield label_of(part.row(0, named=True), keys), part


def panels(n: int, height: float = 3.0, sharey: bool = True) -> tuple[MplFigure, list[Axes]]:
    fig = MplFigure(figsize=(WIDTH, height), layout="constrained")
    axes = fig.subplots(1, n, sharey=sharey, squeeze=False)
    return fig, list(axes[0])


def error_bars(ax: Axes, x: list[float], part: pl.DataFrame, label: str, **kw: object) -> None:
    """Points at the means with their 95% intervals."""
    mean = part["mean"].to_numpy()
    lower, upper = mean - part["ci_lo"].to_numpy(), part["ci_hi"].to_numpy() - mean
    ax.errorbar(x, mean, yerr=np.vstack([lower.clip(0), upper.clip(0)]), fmt="o", capsize=3, label=label,
                **kw)  # type: ignore[arg-type]


def band(ax: Axes, x: list[float], part: pl.DataFrame, label: str) -> None:
    """A curve through the means with its 95% interval shaded."""
    (line,) = ax.plot(x, part["mean"].to_numpy(), marker="o", label=label)
    ax.fill_between(x, part["ci_lo"].to_numpy(), part["ci_hi"].to_numpy(), alpha=0.2, color=line.get_color())

