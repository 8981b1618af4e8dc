"""Means, differences and their intervals from sums per unit: a two-level bootstrap.

What varies from one run of an experiment to the next is which questions were asked (units)
and, where a condition was run several times (seeds, finetune replicas), which run it was
(cells). Each bootstrap draw reweights both: units with multinomial counts, and cells the
same way when there are several. A difference between two arms is paired when both read the
same units (trigger on and off over the same questions): the draw's unit weights are shared,
so the question-to-question spread cancels as it does in the data. Arms read from the same
cells share the cells' weights too.

A rate of exactly 0 or 1 resamples to a point; there, as `jobs.common.stats` does, Wilson's
interval over the units (and Newcombe's for a difference) keeps an honest width.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from jobs.common.stats import wilson_ci


@dataclass(frozen=True)
class Pooled:
    """The sums (s) and counts (n) of one series, cells x units."""

    cells: tuple[str, ...]
    units: tuple[str, ...]
    s: np.ndarray
    n: np.ndarray
    rate: bool

    @classmethod
    def of(cls, frame: pl.DataFrame, unit: str, rate: bool) -> Pooled:
        """From `gather.unit_sums` rows of one series (columns cell_id, unit, s, n)."""
        cells = tuple(sorted(frame["cell_id"].unique().to_list()))
        units = tuple(sorted(frame[unit].unique().to_list()))
        ci, ui = {c: i for i, c in enumerate(cells)}, {u: i for i, u in enumerate(units)}
        s, n = np.zeros((len(cells), len(units))), np.zeros((len(cells), len(units)))
        r = frame["cell_id"].replace_strict(ci, return_dtype=pl.Int64).to_numpy()
        u = frame[unit].replace_strict(ui, return_dtype=pl.Int64).to_numpy()
        np.add.at(s, (r, u), frame["s"].to_numpy())
        np.add.at(n, (r, u), frame["n"].to_numpy())
        return cls(cells, units, s, n, rate)

    @property
    def rows(self) -> int:
        return int(self.n.sum())

    def mean(self) -> float:
        return float(self.s.sum() / self.n.sum()) if self.n.sum() else float("nan")

    def degenerate(self) -> bool:
        """A rate of exactly 0 or 1: every resample is that rate too."""
        return self.rate and self.s.sum() in (0.0, self.n.sum())


class Resampler:
    """Bootstrap weights, the same for the same units (or cells): what makes pairs paired."""

    def __init__(self, draws: int = 2000, seed: int = 0, alpha: float = 0.05) -> None:
        assert draws >= 100, f"an interval from {draws} resamples would be noise; use at least 100"
        self.draws, self.alpha = draws, alpha
        self.rng = np.random.default_rng(seed)
        self._weights: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def _multinomial(self, level: str, ids: tuple[str, ...]) -> np.ndarray:
        key = (level, ids)
        if key not in self._weights:
            k = len(ids)
            self._weights[key] = (np.ones((self.draws, 1)) if k == 1 else
                                  self.rng.multinomial(k, np.full(k, 1 / k), size=self.draws).astype(float))
        return self._weights[key]

    def resample(self, p: Pooled) -> np.ndarray:
        """The mean of `p` in every draw."""
        wc, wu = self._multinomial("cells", p.cells), self._multinomial("units", p.units)
        with np.errstate(invalid="ignore", divide="ignore"):
            return ((wc @ p.s) * wu).sum(axis=1) / ((wc @ p.n) * wu).sum(axis=1)

    def _interval(self, draws: np.ndarray) -> tuple[float, float]:
        lo, hi = np.nanquantile(draws, [self.alpha / 2, 1 - self.alpha / 2])
        return float(lo), float(hi)

    def mean_ci(self, p: Pooled) -> tuple[float, float]:
        if p.degenerate():
            k = len(p.units)
            return wilson_ci(k if p.mean() == 1.0 else 0, k, self.alpha)
        if len(p.units) < 2 and len(p.cells) < 2:
            return p.mean(), p.mean()
        return self._interval(self.resample(p))

    def difference_ci(self, a: Pooled, b: Pooled) -> tuple[float, float]:
        """mean(a) - mean(b). Paired through shared weights where a and b share units."""
        if a.degenerate() or b.degenerate():
            return _newcombe(a, b, self.alpha)
        return self._interval(self.resample(a) - self.resample(b))


def _newcombe(a: Pooled, b: Pooled, alpha: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval, each rate's Wilson interval taken over its units."""
    p1, p2 = a.mean(), b.mean()
    l1, u1 = wilson_ci(round(p1 * len(a.units)), len(a.units), alpha)
    l2, u2 = wilson_ci(round(p2 * len(b.units)), len(b.units), alpha)
    d = p1 - p2
    return d - float(np.hypot(p1 - l1, u2 - p2)), d + float(np.hypot(u1 - p1, p2 - l2))
