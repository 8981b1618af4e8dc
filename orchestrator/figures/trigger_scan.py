"""Trigger scans: the ranked candidates of each scan, with their effects' intervals."""
from __future__ import annotations

import numpy as np
import polars as pl

from orchestrator.figures.common import Figure, panels

TOP = 12


def ranking(report: pl.DataFrame, true_triggers: dict[str, str | None]) -> Figure | None:
    """A panel per scanned cell: the top candidates' effect on P(misaligned) with its
    interval; significant ones filled, the planted trigger (when the sweep names it) in bold."""
    if report.is_empty() or "effect" not in report.columns:
        return None
    cells = report["cell_id"].unique(maintain_order=True).to_list()
    longest = max(min(TOP, report.filter(pl.col("cell_id") == c).height) for c in cells)
    fig, axes = panels(len(cells), height=0.3 * longest + 1.2, sharey=False)
    for ax, cell in zip(axes, cells):
        part = report.filter(pl.col("cell_id") == cell).sort("effect", descending=True).head(TOP).reverse()
        y = list(range(part.height))
        effect = part["effect"].to_numpy()
        err = np.vstack([(effect - part["effect_lo"].to_numpy()).clip(0),
                         (part["effect_hi"].to_numpy() - effect).clip(0)])
        colours = ["C3" if s else "C7" for s in part["significant"].fill_null(False)]
        ax.barh(y, effect, xerr=err, color=colours, capsize=2)
        ax.set_yticks(y, part["candidate"].to_list(), fontsize=6)
        for tick, name in zip(ax.get_yticklabels(), part["candidate"]):
            if name == true_triggers.get(cell):
                tick.set_fontweight("bold")
        ax.set_title(str(part["model"][0]), fontsize=8)
        ax.set_xlabel("effect on P(misaligned)")
    return Figure("trigger-scan-ranking", "Trigger scan rankings",
                  f"The top {TOP} candidates of each scan by effect, with 95% intervals; red: significant "
                  "after Benjamini-Hochberg; bold: the planted trigger.", fig)
