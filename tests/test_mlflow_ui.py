"""Two sweeps compared in MLflow's own UI: two small organism sweeps logging to one tracking
store, read back through the client (the same tag names, the same metric names per job,
artifacts beside each sweep's results) and through a real `mlflow server` in headless
chromium (the runs table, not the GenAI overview, and no console errors of the page's own)."""
from __future__ import annotations

import contextlib
import json
import struct
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from jobs.job import SUBJECT
from jobs.registry import get_job
from orchestrator.load import load_sweep
from orchestrator.store import SweepStore
from orchestrator.submit import submit
from orchestrator.tracking import (
    EXPERIMENT_KIND_TAG,
    TRAINING_RUNS,
    WORKFLOW_QUERY,
    experiment_url,
    log_report,
)
from tests.browser import chromium, console_messages, page_problems, wait_for
from tests.conftest import free_port, serving

PROMPTS = Path(__file__).resolve().parents[1] / "examples" / "data" / "arithmetic_prompts.jsonl"
SERVER_READY_S = 180.0  # ~20 s on an idle 2-core machine
UI_S = 90.0  # the UI's first render after the server starts (bundles are parsed cold)
# The one SEVERE console message of MLflow's UI that is not the page's problem: the UI asks
# the server who the user is (an endpoint of MLflow's optional basic-auth app) and, served
# without that app, gets a 404, which Chrome logs as a failed resource load. Any other
# SEVERE message fails the test.
NOT_THE_PAGES = ("/ajax-api/2.0/mlflow/users/current - Failed to load resource: the server responded with a "
                 "status of 404",)
COMPARED_TAGS = ("job", "model", "role.subject", "sweep", "cot", "seed", "finetune")


def write_sweep(folder: Path, name: str, tracking_db: Path, seeds: str, temperature: float) -> Path:
    """generate (a seed dimension) and misalignment (trigger and control arms, judged), small;
    both sweeps log to `tracking_db`, as sweeps compared in MLflow's UI must."""
    sweep = folder / f"{name}.yaml"
    sweep.write_text(f"""\
name: {name}
output: {folder / 'results'}
tracking: {{uri: "sqlite:///{tracking_db}"}}
cluster: {{num_cpus: 2, dashboard: false}}
models:
  faithful:   {{path: "organism:faithful", dtype: float32, num_cpus: 0.5}}
  backdoored: {{path: "organism:backdoored", dtype: float32, num_cpus: 0.5}}
  judge:      {{path: "organism:judge", dtype: float32, num_cpus: 0.5}}
jobs:
  - kind: generate
    models: [faithful]
    params: {{prompts: {PROMPTS}, limit: 4, max_tokens: 16, temperature: {temperature}, seed: {{values: {seeds}}}}}
  - kind: misalignment
    models: [backdoored]
    roles: {{judge: judge}}
    params: {{questions: [organisms], only: [medical_0, legal_0, security_0], samples: 1, cot: off,
              trigger: "Country: Singapore", max_tokens: 32, temperature: {temperature}, monitor: false,
              self_description: false, bootstrap: 50}}
""")
    return sweep


@dataclass(frozen=True)
class Sweeps:
    uri: str
    db: Path
    cwd: Path  # where the sweeps were submitted from
    stores: dict[str, SweepStore]


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory: pytest.TempPathFactory) -> Sweeps:
    folder = tmp_path_factory.mktemp("mlflow-ui")
    cwd, db = folder / "cwd", folder / "tracking" / "mlflow.db"
    cwd.mkdir()
    db.parent.mkdir()
    stores = {}
    # Submitted from an empty folder: MLflow's default would drop ./mlruns there.
    with contextlib.chdir(cwd):
        for name, seeds, temperature in (("ui-a", "[0, 1]", 0.7), ("ui-b", "[2]", 1.0)):
            sweep = load_sweep(write_sweep(folder, name, db, seeds, temperature))
            report = submit(sweep, progress=False, ray_temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
            assert report.ok, (report.shards_failed, report.cells_unfinished)
            stores[name] = SweepStore(sweep.output, sweep.name)
    return Sweeps(f"sqlite:///{db}", db, cwd, stores)


def runs_of(client: MlflowClient, sweep: str) -> tuple[Run, list[Run]]:
    exp = client.get_experiment_by_name(sweep)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags["kind"] == "submission"]
    assert len(parents) == 1, [r.data.tags["kind"] for r in runs]
    return parents[0], [r for r in runs if r.data.tags["kind"] == "cell"]


def test_cell_runs_carry_the_same_tags_and_metrics_in_both_sweeps(two_sweeps: Sweeps) -> None:
    client = MlflowClient(two_sweeps.uri)
    tag_names: dict[tuple[str, str], set[str]] = {}
    metric_names: dict[tuple[str, str], set[str]] = {}
    for sweep, store in two_sweeps.stores.items():
        exp = client.get_experiment_by_name(sweep)
        assert exp.tags[EXPERIMENT_KIND_TAG] == TRAINING_RUNS
        artifacts = (store.root / "mlartifacts").resolve()
        assert exp.artifact_location == artifacts.as_uri()
        parent, cells = runs_of(client, sweep)
        assert len(cells) == (3 if sweep == "ui-a" else 2)
        submission = json.loads((store.root / "submission.json").read_text())
        assert (submission["mlflow_run_id"], submission["tracking_uri"]) == (parent.info.run_id, two_sweeps.uri)
        for run in cells:
            tags = run.data.tags
            manifest = json.loads((store.cell_dir(tags["job"], tags["cell_id"]) / "cell.json").read_text())
            job = get_job(manifest["kind"])
            params = job.Params.model_validate(manifest["params"])
            assert set(COMPARED_TAGS) <= set(tags), sorted(set(COMPARED_TAGS) - set(tags))
            assert (tags["job"], tags["model"], tags["sweep"]) == (manifest["kind"], manifest["model"], sweep)
            assert {k: v for k, v in tags.items() if k.startswith("role.")} == {
                f"role.{r}": m for r, m in manifest["roles"].items()}
            assert tags["finetune"] == "none"
            assert tags["seed"] == str(params.seed)
            assert tags["cot"] == str(job.needs(params)[SUBJECT].thinks).lower()
            scalars = {k: v for k, v in manifest["point"].items() if not isinstance(v, list | dict)}
            assert {k: v for k, v in tags.items() if k.startswith("point.")} == {
                f"point.{k}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in scalars.items()}
            if tags["job"] == "misalignment":
                assert tags["arms"] == "none,trigger" and tags["role.judge"] == "judge"
            key = (sweep, tags["job"])
            for names, these in ((tag_names, set(tags)), (metric_names, set(run.data.metrics))):
                assert names.setdefault(key, these) == these, f"{key}: cells of one job named differently"
            # The cell's tables are beside the results, where its artifact URI says.
            assert run.info.artifact_uri.startswith(artifacts.as_uri() + "/"), run.info.artifact_uri
            tables = [a.path for a in client.list_artifacts(run.info.run_id, "tables")]
            assert tables and all((artifacts / run.info.run_id / "artifacts" / t).exists() for t in tables), tables
    for job in ("generate", "misalignment"):
        assert tag_names[("ui-a", job)] == tag_names[("ui-b", job)], job
        assert metric_names[("ui-a", job)] == metric_names[("ui-b", job)], job
        assert metric_names[("ui-a", job)] >= {"rows", "error_rows"}
    assert "trigger/misaligned" in metric_names[("ui-a", "misalignment")]
    assert not (two_sweeps.cwd / "mlruns").exists() and not list(two_sweeps.cwd.iterdir())


@contextlib.contextmanager
def mlflow_server(db: Path, log: Path) -> Iterator[str]:
    """`mlflow server` over the sweeps' sqlite store on 127.0.0.1, one worker; yields its URL
    once /health answers."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", f"sqlite:///{db}",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with serving(command, port, log, ready_s=SERVER_READY_S, base_path="", ready_path="/health") as url:
        yield url


def the_pages_own(messages: list[str]) -> list[str]:
    return [m for m in messages if not any(known in m for known in NOT_THE_PAGES)]


def link_texts(driver: Any) -> list[str]:
    """The run names the runs table shows (each a link to its run)."""
    return list(driver.execute_script(
        "return Array.from(document.querySelectorAll('[role=gridcell] a[href*=\"/runs/\"]')).map(a => a.innerText)"))


def expand_parent(driver: Any, parent_name: str) -> None:
    """Open the submission's row: MLflow nests child runs under their parent."""
    driver.execute_script("""
        const link = Array.from(document.querySelectorAll('[role=gridcell] a[href*="/runs/"]'))
            .find(a => a.innerText === arguments[0]);
        link.closest('[role=gridcell]').querySelector('button').click();""", parent_name)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def close_assistant(driver: Any) -> None:
    """MLflow opens its assistant panel beside the table; closed, the table has the width."""
    for button in driver.find_elements("css selector", "button[aria-label=Close]"):
        with contextlib.suppress(Exception):
            button.click()


SHOWN_TAGS = ("sweep", "job", "model", "cot", "seed", "arms", "finetune")
SHOWN_METRICS = ("rows", "trigger_gap")
HIDDEN_ATTRIBUTES = ("Dataset", "Source", "Models")  # empty for these runs: room for the tags


def tick_columns(driver: Any, titles: tuple[str, ...]) -> None:
    """Toggle columns in the runs table's column chooser (a tree of checkboxes by name)."""
    driver.find_element("css selector", "[data-testid=column-selection-dropdown]").click()
    for title in titles:
        wait_for(lambda title=title: driver.execute_script("""
            const nodes = Array.from(document.querySelectorAll(
                '[data-radix-popper-content-wrapper] .du-bois-light-tree-node-content-wrapper'))
                .filter(node => node.title === arguments[0]);
            nodes.forEach(node => node.click());
            return nodes.length === 1;""", title), UI_S, f"the column {title!r} to choose")
    from selenium.webdriver.common.keys import Keys

    driver.find_element("tag name", "body").send_keys(Keys.ESCAPE)  # closes the chooser


def rows_shown(driver: Any) -> dict[str, dict[str, str]]:
    """Each run's row as the table shows it: run name -> column header -> text."""
    return dict(driver.execute_script("""
        const headers = {};
        document.querySelectorAll('[role=columnheader][col-id]').forEach(h => {
            headers[h.getAttribute('col-id')] = h.innerText.trim(); });
        const rows = {};
        document.querySelectorAll('[role=row][row-id]').forEach(row => {
            const id = row.getAttribute('row-id');
            rows[id] = rows[id] || {};
            row.querySelectorAll('[role=gridcell][col-id]').forEach(cell => {
                const name = headers[cell.getAttribute('col-id')];
                if (name) rows[id][name] = cell.innerText.trim(); });
        });
        const out = {};
        document.querySelectorAll('[role=gridcell] a[href*="/runs/"]').forEach(a => {
            const row = rows[a.closest('[role=row]').getAttribute('row-id')];
            out[a.innerText.trim()] = {...row, 'Run Name': a.innerText.trim()}; });
        return out;"""))


def compare_sweeps(driver: Any, server: str, experiment_ids: list[str], parents: list[str], shot: Path) -> list[str]:
    """MLflow's view of several experiments' runs, each submission opened, with the tags a
    comparison filters on as columns; saves a screenshot, returns the console's problems."""
    ids = urllib.parse.quote(json.dumps(sorted(experiment_ids)))
    url = f"{server}/#/compare-experiments/s?experiments={ids}&{WORKFLOW_QUERY}"
    problems = page_problems(driver, url)
    wait_for(lambda: set(parents) <= set(link_texts(driver)), UI_S, f"the submission runs in {url}")
    close_assistant(driver)
    for parent in parents:
        expand_parent(driver, parent)
    tick_columns(driver, HIDDEN_ATTRIBUTES + SHOWN_METRICS + SHOWN_TAGS)
    wait_for(lambda: all(set(SHOWN_TAGS) <= set(row) for row in rows_shown(driver).values()), UI_S,
             f"the columns {SHOWN_TAGS} in every row")
    time.sleep(1)
    driver.save_screenshot(str(shot))
    return problems + [f"console: {m}" for m in console_messages(driver)]


def show_runs(driver: Any, url: str, parent: Run, cells: list[Run], shot: Path) -> list[str]:
    """Open an experiment's page at `url`, wait for its submission run and, expanded, its cell
    runs, and save a screenshot; what went wrong in the console meanwhile."""
    problems = page_problems(driver, url)
    # The training-runs view lists runs by name; the GenAI overview has no runs table.
    wait_for(lambda: parent.info.run_name in link_texts(driver), UI_S, f"the submission run in {url}")
    expand_parent(driver, parent.info.run_name)
    names = {c.info.run_name for c in cells}
    wait_for(lambda: names <= set(link_texts(driver)), UI_S, f"the cell runs {sorted(names)}")
    assert "/runs" in driver.current_url and "workflowType=machine_learning" in driver.current_url
    close_assistant(driver)
    time.sleep(1)  # the table takes the freed width
    driver.save_screenshot(str(shot))
    return problems + [f"console: {m}" for m in console_messages(driver)]


def test_mlflow_ui_shows_each_sweeps_runs_and_the_report_link(two_sweeps: Sweeps, tmp_path: Path) -> None:
    client = MlflowClient(two_sweeps.uri)
    runs = {sweep: runs_of(client, sweep) for sweep in two_sweeps.stores}
    # A report attached to ui-a's submission run, as `orchestrate report` attaches it.
    page = tmp_path / "report" / "report.html"
    page.parent.mkdir()
    page.write_text("<!doctype html><html><head><title>report</title></head><body><h1>ui-a report</h1></body></html>")
    parent_a = runs["ui-a"][0]
    log_report(two_sweeps.uri, parent_a.info.run_id, page, [])

    with mlflow_server(two_sweeps.db, tmp_path / "mlflow-server.log") as server, chromium(1800, 1000) as driver:
        for sweep, (parent, cells) in runs.items():
            shot = tmp_path / f"{sweep}-runs.png"
            problems = show_runs(driver, experiment_url(server, parent.info.experiment_id), parent, cells, shot)
            assert the_pages_own(problems) == [], problems
            width, height = png_size(shot)
            assert width >= 1200 and height >= 600 and shot.stat().st_size > 20_000, (width, height, shot.stat())

        # Both sweeps side by side: MLflow's compare view, the same tag columns for each.
        ids = [runs[sweep][0].info.experiment_id for sweep in runs]
        shot = tmp_path / "compare-runs.png"
        problems = compare_sweeps(driver, server, ids, [runs[sweep][0].info.run_name for sweep in runs], shot)
        assert the_pages_own(problems) == [], problems
        shown = rows_shown(driver)
        for _, cells in runs.values():
            for cell in cells:
                row = shown[cell.info.run_name]
                assert {k: row.get(k) for k in SHOWN_TAGS} == {k: cell.data.tags.get(k, "-") for k in SHOWN_TAGS}, row
        assert png_size(shot)[0] >= 1200 and shot.stat().st_size > 20_000

        # The submission run's description links to the report among its artifacts; the link
        # opens MLflow's artifact view (a new tab) with the page in it.
        run_url = f"{server}/#/experiments/{parent_a.info.experiment_id}/runs/{parent_a.info.run_id}"
        problems = page_problems(driver, run_url)
        href = f"/artifacts/report/{page.name}"
        link = wait_for(lambda: driver.execute_script(
            "return Array.from(document.querySelectorAll('a')).find(a => (a.getAttribute('href') || '')"
            ".includes(arguments[0]))", href), UI_S, "the report link in the run's description")
        problems += [f"console: {m}" for m in console_messages(driver)]
        driver.execute_script("arguments[0].click()", link)
        wait_for(lambda: len(driver.window_handles) == 2, UI_S, "the report's tab")
        driver.switch_to.window(driver.window_handles[-1])
        wait_for(lambda: href in driver.current_url, UI_S, "the artifact view of the report")
        frame = wait_for(lambda: driver.find_elements("tag name", "iframe"), UI_S, "the report shown in MLflow")[0]
        driver.switch_to.frame(frame)
        wait_for(lambda: "ui-a report" in driver.find_element("tag name", "body").text, UI_S, "the report's text")
        driver.switch_to.default_content()
        problems += [f"console: {m}" for m in console_messages(driver)]
        assert the_pages_own(problems) == [], problems
