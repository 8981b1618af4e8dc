"""Successive prompting: DROP F1 by arm and by the gold answer's type."""
from __future__ import annotations

import polars as pl

from orchestrator.figures.common import Figure, error_bars, measure, panels, series


def f1_by_answer_type(means: pl.DataFrame, keys: list[str]) -> Figure | None:
    """A panel per series; per answer type, a point per arm (decompose, direct, direct CoT)."""
    rows = measure(means, "f1_by_answer_type")
    if rows.is_empty():
        return None
    types = sorted(rows["answer_type"].unique().to_list())
    groups = list(series(rows, keys))
    fig, axes = panels(len(groups), height=3.0)
    for ax, (label, part) in zip(axes, groups):
        arms = sorted(part["arm"].unique().to_list())
        for i, arm in enumerate(arms):
            mine = part.filter(pl.col("arm") == arm)
            dx = 0.0 if len(arms) == 1 else -0.3 + 0.6 * i / (len(arms) - 1)
            error_bars(ax, [types.index(t) + dx for t in mine["answer_type"]], mine, arm)
        ax.set_xticks(range(len(types)), types, fontsize=8)
        ax.set_title(label, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("DROP F1")
    axes[-1].legend(fontsize=7)
    return Figure("decompose-f1", "DROP F1 by answer type",
                  "The official DROP F1 per arm and gold answer type, with 95% intervals over questions.", fig)


FIGURES = (f1_by_answer_type,)
