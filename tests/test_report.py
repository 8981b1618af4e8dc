"""`orchestrate report` on a real sweep of every kind: each figure has the series, points and
interval marks its data implies; the page is one file that a real browser shows without a
console error or a broken image; and the sweep's MLflow run holds it."""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from matplotlib.collections import PolyCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.compare import compare, read_sources
from orchestrator.compare.table import default_by
from orchestrator.figures.common import Figure
from orchestrator.report_page.figures import kind_figures
from tests.browser import chromium, page_problems

EXPECTED = {
    "generate": ["generate-lengths"],
    "misalignment": ["misalignment-rates", "misalignment-per-question"],  # monitor off: no monitor figure
    "ariadne": ["ariadne-rho", "ariadne-lanham", "ariadne-phi"],
    "decompose": ["decompose-f1"],
    "trigger_scan": ["trigger-scan-ranking"],
}


@pytest.fixture(scope="module")
def figures(every_kind_sweep) -> dict[str, Figure]:
    _, store = every_kind_sweep
    sources = read_sources([str(store.root)])
    comparison = compare(sources, details=True, draws=300)
    out = {}
    for kind in EXPECTED:
        cells = [c for c in sources.cells if c.kind == kind]
        assert default_by(cells)[-1] == "model", default_by(cells)  # each kind's series are its models
        out.update({f.name: f for f in kind_figures(kind, cells, comparison)})
    return out


def points(container: ErrorbarContainer) -> int:
    return len(container.lines[0].get_xdata())


def intervals(container: ErrorbarContainer) -> int:
    """The vertical interval segments drawn (one per point that has an interval)."""
    return sum(len(c.get_segments()) for c in container.lines[2])


def test_every_kind_gets_its_figures(figures):
    assert sorted(figures) == sorted(n for names in EXPECTED.values() for n in names)


def test_misalignment_rates_and_per_question_panels(figures):
    rates = figures["misalignment-rates"].axes()
    assert len(rates) == 1  # free-form only: the sweep asks no multiple-choice scenario
    bars = [c for c in rates[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and all(points(b) == 2 and intervals(b) == 2 for b in bars)  # 2 models x (none, trigger)
    panels = figures["misalignment-per-question"].axes()
    assert [a.get_title() for a in panels] == ["arm: none", "arm: trigger"]
    for ax in panels:
        series = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(series) == 2 and all(points(s) == 16 and intervals(s) == 16 for s in series)


def test_ariadne_rho_lanham_and_phi(figures):
    (rho,) = figures["ariadne-rho"].axes()
    series = [c for c in rho.containers if isinstance(c, ErrorbarContainer)]
    assert len(series) == 2 and all(points(s) == 1 and intervals(s) == 1 for s in series)
    dashed = [line for line in rho.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 2, "each model's noise baseline"
    curves = figures["ariadne-lanham"].axes()
    assert [a.get_title() for a in curves] == ["add mistake", "early answering"]
    for ax in curves:
        assert len([line for line in ax.lines if line.get_marker() == "o"]) == 2
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2, "a 95% band per model"
        assert all(len(line.get_xdata()) >= 2 for line in ax.lines)
    phi = figures["ariadne-phi"].axes()
    assert len(phi) == 2 and all(len(ax.patches) > 0 for ax in phi)


def test_decompose_generate_and_trigger_scan(figures):
    (f1,) = figures["decompose-f1"].axes()
    arms = [c for c in f1.containers if isinstance(c, ErrorbarContainer)]
    assert len(arms) == 2 and all(intervals(a) == points(a) >= 1 for a in arms)
    lengths = figures["generate-lengths"].axes()
    assert len(lengths) == 2 and all(len(ax.containers) == 1 for ax in lengths)  # seeds pooled: one series
    (ranking,) = figures["trigger-scan-ranking"].axes()
    bars = [c for c in ranking.containers if isinstance(c, BarContainer)]
    assert len(bars) == 1 and len(bars[0].patches) == 4, "the four candidates"
    bold = [t.get_text() for t in ranking.get_yticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["Country: Singapore"]
    assert ranking.get_yticklabels()[-1].get_text() == "Country: Singapore", "the planted trigger ranks first"


def test_the_page_is_one_file_a_browser_shows_whole(every_kind_sweep):
    _, store = every_kind_sweep
    result = CliRunner().invoke(main, ["report", str(store.root)])
    assert result.exit_code == 0, result.output
    html = store.root / "report.html"
    text = html.read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 8
    assert not re.search(r'(src|href)="https?:', text), "the page must open offline"
    assert "name: every-kind" in text and "kind: trigger_scan" in text, "the sweep file is on the page"
    assert "mlflow" in text and "git commit" in text
    with chromium() as driver:
        assert page_problems(driver, html.as_uri()) == []
        shown = driver.execute_script("return [...document.images].map(i => i.naturalWidth)")
        assert len(shown) == 8 and min(shown) > 300, shown
    # The sweep's MLflow parent run holds the page and its figures, and links to it.
    assert "logged to MLflow run" in result.output, result.output
    run_id = result.output.rsplit("logged to MLflow run ", 1)[1].split()[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{store.root / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert "report/report.html" in logged and "report/figures" in logged, logged
    figures = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(run_id, "report/figures")}
    assert len(figures) == 8 and "misalignment-rates.png" in figures, figures
    assert client.get_run(run_id).data.tags["report"] == str(html)


def test_the_page_from_the_sweep_file_names_it(every_kind_sweep, tmp_path):
    sweep_file, _ = every_kind_sweep
    page = tmp_path / "page.html"
    result = CliRunner().invoke(main, ["report", str(sweep_file), "-o", str(page), "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert "8 figures" in result.output and (tmp_path / "report" / "figures" / "ariadne-lanham.png").exists()


def test_monitor_flag_shares():
    """The organisms cannot follow the monitor's prompt (their monitor verdicts are nulls with
    reasons), so the monitor's figure is checked on a comparison's rows written out here: a
    point per flag and series, each with its interval."""
    import polars as pl

    from jobs.common.monitor import FLAGS
    from orchestrator.figures.misalignment import monitor_flags

    rows = [{"kind": "misalignment", "measure": f"monitor_flag/{flag}", "model": model, "arm": "trigger",
             "mean": share, "ci_lo": max(0.0, share - 0.1), "ci_hi": min(1.0, share + 0.1)}
            for model in ("em", "base") for flag, share in zip(FLAGS, (0.4, 0.1, 0.2, 0.1, 0.2))]
    fig = monitor_flags(pl.DataFrame(rows), ["model"])
    assert fig is not None
    (ax,) = fig.axes()
    series = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(series) == 2 and all(points(s) == len(FLAGS) == intervals(s) for s in series)
    assert monitor_flags(pl.DataFrame(rows[:0]), ["model"]) is None
