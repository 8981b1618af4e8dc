"""A sweep's page: figures and tables per job kind, the sweep file, versions, and when and
where it ran, in one HTML file with the figures inside it (a page mailed or opened offline
shows everything). Figures are also written as PNG files beside it, for MLflow."""
from __future__ import annotations

import base64
import fnmatch
import io
import json
import platform
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import polars as pl

from jobs.registry import get_job
from orchestrator.compare import CellRef, SourceError, compare, read_sources
from orchestrator.compare.export import display
from orchestrator.figures.common import Figure
from orchestrator.report_page.figures import kind_figures
from orchestrator.storage import StorePath
from orchestrator.store import read_json, write_text
from orchestrator.tracking import git_commit, package_versions

DPI = 110
MAX_TABLE_ROWS = 200  # a page, not a data dump: the rest is one `orchestrate results` away


@dataclass
class Page:
    root: StorePath  # the sweep's results folder (local, or on an object store)
    html: StorePath
    figures: list[StorePath]
    figure_names: list[str]
    tables: int


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _table(title: str, frame: pl.DataFrame) -> dict[str, Any]:
    shown = frame.head(MAX_TABLE_ROWS)
    rows = [["" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in r] for r in shown.iter_rows()]
    more = f" (first {MAX_TABLE_ROWS} of {frame.height})" if frame.height > MAX_TABLE_ROWS else ""
    return {"title": title + more, "columns": shown.columns, "rows": rows}


def _submission(root: StorePath) -> dict[str, Any]:
    path = root / "submission.json"
    return json.loads(path.read_text()) if path.exists() else {}


def build_page(source: str, output: str = "results", html: Path | None = None) -> Page:
    """Write the page of one sweep (a sweep file, its results folder or its name under
    `output`) to `html` (default `<output>/<sweep>/report.html`) and its figures to
    `report/figures/` beside it."""
    found = read_sources([source], output)
    if not found.cells:
        raise SourceError(f"{source}: no finished cells to report on")
    store = found.cells[0].store
    page: StorePath = html or store.root / "report.html"
    figure_dir = page.parent / "report" / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    comparison = compare(found, details=True)
    by_kind: dict[str, list[CellRef]] = defaultdict(list)
    for c in found.cells:
        by_kind[c.kind].append(c)
    sections, names = [], []
    written: list[StorePath] = []
    for kind, cells in sorted(by_kind.items()):
        figures = []
        for fig in kind_figures(kind, cells, comparison):
            png = _png(fig)
            path = figure_dir / f"{fig.name}.png"
            path.write_bytes(png)
            written.append(path)
            names.append(fig.name)
            figures.append({"name": fig.name, "title": fig.title, "caption": fig.caption,
                            "png": base64.b64encode(png).decode()})
        tables = []
        means = comparison.means
        if not means.is_empty():
            headline = [m.name for m in get_job(kind).measures(cells[0].params) if not m.detail]
            mine = means.filter((pl.col("kind") == kind) & pl.col("measure").is_in(headline))
            if mine.height:
                tables.append(_table("Measures (95% intervals; seeds and finetune replicas pooled)", display(mine)))
        tables.append(_table("Cells", _cells_table(cells)))
        sections.append({"kind": kind, "figures": figures, "tables": tables})
    submission = _submission(store.root)
    sweep_file = source if source.endswith((".yaml", ".yml")) else submission.get("sweep_file") or ""
    sweep_text = Path(sweep_file).read_text() if sweep_file and Path(sweep_file).is_file() else ""
    facts = [("results", str(store.root)), ("cells", f"{len(found.cells)} finished")]
    if submission:
        facts.append(("last submission", f"{submission.get('state', '?')}, started {submission.get('started', '?')}"
                      + (f", {submission['seconds']:.0f} s" if submission.get("seconds") else "")
                      + (f" on {submission['host']}" if submission.get("host") else "")))
    if submission.get("tracking_uri"):
        facts.append(("MLflow", f"{submission['tracking_uri']} (run {submission.get('mlflow_run_id', '?')})"))
    facts.append(("page built", f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {platform.node()}"))
    versions = sorted(package_versions().items()) + [("git commit", git_commit() or "unknown")]
    env = jinja2.Environment(loader=jinja2.PackageLoader("orchestrator.report_page", "."), autoescape=True)
    text = env.get_template("page.html.j2").render(
        title=f"Sweep {store.sweep}", subtitle="orchestrate report", facts=facts, sections=sections,
        notes=comparison.notes, sweep_text=sweep_text, sweep_file=sweep_file, versions=versions)
    write_text(page, text)
    return Page(store.root, page, written, names, sum(len(s["tables"]) for s in sections))


def _cells_table(cells: list[CellRef]) -> pl.DataFrame:
    """One row per cell: its keys and its summary's headline numbers (as the last submit
    computed them)."""
    rows = []
    for c in cells:
        path = c.store.cell_dir(c.kind, c.id) / "summary.json"
        summary = read_json(path) if path.exists() else {}
        patterns = get_job(c.kind).headline
        picked = {k: v for k, v in summary.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
        rows.append({"cell": c.id[:8], **{k: v for k, v in c.keys.items() if k != "model_group"}, **picked})
    return pl.DataFrame(rows, infer_schema_length=None)


def log_page(page: Page) -> str | None:
    """Log the page and its figures to the sweep's last MLflow parent run (named in its
    submission.json) and link the run to the page; the run's id, or None when the sweep has
    no run to log to."""
    from orchestrator.tracking import log_report

    submission = _submission(page.root)
    uri, run_id = submission.get("tracking_uri"), submission.get("mlflow_run_id")
    if not uri or not run_id:
        return None
    log_report(uri, run_id, page.html, page.figures)
    return str(run_id)
