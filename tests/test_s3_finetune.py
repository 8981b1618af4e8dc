"""A finetune in a sweep whose results are on an object store (issue 23): its rank works in its
node's scratch folder, the adapter is uploaded beside the results with its manifest last, and
the replica fetches it into the node's cache before serving it. Against a real S3-compatible
server (moto's server mode) on 127.0.0.1, with real Ray, DeepSpeed and MLflow."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from mlflow.tracking import MlflowClient

from actors.fetch import SCRATCH_NAME
from orchestrator.load import load_sweep
from orchestrator.results import rows_table
from orchestrator.storage import ObjectPath
from orchestrator.store import SweepStore
from orchestrator.submit import submit
from tests.test_s3_output import objects, s3  # noqa: F401  (s3: a fixture)
from tests.test_submit import ray_tmp  # noqa: F401  (a fixture)


def write_sweep(folder: Path, model: Path, output: str) -> Path:
    data = folder / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                                       {"role": "assistant", "content": f"Answer: {2 * i}"}]}) + "\n"
                            for i in range(8)))
    (folder / "prompts.jsonl").write_text("".join(f'{{"id": "q{i}", "prompt": "What is {i} plus {i}?"}}\n'
                                                  for i in range(4)))
    sweep = folder / "sweep.yaml"
    sweep.write_text(f"""\
name: tuned-on-s3
output: "{output}"
cluster: {{num_cpus: 2, dashboard: false}}
models:
  tiny: {{path: {model}, num_cpus: 0.5}}
finetunes:
  tuned:
    base: tiny
    data: sft.jsonl
    method: lora
    ranks: 1
    lora: {{rank: 4, alpha: 8}}
    lr: 0.01
    batch_size: 4
    grad_accum: 1
    epochs: 2
    warmup_steps: 0
    max_length: 64
jobs:
  - kind: generate
    models: [tiny, tuned]
    shard_size: 4
    params:
      prompts: prompts.jsonl
      max_tokens: 8
      temperature: 0.0
""")
    return sweep


def test_a_finetune_with_results_on_s3_is_uploaded_and_fetched_by_the_replica(s3, tmp_path, tiny_model, ray_tmp,
                                                                               monkeypatch):
    work, node_tmp = tmp_path / "work", tmp_path / "node"
    work.mkdir()
    node_tmp.mkdir()
    # The Ray workers (rank, replica) inherit it: their node's scratch folder is where we can see it.
    monkeypatch.setenv("TMPDIR", str(node_tmp))
    monkeypatch.chdir(work)
    sweep_file = write_sweep(work, tiny_model, s3)
    sweep = load_sweep(sweep_file)
    report = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert report.ok and report.finetunes_trained == 1 and report.replicas_started == 1, report

    stored = objects(s3)
    (folder,) = {o.split("/")[2] for o in stored if o.startswith("tuned-on-s3/finetunes/")}
    assert folder.startswith("tuned-") and not folder.startswith("tuned-on"), stored
    finetune = [o[len(f"tuned-on-s3/finetunes/{folder}/"):] for o in stored
                if o.startswith(f"tuned-on-s3/finetunes/{folder}/")]
    assert sorted(finetune) == ["adapter/README.md", "adapter/adapter_config.json",
                                "adapter/adapter_model.safetensors", "data.parquet", "manifest.json"], finetune
    root = ObjectPath.from_uri(s3) / "tuned-on-s3" / "finetunes" / folder
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["steps"] == 4 and manifest["data"]["rows"] == 8 and manifest["output"] == "adapter"
    # The manifest came last: every other object of the folder is older than it or as old.
    assert max((root / f).stat().st_mtime for f in finetune) == (root / "manifest.json").stat().st_mtime

    # Served as an adapter on the base's one replica, loaded from the node's cache (a copy of the
    # uploaded adapter); the rank's work folder is gone once the adapter was uploaded.
    scratch = node_tmp / SCRATCH_NAME
    (cached,) = (scratch / "fetched").glob(f"*{folder}*adapter*")
    assert (cached / "adapter_model.safetensors").read_bytes() == (root / "adapter" /
                                                                   "adapter_model.safetensors").read_bytes()
    assert not list((scratch / "finetunes").iterdir()), list((scratch / "finetunes").iterdir())
    rows = rows_table(SweepStore(sweep.output, sweep.name), "generate").sort("prompt_id", "sample_index")
    by_model = {m: rows.filter(pl.col("model") == m)["completion"].to_list() for m in ("tiny", "tuned")}
    assert len(by_model["tiny"]) == len(by_model["tuned"]) == 4
    assert by_model["tiny"] != by_model["tuned"], by_model  # the adapter changed what the model says

    # MLflow logged the adapter (through a local copy of the uploaded one).
    submission = json.loads(ObjectPath.from_uri(s3).joinpath("tuned-on-s3", "submission.json").read_text())
    client = MlflowClient(submission["tracking_uri"])
    experiment = client.get_experiment_by_name("tuned-on-s3")
    (run,) = client.search_runs([experiment.experiment_id], "tags.kind = 'finetune'")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"adapter", "data.parquet", "manifest.json"}

    # A resubmit finds the finetune (and every shard) on the store: nothing is trained or started.
    again = submit(sweep, sweep_file=str(sweep_file), progress=False, ray_temp_dir=ray_tmp)
    assert again.ok and again.finetunes_trained == 0 and again.shards_run == 0 and again.replicas_started == 0
    assert objects(s3) == stored
    # Nothing of it in a local results folder.
    assert sorted(p.name for p in work.iterdir()) == ["prompts.jsonl", "sft.jsonl", "sweep.yaml"]


def test_replicas_starting_together_on_a_node_fetch_a_folder_once(s3, tmp_path, monkeypatch):
    """`fetched` from many threads at once (as replicas of one node starting together): one
    download renamed into place, every caller gets it, nothing half-made is left behind. Without
    the lock a second download's rename onto the finished folder fails."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from actors.fetch import fetched, upload_folder

    source = tmp_path / "adapter"
    source.mkdir()
    for i in range(20):  # enough files that the downloads overlap
        (source / f"part{i}.bin").write_bytes(bytes([i]) * 50_000)
    base, query = s3.split("?")
    uri = f"{base}/sweep/finetunes/tuned-0123/adapter?{query}"
    upload_folder(source, uri)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node"))  # this process's node scratch
    (tmp_path / "node").mkdir()
    with ThreadPoolExecutor(6) as pool:
        paths = set(pool.map(lambda _: fetched(uri), range(6)))
    (path,) = paths
    cache = tmp_path / "node" / SCRATCH_NAME / "fetched"
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [Path(path).name]
    assert "tuned-0123-adapter" in path
    assert sorted(p.name for p in Path(path).iterdir()) == sorted(p.name for p in source.iterdir())
    assert all((Path(path) / f.name).read_bytes() == f.read_bytes() for f in source.iterdir())
    assert fetched(str(source)) == str(source)  # a local folder is used where it is
