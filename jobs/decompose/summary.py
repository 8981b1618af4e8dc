"""The decompose job's cell summary: EM and F1 per arm and per answer type with percentile
bootstrap 95% CIs over questions, and the gain of decomposition over each single-pass arm,
bootstrapped on the same resampled questions for both arms (a paired CI)."""
from __future__ import annotations

import numpy as np
import polars as pl

from jobs.common.stats import bootstrap_ci

BASELINE_ARMS = ("direct", "direct_cot")
ANSWER_TYPES = ("number", "span", "spans", "date")


def _metric(out: dict[str, float], key: str, values: np.ndarray, resamples: int, seed: int) -> None:
    out[key] = float(values.mean())
    out[f"{key}_ci_low"], out[f"{key}_ci_high"] = bootstrap_ci(values, n=resamples, seed=seed)


def summarize(rows: pl.DataFrame, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    if "arm" not in rows.columns:
        return {}
    rows = rows.filter(pl.col("arm").is_not_null())  # error rows carry no arm
    out: dict[str, float] = {}
    for arm in sorted(rows["arm"].unique().to_list()):
        mine = rows.filter(pl.col("arm") == arm)
        out[f"{arm}/questions"] = float(mine.height)
        for metric in ("em", "f1"):
            _metric(out, f"{arm}/{metric}", mine[metric].to_numpy(), resamples, seed)
        for kind in ANSWER_TYPES:
            typed = mine.filter(pl.col("answer_type") == kind)
            if typed.height:
                out[f"{arm}/{kind}/questions"] = float(typed.height)
                for metric in ("em", "f1"):
                    _metric(out, f"{arm}/{kind}/{metric}", typed[metric].to_numpy(), resamples, seed)
    decomposed = rows.filter(pl.col("arm") == "decompose")
    if decomposed.height:
        out["decompose/steps_mean"] = float(decomposed["n_steps"].mean())
        for reason in ("stop_sentence", "step_limit", "context_limit", "empty"):
            out[f"decompose/{reason}_share"] = float((decomposed["stop_reason"] == reason).mean())
        paths = decomposed.select(pl.col("steps").list.eval(pl.element().struct.field("path")).explode())["steps"]
        paths = paths.drop_nulls()
        out["decompose/symbolic_step_share"] = float((paths == "symbolic").mean()) if len(paths) else 0.0
    for base in BASELINE_ARMS:
        paired = (decomposed.select("query_id", "em", "f1")
                  .join(rows.filter(pl.col("arm") == base).select("query_id", "em", "f1"), on="query_id",
                        suffix="_base"))
        if paired.height:
            prefix = "gain" if base == "direct" else f"gain_vs_{base}"
            for metric in ("em", "f1"):
                diff = (paired[metric] - paired[f"{metric}_base"]).to_numpy()
                _metric(out, f"{prefix}/{metric}", diff, resamples, seed)
    return out
