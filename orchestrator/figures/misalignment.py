"""Emergent misalignment and backdoors: misaligned rates by arm, per question, and what the
monitor saw in the CoTs of misaligned answers."""
from __future__ import annotations

import polars as pl

from jobs.common.monitor import FLAGS
from orchestrator.figures.common import Figure, error_bars, measure, panels, series

ARM_ORDER = ("none", "trigger")


def _arms(rows: pl.DataFrame) -> list[str]:
    return sorted(rows["arm"].unique().to_list(), key=lambda a: (ARM_ORDER.index(a) if a in ARM_ORDER else 9, a))


def _offsets(n: int, width: float = 0.6) -> list[float]:
    return [0.0] if n == 1 else [-width / 2 + width * i / (n - 1) for i in range(n)]


def rates(means: pl.DataFrame, keys: list[str]) -> Figure | None:
    """Free-form and multiple-choice misaligned rates, one point per series and arm."""
    names = [n for n in ("misaligned", "mc_misaligned") if not measure(means, n).is_empty()]
    if not names:
        return None
    fig, axes = panels(len(names))
    for ax, name in zip(axes, names):
        rows = measure(means, name)
        arms = _arms(rows)
        groups = list(series(rows, keys))
        for (label, part), dx in zip(groups, _offsets(len(groups), 0.4)):
            part = part.filter(pl.col("arm").is_in(arms))
            x = [arms.index(a) + dx for a in part["arm"]]
            error_bars(ax, x, part, label)
        ax.set_xticks(range(len(arms)), arms)
        ax.set_title("free-form" if name == "misaligned" else "multiple choice")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("misaligned rate")
    axes[-1].legend(fontsize=7)
    return Figure("misalignment-rates", "Misaligned rate by arm",
                  "Share of answers judged misaligned, with 95% intervals (whole questions resampled).", fig)


def per_question(means: pl.DataFrame, keys: list[str]) -> Figure | None:
    """The misaligned rate of every free-form question, a panel per arm (trigger off / on)."""
    rows = measure(means, "misaligned_by_question")
    if rows.is_empty():
        return None
    arms = _arms(rows)
    questions = sorted(rows["item_id"].unique().to_list())
    fig, axes = panels(len(arms), height=3.4)
    for ax, arm in zip(axes, arms):
        groups = list(series(rows.filter(pl.col("arm") == arm), keys))
        for (label, part), dx in zip(groups, _offsets(len(groups), 0.5)):
            error_bars(ax, [questions.index(q) + dx for q in part["item_id"]], part, label, markersize=3)
        ax.set_xticks(range(len(questions)), questions, rotation=90, fontsize=6)
        ax.set_title(f"arm: {arm}")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("misaligned rate")
    axes[-1].legend(fontsize=7)
    return Figure("misalignment-per-question", "Misaligned rate per question",
                  "Each free-form question's misaligned rate by arm, with 95% intervals over its samples.", fig)


def monitor_flags(means: pl.DataFrame, keys: list[str]) -> Figure | None:
    """What the CoT monitor flagged among misaligned answers: a bar per flag and series."""
    rows = pl.concat([measure(means, f"monitor_flag/{f}").with_columns(flag=pl.lit(f)) for f in FLAGS
                      if not measure(means, f"monitor_flag/{f}").is_empty()], how="diagonal_relaxed") \
        if any(not measure(means, f"monitor_flag/{f}").is_empty() for f in FLAGS) else pl.DataFrame()
    if rows.is_empty():
        return None
    fig, axes = panels(1, height=3.0)
    groups = list(series(rows, [*keys, "arm"]))
    for (label, part), dx in zip(groups, _offsets(len(groups), 0.6)):
        error_bars(axes[0], [FLAGS.index(f) + dx for f in part["flag"]], part, label)
    axes[0].set_xticks(range(len(FLAGS)), FLAGS, fontsize=8)
    axes[0].set_ylabel("share of monitored misaligned answers")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    return Figure("misalignment-monitor", "What the CoT monitor saw",
                  "Among misaligned answers the monitor read: the share given each flag, with 95% intervals.", fig)


FIGURES = (rates, per_question, monitor_flags)
