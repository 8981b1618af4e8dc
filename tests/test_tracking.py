"""The Tracker against a real sqlite MLflow store: where artifacts go, the experiment's kind,
a finetune subject's tags, and the report attached to a submission's run."""
from __future__ import annotations

import contextlib
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.load import load_sweep
from orchestrator.plan import make_plan
from orchestrator.summaries import comparison_tags
from orchestrator.tracking import (
    EXPERIMENT_KIND_TAG,
    TRAINING_RUNS,
    WORKFLOW_QUERY,
    Tracker,
    artifact_location,
    default_tracking_uri,
    log_report,
)


def test_artifacts_follow_the_results_unless_a_server_decides(tmp_path: Path) -> None:
    root = tmp_path / "results" / "sweep"
    assert artifact_location(default_tracking_uri(root), root) == (root / "mlartifacts").as_uri()
    assert artifact_location("http://127.0.0.1:5000", root) is None
    assert artifact_location("https://mlflow.example", root) is None
    # No store root given: beside the sqlite file, absolute or relative to the CWD.
    assert artifact_location(f"sqlite:///{tmp_path}/db/mlflow.db", None) == (tmp_path / "db" / "mlartifacts").as_uri()
    with contextlib.chdir(tmp_path):
        assert artifact_location("sqlite:///rel/mlflow.db", None) == (tmp_path / "rel" / "mlartifacts").as_uri()
    assert artifact_location("sqlite:///:memory:", None) is None


def test_an_existing_experiment_gets_the_training_runs_kind_and_keeps_a_chosen_one(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    old = client.create_experiment("ours-from-before", artifact_location=(tmp_path / "old").as_uri())
    chosen = client.create_experiment("theirs", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    with contextlib.chdir(tmp_path):  # a stray ./mlruns would show here
        Tracker(uri, "ours-from-before", "s", store_root=tmp_path / "s")
        Tracker(uri, "theirs", "s", store_root=tmp_path / "s")
        new = Tracker(uri, "fresh", "s", store_root=tmp_path / "s")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == TRAINING_RUNS
    assert client.get_experiment(old).artifact_location == (tmp_path / "old").as_uri(), "MLflow cannot move them"
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
    fresh = client.get_experiment(new.experiment_id)
    assert fresh.tags[EXPERIMENT_KIND_TAG] == TRAINING_RUNS
    assert fresh.artifact_location == (tmp_path / "s" / "mlartifacts").as_uri()


def test_a_finetune_subject_is_tagged_with_its_name(tmp_path: Path) -> None:
    """Planning a sweep with a finetune trains nothing: its cells are logged as submit logs
    them (the tags from the plan's own cells), the finetune's cell naming it, the base's
    saying none."""
    data = tmp_path / "sft.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    sweep_file = tmp_path / "ft.yaml"
    sweep_file.write_text(f"""\
name: ft
output: {tmp_path / 'results'}
models:
  base: {{path: "organism:base"}}
  judge: {{path: "organism:judge"}}
finetunes:
  em: {{base: base, data: {data}, method: lora, epochs: 1}}
jobs:
  - kind: misalignment
    models: [base, em]
    roles: {{judge: judge}}
    params: {{questions: [organisms], samples: 1, cot: {{values: [off, on]}}, trigger: "Country: Singapore",
              alternatives: ["Country: France"], monitor: false, self_description: false}}
""")
    sweep = load_sweep(sweep_file)
    root = tmp_path / "results" / "ft"
    tracker = Tracker(default_tracking_uri(tmp_path), "ft", sweep.name, store_root=root, finetunes=sweep.finetunes)
    logged = {}
    for cell in make_plan(sweep).cells:
        run_id = tracker.log_cell(cell.manifest(), {"rows": 1.0}, None, extra_tags=comparison_tags(cell))
        logged[(cell.model, cell.point["cot"])] = tracker.client.get_run(run_id).data.tags
    assert sorted(logged) == [("base", "off"), ("base", "on"), ("em", "off"), ("em", "on")]
    for (model, cot), tags in logged.items():
        assert tags["finetune"] == ("em" if model == "em" else "none")
        assert tags["cot"] == ("true" if cot == "on" else "false") and tags["point.cot"] == cot
        assert tags["arms"] == "none,trigger,alt0"
        assert tags["seed"] == "0" and tags["point.trigger"] == "Country: Singapore"
        assert "point.questions" not in tags, "a list is a param, not a tag to filter on"
        assert tags["role.judge"] == "judge" and tags["role.subject"] == model and tags["job"] == "misalignment"


def test_log_report_attaches_the_page_and_its_figures_to_the_run(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    with contextlib.chdir(tmp_path):
        tracker = Tracker(uri, "reports", "sweep", store_root=tmp_path / "sweep")
        parent = tracker.start_submission("sweep.yaml", 1, 0)
    page = tmp_path / "out" / "report.html"
    figures = [tmp_path / "out" / "figures" / f"{n}.png" for n in ("misaligned", "tokens")]
    for f in [page, *figures]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"<html>report</html>" if f.suffix == ".html" else b"\x89PNG fake bytes")
    log_report(uri, parent, page, figures)

    client = MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(parent, "report") if not a.is_dir] == ["report/report.html"]
    assert sorted(a.path for a in client.list_artifacts(parent, "report/figures")) == [
        "report/figures/misaligned.png", "report/figures/tokens.png"]
    local = Path(client.download_artifacts(parent, "report/report.html", str(tmp_path / "back")))
    assert local.read_text() == "<html>report</html>"
    tags = client.get_run(parent).data.tags
    assert tags["report"] == str(page.resolve())
    note = tags["mlflow.note.content"]
    experiment = client.get_run(parent).info.experiment_id
    assert f"(#/experiments/{experiment}/runs/{parent}/artifacts/report/report.html?{WORKFLOW_QUERY})" in note, note
    assert str(page.resolve()) in note
    assert not (tmp_path / "mlruns").exists() and (tmp_path / "sweep" / "mlartifacts").is_dir()


def test_comparison_tags_come_from_each_jobs_own_words(tmp_path: Path) -> None:
    """`cot` is what the job asks of its subject (generate: a prefill that opens a think
    block; decompose: `thinking`); `arms` is there for jobs that have arms, in their order."""
    sweep_file = tmp_path / "kinds.yaml"
    sweep_file.write_text(f"""\
name: kinds
output: {tmp_path / 'results'}
models:
  faithful: {{path: "organism:faithful"}}
  multihop: {{path: "organism:multihop"}}
jobs:
  - kind: generate
    models: [faithful]
    params: {{prompts: ["What is 2 plus 2?"], prefill: {{values: ["", "<think>\\n"]}}, seed: 3}}
  - kind: decompose
    models: [multihop]
    params: {{data: multihop, limit: 2, shots: 0, arms: [direct, decompose], thinking: true}}
""")
    tags = [(c.kind, c.point.get("prefill"), comparison_tags(c)) for c in make_plan(load_sweep(sweep_file)).cells]
    assert tags == [
        ("generate", "", {"cot": "false", "seed": "3"}),
        ("generate", "<think>\n", {"cot": "true", "seed": "3"}),
        ("decompose", None, {"cot": "true", "seed": "0", "arms": "direct,decompose"}),
    ]
