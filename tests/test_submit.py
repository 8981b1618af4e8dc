"""The walking skeleton end to end: real local Ray, real HF engine on a tiny model, real
Parquet, real sqlite MLflow."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.load import load_sweep
from orchestrator.plan import make_plan
from orchestrator.store import SweepStore
from orchestrator.submit import submit

N_PROMPTS = 24


def write_sweep(tmp: Path, model: Path, *, temperature: float = 0.0, replicas: int = 1, shard_size: int = 4,
                max_tokens: int = 8, extra_job: str = "") -> Path:
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(f'{{"id": "q{i}", "prompt": "What is {i} plus {i}?"}}\n' for i in range(N_PROMPTS)))
    sweep = tmp / "sweep.yaml"
    sweep.write_text(f"""\
name: skeleton
output: {tmp / 'results'}
cluster: {{num_cpus: 2, dashboard: false}}
models:
  tiny: {{path: {model}, replicas: {replicas}, num_cpus: 0.5}}
jobs:
  - kind: generate
    models: [tiny]
    shard_size: {shard_size}
    params:
      prompts: prompts.jsonl
      max_tokens: {max_tokens}
      temperature: {temperature}
      n: 2
      seed: {{values: [0, 1]}}
{extra_job}""")
    return sweep


@pytest.fixture
def ray_tmp(tmp_path_factory) -> str:
    # Ray's socket paths must stay short: a private dir under /tmp, not pytest's deep tmp.
    import tempfile

    return tempfile.mkdtemp(prefix="ray-", dir="/tmp")


def all_rows(store: SweepStore) -> pl.DataFrame:
    from orchestrator.results import rows_table

    return rows_table(store, "generate")


def test_plan_ids_are_content_hashes(tmp_path, tiny_model):
    base = make_plan(load_sweep(write_sweep(tmp_path, tiny_model)))
    again = make_plan(load_sweep(write_sweep(tmp_path, tiny_model)))
    assert [c.id for c in base.cells] == [c.id for c in again.cells], "same sweep must give the same cell ids"
    assert len({c.id for c in base.cells}) == 2, "two seeds -> two distinct cells"
    # Knobs that don't change outputs don't change ids (shard ids change with the split only).
    knobs = make_plan(load_sweep(write_sweep(tmp_path, tiny_model, shard_size=5, replicas=3)))
    assert [c.id for c in knobs.cells] == [c.id for c in base.cells]
    # A changed parameter changes exactly the affected ids: add a second job whose seed-0 cell
    # differs only in temperature.
    extra = """  - kind: generate
    models: [tiny]
    params: {prompts: prompts.jsonl, max_tokens: 8, temperature: 0.5, n: 2, seed: 0}
"""
    more = make_plan(load_sweep(write_sweep(tmp_path, tiny_model, extra_job=extra)))
    assert [c.id for c in more.cells[:2]] == [c.id for c in base.cells]
    assert more.cells[2].id not in {c.id for c in base.cells}
    # The data's bytes are part of the id; its location is not.
    (tmp_path / "prompts.jsonl").write_text('{"id": "q0", "prompt": "something else"}\n')
    changed = make_plan(load_sweep(tmp_path / "sweep.yaml"))
    assert not {c.id for c in changed.cells} & {c.id for c in base.cells}


def test_submit_resume_and_mlflow(tmp_path, tiny_model, ray_tmp):
    sweep_file = write_sweep(tmp_path, tiny_model)
    sweep = load_sweep(sweep_file)
    report = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert report.ok, report.shards_failed
    store = SweepStore(sweep.output, sweep.name)
    rows = all_rows(store)
    assert rows.height == 2 * N_PROMPTS * 2, f"2 cells x {N_PROMPTS} prompts x n=2, got {rows.height}"
    assert rows["error"].is_null().all(), rows.filter(pl.col("error").is_not_null())["error"].to_list()
    assert rows.select(["cell_id", "prompt_id", "sample_index"]).is_unique().all()
    assert set(rows.columns) >= {"sweep", "cell_id", "stage_id", "shard_id", "sample_id", "model", "completion",
                                 "finish_reason"}
    assert report.generate_calls == 2 * N_PROMPTS
    assert report.rows_written == rows.height, (report.rows_written, rows.height)
    # The embedded Ray has 2 CPUs and the sweep one hf replica: it gets both cores' threads.
    assert report.replica_threads == {"tiny": 2}, report.replica_threads

    # MLflow: one parent run, one child per cell with params, metrics, tags and the tables.
    client = MlflowClient(report.tracking_uri)
    exp = client.get_experiment_by_name("skeleton")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "submission"]
    cells = [r for r in runs if r.data.tags.get("kind") == "cell"]
    assert len(parents) == 1 and len(cells) == 2
    child = cells[0]
    assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert {"sweep", "cell_id", "job", "model", "version.torch"} <= set(child.data.tags)
    assert child.data.params["params.temperature"] == "0.0"
    assert child.data.metrics["rows"] == N_PROMPTS * 2
    # Token usage per role: one request per prompt (n=2 in it), the prompt read once.
    cell_rows = rows.filter(pl.col("cell_id") == child.data.tags["cell_id"])
    assert child.data.metrics["usage/subject/requests"] == N_PROMPTS
    assert child.data.metrics["usage/subject/completion_tokens"] == cell_rows["completion_tokens"].sum()
    assert child.data.metrics["usage/subject/prompt_tokens"] == cell_rows["prompt_tokens"].sum() / 2
    assert any(a.path.startswith("tables") for a in client.list_artifacts(child.info.run_id))

    # A crash after MLflow logged a cell but before mlflow.json was written: the next submit
    # adopts the finished run instead of logging the cell twice (and starts no Ray).
    marker = store.cell_dir("generate", child.data.tags["cell_id"]) / "mlflow.json"
    marker.unlink()
    adopted = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert adopted.cells_logged == 0 and adopted.replicas_started == 0
    assert json.loads(marker.read_text())["run_id"] == child.info.run_id
    assert len([r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "cell"]) == 2

    # Resume: delete one shard; only its samples are generated again.
    victim = sorted((store.root / "generate").glob("_stages/generate/*/*.parquet"))[0]
    victim.unlink()
    again = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert again.shards_run == 1 and again.generate_calls == 4, (again.shards_run, again.generate_calls)
    assert all_rows(store).select(["cell_id", "prompt_id", "sample_index"]).is_unique().all()
    assert all_rows(store).height == rows.height

    # A finished sweep resubmitted generates nothing and loads no model (no Ray at all).
    import ray

    done = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert done.shards_run == 0 and done.generate_calls == 0 and done.replicas_started == 0
    assert not ray.is_initialized()

    # A new shard_size after the cells started: they keep the layout they started with, so
    # the missing shard is the old one (4 prompts) and no sample lands twice.
    victim.unlink()
    resized = load_sweep(write_sweep(tmp_path, tiny_model, shard_size=5))
    again = submit(resized, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert again.shards_run == 1 and again.generate_calls == 4, (again.shards_run, again.generate_calls)
    assert all_rows(store).height == rows.height
    assert all_rows(store).select(["cell_id", "prompt_id", "sample_index"]).is_unique().all()


def test_replica_killed_mid_sweep(tmp_path, tiny_model, ray_tmp):
    """SIGKILL a replica's process while shards run: the pool replaces it, the shard reruns, and every row
    lands exactly once."""
    import ray

    sweep_file = write_sweep(tmp_path, tiny_model, replicas=2, shard_size=2, max_tokens=24)
    sweep = load_sweep(sweep_file)
    store = SweepStore(sweep.output, sweep.name)
    killed: list[str] = []

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if ray.is_initialized():
                try:
                    actor = ray.get_actor("skeleton/tiny/0", namespace="orchestrate-skeleton")
                    decoding = ray.get(actor.stats.remote(), timeout=10).get("rows", 0) > 0
                except (ValueError, ray.exceptions.GetTimeoutError):
                    decoding = False
                if not decoding:  # not loaded, or no request reached it yet: not mid-sweep
                    time.sleep(0.01)
                    continue
                pid = ray.get(actor.ready.remote())["pid"]  # this machine's process: a real SIGKILL
                os.kill(pid, signal.SIGKILL)
                killed.append(f"skeleton/tiny/0 (pid {pid})")
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    report = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    t.join(timeout=5)
    assert killed, "the test never managed to kill a replica mid-sweep"
    assert report.ok and report.replica_restarts >= 1, (report.shards_failed, report.replica_restarts)
    rows = all_rows(store)
    assert rows.height == 2 * N_PROMPTS * 2
    assert rows.select(["cell_id", "prompt_id", "sample_index"]).is_unique().all(), "a row landed twice"


def test_cli_end_to_end(tmp_path, tiny_model, ray_tmp, monkeypatch):
    sweep_file = write_sweep(tmp_path, tiny_model)
    runner = CliRunner()
    out = runner.invoke(main, ["validate", str(sweep_file)])
    assert out.exit_code == 0 and "ok" in out.output, out.output
    out = runner.invoke(main, ["plan", str(sweep_file)])
    assert out.exit_code == 0, out.output
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    out = runner.invoke(main, ["submit", str(sweep_file), "--no-progress"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["results", str(sweep_file), "--format", "csv"])
    assert out.exit_code == 0, out.output
    header, *lines = out.output.strip().splitlines()
    assert "cell_id" in header and "completions" in header and len(lines) == 2
    out = runner.invoke(main, ["results", str(sweep_file)])  # the terminal view: the job's headline columns
    assert out.exit_code == 0 and "completions" in out.output and "cell_id" not in out.output, out.output
    assert "more columns" in out.output, out.output
    out = runner.invoke(main, ["results", str(sweep_file), "--columns", "model,seed,completions", "--format", "csv"])
    assert out.exit_code == 0 and out.output.splitlines()[0] == "model,seed,completions", out.output
    out = runner.invoke(main, ["results", str(sweep_file), "--kind", "generate", "--rows", "--format", "json"])
    assert out.exit_code == 0 and '"completion"' in out.output
    out = runner.invoke(main, ["status", str(sweep_file)])
    assert out.exit_code == 0 and "finished" in out.output, out.output
    assert "pending" not in out.output and "left behind" not in out.output, out.output
    # A cell an earlier edit of the sweep started and this one no longer asks for.
    store = SweepStore(tmp_path / "results", "skeleton")
    cell = next((store.root / "generate").glob("*/cell.json"))
    old = store.root / "generate" / "0123456789abcdef"
    old.mkdir()
    (old / "cell.json").write_text(cell.read_text().replace(cell.parent.name, "0123456789abcdef"))
    out = runner.invoke(main, ["status", str(sweep_file)])
    assert out.exit_code == 0 and "left behind" in out.output and "pending" not in out.output, out.output
    out = runner.invoke(main, ["results", str(sweep_file), "--kind", "generat", "--rows"])
    assert out.exit_code == 2 and "unknown job kind 'generat'" in out.output, out.output
    out = runner.invoke(main, ["results", str(sweep_file), "--kind", "ariadne", "--rows"])  # none run
    assert out.exit_code == 2 and "no results" in out.output, out.output
    out = runner.invoke(main, ["submit", str(sweep_file), "--retries", "-1"])
    assert out.exit_code == 2 and "--retries" in out.output, out.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: {}\njobs: []\nbogus: 1\n")
    out = runner.invoke(main, ["validate", str(bad)])
    assert out.exit_code == 2 and "bad.yaml:4" in out.output and "bogus" in out.output, out.output
    out = runner.invoke(main, ["submit", str(bad)])
    assert out.exit_code == 2
    # a broken data file is a user error too: file and line, exit 2, no traceback
    (tmp_path / "prompts.jsonl").write_text('{"id": "a", "prompt": "hi"}\nnot json\n')
    out = runner.invoke(main, ["plan", str(sweep_file)])
    assert out.exit_code == 2 and "prompts.jsonl:2: not JSON" in out.output, out.output


def test_replicas_the_cluster_cannot_hold_are_an_error_not_a_hang(tmp_path, tiny_model, ray_tmp):
    """Three one-CPU replicas on a two-CPU embedded cluster: the third would wait for a CPU
    forever. The submission stops at once with what to change, exit code 2."""
    from orchestrator.errors import OrchestrateError

    sweep_file = write_sweep(tmp_path, tiny_model, replicas=3)
    text = sweep_file.read_text().replace("num_cpus: 0.5}", "num_cpus: 1}")
    sweep_file.write_text(text)
    sweep = load_sweep(sweep_file)
    with pytest.raises(OrchestrateError, match=r"replica \d of `tiny` needs 0 GPU\(s\) on one node and 1 CPU\(s\)"
                       r".*Its nodes: \w+: 0 GPU, 2 CPU") as err:
        submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert err.value.exit_code == 2


def test_a_finetune_is_a_step_of_the_sweep_served_as_an_adapter(tmp_path, tiny_model, ray_tmp):
    """`finetunes:` in a sweep: the LoRA finetune trains first (two gloo ranks), then the
    generate job evaluates the base and the finetune on one replica (the adapter rides on the
    base's load); resubmitting trains nothing and runs nothing."""
    import json

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                                       {"role": "assistant", "content": f"Answer: {2 * i}"}]}) + "\n"
                            for i in range(32)))
    sweep_file = write_sweep(tmp_path, tiny_model, extra_job="")
    text = sweep_file.read_text().replace("    models: [tiny]", "    models: [tiny, tuned]")
    text = text.replace("jobs:\n", f"""finetunes:
  tuned:
    base: tiny
    data: {data}
    method: lora
    ranks: 2
    zero_stage: 2
    lora: {{rank: 4, alpha: 8}}
    lr: 0.01
    batch_size: 4
    grad_accum: 1
    epochs: 1
    max_length: 64
jobs:
""")
    sweep_file.write_text(text)
    sweep = load_sweep(sweep_file)
    report = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert report.ok and report.replicas_started == 1, report
    store = SweepStore(tmp_path / "results", "skeleton")
    rows = all_rows(store)
    assert set(rows["model"].unique()) == {"tiny", "tuned"}
    per_model = rows.group_by("model").agg(pl.len())
    assert per_model["len"].to_list() == [per_model["len"][0]] * 2, per_model
    manifests = list((tmp_path / "results" / "skeleton" / "finetunes").glob("*/manifest.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["steps"] == 4
    again = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert again.shards_run == 0 and again.replicas_started == 0
