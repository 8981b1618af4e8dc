"""`orchestrate compare` and `orchestrate report`: sweeps set side by side, and one sweep's
page (registered on the main command in `orchestrator.cli`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from orchestrator.errors import OrchestrateError

if TYPE_CHECKING:
    import polars as pl


def rich_table(df: pl.DataFrame, title: str | None = None) -> Table:
    """A polars frame as a rich table (floats to 4 significant digits)."""
    table = Table(title=title)
    for col in df.columns:
        table.add_column(col, overflow="fold")
    for row in df.iter_rows():
        table.add_row(*("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    return table


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="SWEEP_OR_FOLDER...")
@click.option("--output", default="results", show_default=True, help="results root for sources given by name")
@click.option("--by", help="comma-separated keys to group by (model, cot, sweep, role.judge, any swept parameter; "
              "default: the keys that differ, seeds and finetune replicas pooled)")
@click.option("--diff", "diff_key", help="difference between the levels of this key (arm, sweep, model, cot, ...)")
@click.option("--baseline", help="the level of --diff to subtract (default: none/off/base if present, else the first)")
@click.option("--measure", "measures", multiple=True, help="only this measure (repeatable); default: all")
@click.option("--kind", "kinds", multiple=True, help="only this job kind (repeatable)")
@click.option("--resamples", default=2000, show_default=True, type=click.IntRange(min=100))
@click.option("--seed", default=0, show_default=True, help="the bootstrap's seed")
@click.option("--out", "outs", multiple=True, type=click.Path(dir_okay=False),
              help="also write the table to FILE.csv, FILE.md or FILE.tex (repeatable)")
def compare(sources: tuple[str, ...], output: str, by: str | None, diff_key: str | None, baseline: str | None,
            measures: tuple[str, ...], kinds: tuple[str, ...], resamples: int, seed: int,
            outs: tuple[str, ...]) -> None:
    """Each job kind's measures side by side, with 95% intervals from the rows (whole
    questions resampled, and seeds where a condition ran several times), and with --diff the
    differences between levels, paired where both read the same questions."""
    from orchestrator.compare import compare as run_compare
    from orchestrator.compare import read_sources
    from orchestrator.compare.export import display, write

    for out in outs:
        if Path(out).suffix not in (".csv", ".md", ".tex"):
            raise OrchestrateError(f"--out {out}: the suffix says the format: .csv, .md or .tex")
    found = read_sources(list(sources), output)
    result = run_compare(found, by=by.split(",") if by else None, diff=diff_key, baseline=baseline,
                         measures=list(measures) or None, kinds=list(kinds) or None, draws=resamples, seed=seed)
    if result.means.is_empty():
        raise OrchestrateError(f"nothing to compare: no finished cells with those measures in {', '.join(sources)}")
    table = result.differences if diff_key else result.means
    if diff_key and table.is_empty():
        raise OrchestrateError(f"--diff {diff_key}: no measure has two levels of {diff_key} to set against each other")
    Console(width=220).print(rich_table(display(table), title="differences" if diff_key else "means"))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for out in outs:
        write(table, Path(out))
        click.echo(f"wrote {out}", err=True)


@click.command()
@click.argument("sweep", metavar="SWEEP_FILE_OR_FOLDER")
@click.option("--output", default="results", show_default=True, help="results root for a sweep given by name")
@click.option("-o", "--out", "html", type=click.Path(dir_okay=False),
              help="the page's file (default: <output>/<sweep>/report.html)")
@click.option("--no-mlflow", is_flag=True, help="do not log the page to the sweep's MLflow run")
def report(sweep: str, output: str, html: str | None, no_mlflow: bool) -> None:
    """One self-contained HTML page of a sweep: each job kind's figures and tables, the sweep
    file, versions, when and where it ran; also logged to the sweep's MLflow parent run."""
    from orchestrator.report_page import build_page, log_page

    page = build_page(sweep, output, Path(html) if html else None)
    click.echo(f"wrote {page.html} ({len(page.figures)} figures, {page.tables} tables)")
    if not no_mlflow:
        run = log_page(page)
        click.echo(f"logged to MLflow run {run}" if run else "no MLflow run of this sweep to log to (submit logs one)")
