"""`orchestrate compare`: headline measures of sweeps side by side, with intervals from the rows.

    sources.py     which cells (sweep files or results folders), with the keys they group by
    gather.py      one lazy pass over the Parquet rows: sums and counts per unit
    intervals.py   two-level bootstrap (units, and cells where a condition ran several times)
    table.py       series, pooling, differences, and what is not comparable
    export.py      display, CSV, Markdown, LaTeX
"""
from orchestrator.compare.sources import CellRef, SourceError, Sources, read_sources
from orchestrator.compare.table import Comparison, compare

__all__ = ["CellRef", "Comparison", "SourceError", "Sources", "compare", "read_sources"]
