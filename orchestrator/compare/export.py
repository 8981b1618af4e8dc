"""A comparison as a reader wants it: a display table (mean and interval in one cell), and the
same in CSV, Markdown or LaTeX for a paper. CSV keeps the numbers apart and unrounded."""
from __future__ import annotations

from pathlib import Path

import polars as pl

DIGITS = 3


def _interval(value: str, lo: str, hi: str) -> pl.Expr:
    fmt = f"{{:.{DIGITS}f}}"

    def text(col: str) -> pl.Expr:
        return pl.col(col).map_elements(fmt.format, return_dtype=pl.String)

    return (pl.when(pl.col(value).is_null()).then(pl.lit(""))
            .otherwise(pl.concat_str(text(value), pl.lit(" ["), text(lo), pl.lit(", "), text(hi), pl.lit("]"))))


def display(table: pl.DataFrame) -> pl.DataFrame:
    """`mean`/`diff` with their interval as one text column, the interval's columns dropped."""
    if table.is_empty():
        return table
    value = "mean" if "mean" in table.columns else "diff"
    label = "mean [95% CI]" if value == "mean" else "difference [95% CI]"
    shown = table.with_columns(_interval(value, "ci_lo", "ci_hi").alias(label))
    shown = shown.drop(value, "ci_lo", "ci_hi")
    front = [c for c in shown.columns if c not in (label, "rows", "units", "cells", "paired", "note")]
    tail = [c for c in ("rows", "units", "cells", "paired", "note") if c in shown.columns]
    shown = shown.select(*front, label, *tail)
    # a column that is null throughout belongs to another kind's keys
    return shown.select([c for c in shown.columns if shown[c].null_count() < shown.height])


def markdown(table: pl.DataFrame) -> str:
    shown = display(table).with_columns(pl.all().cast(pl.String).fill_null(""))
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=200, tbl_width_chars=10_000):
        return str(shown) + "\n"


def latex(table: pl.DataFrame, caption: str = "") -> str:
    shown = display(table).with_columns(pl.all().cast(pl.String).fill_null(""))
    styler = (shown.to_pandas().style.hide(axis="index").format(escape="latex")
              .format_index(escape="latex", axis="columns"))
    return str(styler.to_latex(hrules=True, caption=caption or None, column_format="l" * shown.width))


def write(table: pl.DataFrame, path: Path) -> None:
    """By the file's suffix: .csv, .md or .tex."""
    if path.suffix == ".csv":
        table.write_csv(path)
    elif path.suffix == ".md":
        path.write_text(markdown(table))
    elif path.suffix == ".tex":
        path.write_text(latex(table))
    else:
        raise ValueError(f"{path}: export as .csv, .md or .tex")
