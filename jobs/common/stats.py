"""Confidence intervals for job summaries: percentile bootstrap, optionally by cluster.

Rows of one job are rarely independent: the audits of one query share its trace, the samples
of one prompt share the prompt. Pass `groups` (a query id per value) and whole groups are
resampled, so the interval reflects how many independent units there really are.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Stat = Callable[[np.ndarray], float]
_CHUNK = 250  # resamples drawn at once: bounds the index matrix's memory


def _clean(values: Sequence[float] | np.ndarray,
           groups: Sequence[Any] | np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(values, dtype=float)
    keep = ~np.isnan(x)
    g = None if groups is None else np.asarray(groups)[keep]
    if groups is not None:
        assert len(np.asarray(groups)) == len(keep), (
            f"groups must label every value: {len(np.asarray(groups))} groups for {len(keep)} values")
    return x[keep], g


def bootstrap_ci(values: Sequence[float] | np.ndarray, stat: Stat = np.mean, n: int = 2000, seed: int = 0,
                 alpha: float = 0.05, groups: Sequence[Any] | np.ndarray | None = None) -> tuple[float, float]:
    """Percentile (1 - alpha) interval of `stat` over `n` bootstrap resamples of `values`
    (NaNs dropped). With `groups`, whole groups are drawn with replacement. No values: (nan,
    nan); one value or one group: a zero-width interval at the statistic."""
    assert 0 < alpha < 1, f"alpha is a tail probability in (0, 1), got {alpha}"
    x, g = _clean(values, groups)
    if len(x) == 0:
        return float("nan"), float("nan")
    units = len(x) if g is None else len(np.unique(g))
    if units < 2 or n == 0:
        point = float(stat(x))
        return point, point
    rng = np.random.default_rng(seed)
    if g is None:
        parts = []
        for start in range(0, n, _CHUNK):
            drawn = x[rng.integers(0, len(x), size=(min(_CHUNK, n - start), len(x)))]
            parts.append(drawn.mean(axis=1) if stat is np.mean else np.array([stat(r) for r in drawn]))
        stats = np.concatenate(parts)
    else:
        _, label = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(label == u) for u in range(units)]
        if stat is np.mean:
            # The mean of a cluster resample is (sum of drawn groups' sums) / (their sizes):
            # a count per group per resample is all we need.
            sums = np.array([x[m].sum() for m in members])
            sizes = np.array([len(m) for m in members], dtype=float)
            counts = rng.multinomial(units, np.full(units, 1 / units), size=n).astype(float)
            stats = counts @ sums / (counts @ sizes)
        else:
            draws = rng.integers(0, units, size=(n, units))
            stats = np.array([stat(x[np.concatenate([members[u] for u in row])]) for row in draws])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def proportion_ci(flags: Sequence[bool] | np.ndarray, n: int = 2000, seed: int = 0, alpha: float = 0.05,
                  groups: Sequence[Any] | np.ndarray | None = None) -> tuple[float, float]:
    """Interval for a rate (the share of True flags). Without groups it is the Wilson score
    interval, which stays honest at 0 and 1 where a bootstrap collapses to a point; with
    groups, the cluster bootstrap of the mean (the Wilson interval assumes independence),
    except at a rate of exactly 0 or 1, where every resample is that rate too: there, Wilson
    over the groups (each group counted once, as if its members agreed perfectly), which
    is the conservative end of the design effect."""
    x, g = _clean(flags, groups)
    if g is None:
        return wilson_ci(int(x.sum()), len(x), alpha)
    if len(x) and x.min() == x.max() and x[0] in (0.0, 1.0):
        units = len(np.unique(g))
        return wilson_ci(units if x[0] else 0, units, alpha)
    return bootstrap_ci(x, np.mean, n=n, seed=seed, alpha=alpha, groups=g)


def wilson_ci(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for successes / trials; (nan, nan) for no trials."""
    assert 0 <= successes <= trials, f"need 0 <= successes <= trials, got {successes} of {trials}"
    if trials == 0:
        return float("nan"), float("nan")
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha / 2))
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def difference_ci(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray,
                  alpha: float = 0.05) -> tuple[float, float]:
    """Interval for rate(a) - rate(b) from two independent samples: Newcombe's hybrid score
    interval, built from each rate's Wilson interval, so two rates of 0 still give an
    interval of honest width where resampling each arm gives [0, 0]."""
    x, y = _clean(a, None)[0], _clean(b, None)[0]
    if len(x) == 0 or len(y) == 0:
        return float("nan"), float("nan")
    p1, p2 = float(x.mean()), float(y.mean())
    l1, u1 = wilson_ci(int(x.sum()), len(x), alpha)
    l2, u2 = wilson_ci(int(y.sum()), len(y), alpha)
    d = p1 - p2
    return d - float(np.hypot(p1 - l1, u2 - p2)), d + float(np.hypot(u1 - p1, p2 - l2))

