"""What a job offers for comparison: per-row quantities whose mean two cells can be set against.

A cell's summary is a bag of numbers; comparing cells needs more: the rows behind a number, and
which rows are independent. A `Measure` says, for one job kind, which rows count (`where`), what
each row contributes (`value`: a rate's flag or a score), which rows are one independent unit
(`unit`: the samples of one question share it), and which row columns split the number into
series (`split`: an arm, a domain). `orchestrate compare` and the report's figures read rows
through measures, lazily, so the means and their intervals come from the same rows the summaries
do, resampling whole units.

The expressions are polars expressions over the stored columns only: a job's derived verdicts
(a threshold's `misaligned`) are built by the same functions its `derive` uses, so a measure
and the summary cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl


@dataclass(frozen=True)
class Measure:
    """One comparable quantity of a job kind (see the module's docstring)."""

    name: str  # as tables and plots show it, e.g. "misaligned"
    value: pl.Expr  # per row; a null value leaves the row out (an unscored answer)
    unit: str  # rows with one value here are resampled together
    where: pl.Expr = field(default_factory=lambda: pl.lit(True))  # which rows the measure reads
    split: tuple[str, ...] = ()  # row columns whose values split it into series
    rate: bool = False  # a share of True flags (plots and tables show it as such)
    detail: bool = False  # a breakdown for figures (per question, per point of a curve): shown when asked
    description: str = ""

    def columns(self) -> set[str]:
        """The stored columns the measure reads."""
        exprs = [self.value, self.where, *map(pl.col, (self.unit, *self.split))]
        return {name for e in exprs for name in e.meta.root_names()}
