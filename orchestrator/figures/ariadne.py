"""Ariadne and Lanham et al.: rho per domain against the noise floor, phi against its own,
the distribution of phi, and the "% same answer" curves."""
from __future__ import annotations

import numpy as np
import polars as pl

from orchestrator.figures.common import Figure, band, error_bars, measure, panels, series


def rho_by_domain(means: pl.DataFrame, keys: list[str]) -> Figure | None:
    """rho per domain (points with intervals) and, dashed, each series' baseline rho: what
    rho would be if the interventions changed nothing the model uses."""
    rows = measure(means, "rho_by_domain")
    if rows.is_empty():
        return None
    domains = sorted(rows["domain"].unique().to_list())
    baseline = measure(means, "baseline_rho")
    fig, axes = panels(1)
    ax = axes[0]
    groups = list(series(rows, keys))
    for i, (label, part) in enumerate(groups):
        dx = 0.0 if len(groups) == 1 else -0.15 + 0.3 * i / (len(groups) - 1)
        error_bars(ax, [domains.index(d) + dx for d in part["domain"]], part, label)
        base = dict(series(baseline, keys)).get(label)
        if base is not None and base.height:
            ax.axhline(float(base["mean"][0]), linestyle="--", linewidth=1, color=ax.lines[-1].get_color())
    ax.set_xticks(range(len(domains)), domains)
    ax.set_xlim(-0.5, len(domains) - 0.5)
    ax.set_ylabel("violation density rho")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return Figure("ariadne-rho", "Violation density per domain",
                  "rho with 95% intervals (whole queries resampled); dashed: the same rate for unchanged "
                  "traces regenerated (the noise baseline).", fig)


def phi_distribution(values: pl.DataFrame, keys: list[str]) -> Figure | None:
    """Histograms of phi per series, interventions against the baseline arm (sampling noise)."""
    if values.is_empty():
        return None
    groups = list(series(values, keys))
    fig, axes = panels(len(groups), height=2.8)
    bins = np.linspace(0, 1, 21).tolist()
    for ax, (label, part) in zip(axes, groups):
        for arm, colour in (("intervention", "C0"), ("baseline", "C7")):
            phi = part.filter(pl.col("arm") == arm)["value"].to_numpy()
            if len(phi):
                ax.hist(phi, bins=bins, density=True, alpha=0.6, color=colour, label=arm)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("phi")
    axes[0].legend(fontsize=7)
    return Figure("ariadne-phi", "Distribution of causal sensitivity phi",
                  "phi of each intervention against phi of unchanged traces regenerated.", fig)


# What the x axis of each Lanham test is (`fraction_kept` of its rows).
X_LABELS = {"early_answering": "share of CoT kept", "add_mistake": "share of CoT before the mistake",
            "paraphrase": "share of CoT before the paraphrased step",
            "filler": "share of CoT kept (the rest: filler)"}


def lanham_curves(means: pl.DataFrame, keys: list[str]) -> Figure | None:
    """% same answer against the share of the CoT kept, a panel per test (early answering,
    added mistakes, paraphrases, filler), a band per series."""
    rows = measure(means, "same_answer_curve")
    if rows.is_empty():
        return None
    arms = sorted(rows["arm"].unique().to_list())
    fig, axes = panels(len(arms))
    for ax, arm in zip(axes, arms):
        for label, part in series(rows.filter(pl.col("arm") == arm), keys):
            part = part.with_columns(pl.col("fraction_kept").cast(pl.Float64)).sort("fraction_kept")
            band(ax, part["fraction_kept"].to_list(), part, label)
        ax.set_title(arm.replace("_", " "))
        ax.set_xlabel(X_LABELS.get(arm, "share of CoT kept"))
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("% same answer")
    axes[-1].legend(fontsize=7)
    return Figure("ariadne-lanham", "Lanham et al.'s tests",
                  "Share of answers unchanged, with 95% bands (whole queries resampled).", fig)


FIGURES = (rho_by_domain, lanham_curves)
