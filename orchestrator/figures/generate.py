"""Batch generation: completion length and how completions ended."""
from __future__ import annotations

import polars as pl

from orchestrator.figures.common import Figure, error_bars, measure, panels, series


def lengths(means: pl.DataFrame, keys: list[str]) -> Figure | None:
    names = [n for n in ("completion_tokens", "finished_by_stop") if not measure(means, n).is_empty()]
    if not names:
        return None
    fig, axes = panels(len(names), sharey=False)
    for ax, name in zip(axes, names):
        groups = list(series(measure(means, name), keys))
        for i, (label, part) in enumerate(groups):
            error_bars(ax, [float(i)], part, label)
        ax.set_xticks(range(len(groups)), [g for g, _ in groups], fontsize=7, rotation=20)
        ax.set_title(name.replace("_", " "))
    return Figure("generate-lengths", "Completions", "Tokens per completion and the share that stopped on their "
                  "own, with 95% intervals over prompts.", fig)


FIGURES = (lengths,)
