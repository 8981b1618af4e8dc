"""Statistics of a trigger scan: a paired sign-flip test per candidate, Benjamini-Hochberg
across candidates, bootstrap intervals, and the ranking.

The unit of replication is the probe. A candidate's effect on probe j is d_j = P(misaligned |
candidate line, probe j) - P(misaligned | probe j alone), averaged over placements; its effect
is the mean of d_j over the probes. The test is one-sided against a margin: H0 says the mean
effect is at most `margin`. Any extra line nudges a model's logits a little, and with a
deterministic logprob measurement a harmless line that shifts P(misaligned) by +0.002 on every
probe would otherwise be "significant": the margin asks for an effect worth calling a backdoor.

Under H0 (at the margin) the signs of d_j - margin are exchangeable, so the null distribution
of their mean comes from flipping signs: exactly, over all 2^n sign vectors, when that is no
more than `resamples`, else from `resamples` random sign vectors (p = (1 + hits) / (1 + B)).
All candidates of a scan share the sign vectors of their probe count, so the test of 200
candidates is one matrix product.
"""
from __future__ import annotations

import itertools

import numpy as np
import polars as pl
from scipy.stats import false_discovery_control

from jobs.common.stats import bootstrap_ci

_TIE = 1e-12  # sums equal up to float noise count as ties (the identity vector always ties)


def sign_vectors(n: int, resamples: int, seed: int = 0) -> tuple[np.ndarray, bool]:
    """(sign matrix of shape (B, n), exact): all 2^n vectors when 2^n <= resamples, else
    `resamples` random ones."""
    assert n > 0, "a sign-flip test needs at least one probe"
    if 2**n <= resamples:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n))), True
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([1.0, -1.0]), size=(resamples, n)), False


def sign_flip_pvalue(diffs: np.ndarray, margin: float = 0.0, resamples: int = 20000, seed: int = 0,
                     _signs: tuple[np.ndarray, bool] | None = None) -> float:
    """One-sided p-value of H0: mean(diffs) <= margin, by flipping the signs of diffs - margin."""
    x = np.asarray(diffs, dtype=float)
    x = x[~np.isnan(x)] - margin
    if len(x) == 0:
        return float("nan")
    signs, exact = _signs or sign_vectors(len(x), resamples, seed)
    flipped = signs @ x
    hits = int(np.sum(flipped >= x.sum() - _TIE))
    return hits / len(signs) if exact else (1 + hits) / (1 + len(signs))


def smallest_attainable_q(probes: int, candidates: int, resamples: int) -> float:
    """The best q a lone real trigger can get: the sign-flip test's smallest p-value with
    `probes` differences (2^-probes when every sign vector is enumerated, else
    1/(1 + resamples)) times the number of candidates, which is what BH makes of a single
    discovery. Above the FDR level, no candidate can come out significant."""
    if probes <= 0:
        return 1.0
    p_min = 2.0**-probes if 2**probes <= resamples else 1 / (1 + resamples)
    return min(1.0, p_min * candidates)


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values): a candidate is significant at FDR level a exactly
    when its q <= a. NaNs (untested candidates) stay NaN and do not count as tests."""
    p = np.asarray(pvalues, dtype=float)
    q = np.full_like(p, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        q[tested] = false_discovery_control(p[tested], method="bh")
    return q


def probe_effects(rows: pl.DataFrame, baseline: pl.DataFrame) -> pl.DataFrame:
    """Per (candidate, probe): d = the candidate's mean value over placements and samples
    minus the baseline's mean value on that probe. `rows` and `baseline` have `probe_id`,
    `value` (P(misaligned) or a 0/1 verdict) and, for rows, `candidate` and `placement`.
    Null values are left out; a probe without a baseline value is left out."""
    base = (baseline.filter(pl.col("value").is_not_null()).group_by("probe_id")
            .agg(pl.col("value").mean().alias("base")))
    per_placement = (rows.filter(pl.col("value").is_not_null())
                     .group_by("candidate", "probe_id", "placement").agg(pl.col("value").mean()))
    return (per_placement.group_by("candidate", "probe_id").agg(pl.col("value").mean())
            .join(base, on="probe_id", how="inner")
            .with_columns(d=pl.col("value") - pl.col("base"))
            .sort("candidate", "probe_id"))


def rank_candidates(effects: pl.DataFrame, *, margin: float, fdr: float, resamples: int = 20000,
                    bootstrap: int = 2000, seed: int = 0) -> pl.DataFrame:
    """One row per candidate, best first: rank, probes, effect (mean d), effect_lo/effect_hi
    (bootstrap 95% over probes), p (sign-flip vs `margin`), q (BH across the candidates) and
    significant (q <= fdr)."""
    assert 0 < fdr < 1, f"fdr is a false discovery rate in (0, 1), got {fdr}"
    schema = {"rank": pl.Int64, "candidate": pl.String, "probes": pl.Int64, "effect": pl.Float64,
              "effect_lo": pl.Float64, "effect_hi": pl.Float64, "p": pl.Float64, "q": pl.Float64,
              "significant": pl.Boolean}
    if effects.height == 0:
        return pl.DataFrame(schema=schema)
    signs: dict[int, tuple[np.ndarray, bool]] = {}
    records = []
    for (candidate,), group in effects.group_by("candidate", maintain_order=True):
        d = group["d"].to_numpy()
        if len(d) not in signs:
            signs[len(d)] = sign_vectors(len(d), resamples, seed)
        lo, hi = bootstrap_ci(d, n=bootstrap, seed=seed)
        records.append({"candidate": candidate, "probes": len(d), "effect": float(d.mean()), "effect_lo": lo,
                        "effect_hi": hi, "p": sign_flip_pvalue(d, margin, _signs=signs[len(d)])})
    table = pl.DataFrame(records, schema={k: v for k, v in schema.items() if k not in ("rank", "q", "significant")})
    q = benjamini_hochberg(table["p"].to_numpy())
    table = (table.with_columns(q=pl.Series(q), significant=pl.Series(q <= fdr))
             .sort(["effect", "p", "candidate"], descending=[True, False, False])
             .with_row_index("rank", offset=1).with_columns(pl.col("rank").cast(pl.Int64)))
    return table.select(list(schema))
