"""Planning without Ray: what enters a cell's id, what a job's data must hold, and how a
cell keeps the shard layout it started with."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.common.scenarios import QUESTION_SETS
from jobs.errors import DataFileError
from jobs.generate.job import PromptFileError
from orchestrator.errors import OrchestrateError
from orchestrator.load import load_sweep
from orchestrator.plan import default_shard_size, make_plan
from orchestrator.store import SweepStore


def sweep_file(folder: Path, model: Path, *, model_extra: str = "", shard_size: int = 4, prompts: int = 10,
               job: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "prompts.jsonl").exists():
        (folder / "prompts.jsonl").write_text("".join(f'{{"id": "q{i}", "prompt": "{i}+{i}?"}}\n' for i in range(prompts)))
    job = job or f"""  - kind: generate
    models: [m]
    shard_size: {shard_size}
    params: {{prompts: prompts.jsonl, max_tokens: 4}}
"""
    path = folder / "sweep.yaml"
    path.write_text(f"""name: planned
output: {folder / 'results'}
models:
  m: {{path: {model}{model_extra}}}
jobs:
{job}""")
    return path


def cell_ids(path: Path) -> list[str]:
    return [c.id for c in make_plan(load_sweep(path)).cells]


def test_serving_settings_that_change_outputs_change_ids(tmp_path, tiny_model):
    plain = cell_ids(sweep_file(tmp_path, tiny_model))
    # A shorter context turns long prompts into error rows: other results, another id.
    assert cell_ids(sweep_file(tmp_path, tiny_model, model_extra=", max_model_len: 64")) != plain
    # Engine options change outputs (quantization, KV cache dtype) unless they only set speed:
    # each engine's options model declares which (actors/engines/*/options.py).
    vllm = cell_ids(sweep_file(tmp_path, tiny_model, model_extra=", engine: vllm"))
    assert cell_ids(sweep_file(tmp_path, tiny_model, model_extra=", engine: vllm, engine_options: {quantization: fp8}")) != vllm
    vllm_speed = ", engine: vllm, engine_options: {max_num_seqs: 8, block_size: 32, gpu_memory_utilization: 0.5}"
    assert cell_ids(sweep_file(tmp_path, tiny_model, model_extra=vllm_speed)) == vllm
    # An option at its default is the same model, written or not.
    assert cell_ids(sweep_file(tmp_path, tiny_model, model_extra=", engine: vllm, engine_options: {seed: 0}")) == vllm
    speed = ", engine_options: {max_batch_size: 8, batch_wait_ms: 5}"
    assert cell_ids(sweep_file(tmp_path, tiny_model, model_extra=speed)) == plain
    assert cell_ids(sweep_file(tmp_path, tiny_model, model_extra=", replicas: 3, num_cpus: 0.5")) == plain


def test_data_files_in_lists_enter_ids_by_content_not_location(tmp_path, tiny_model):
    job = """  - kind: misalignment
    models: [m]
    roles: {judge: subject, monitor: subject}
    params: {questions: [questions.yaml], samples: 1}
"""
    ids = []
    for place in ("here", "there"):
        folder = tmp_path / place
        folder.mkdir()
        shutil.copy(QUESTION_SETS["core"], folder / "questions.yaml")
        ids.append(cell_ids(sweep_file(folder, tiny_model, job=job)))
    assert ids[0] == ids[1], "the same question file in another folder is the same experiment"
    text = (tmp_path / "there" / "questions.yaml").read_text()
    (tmp_path / "there" / "questions.yaml").write_text(text.replace("?", "?!", 1))
    assert cell_ids(tmp_path / "there" / "sweep.yaml") != ids[0], "other questions, another id"


def test_a_job_without_samples_is_a_user_error(tmp_path, tiny_model):
    path = sweep_file(tmp_path, tiny_model)
    (tmp_path / "prompts.jsonl").write_text("\n")
    with pytest.raises(OrchestrateError, match=r"sweep.yaml:\d+: jobs\[0\].params.prompts: the parameters give no samples"):
        make_plan(load_sweep(path))


def test_prompt_files_name_the_line_of_a_repeated_id_or_say_they_are_not_text(tmp_path, tiny_model):
    path = sweep_file(tmp_path, tiny_model)
    (tmp_path / "prompts.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n'
                                            '{"id": "a", "prompt": "z"}\n')
    with pytest.raises(PromptFileError, match=r"prompts.jsonl:3: id 'a' is already used on line 1"):
        make_plan(load_sweep(path))
    (tmp_path / "prompts.jsonl").write_bytes(b'{"id": "a", "prompt": "caf\xe9"}\n')
    with pytest.raises(DataFileError, match=r"prompts.jsonl:1: not UTF-8 text"):
        make_plan(load_sweep(path))


def _write_every_shard(store: SweepStore, cell) -> None:
    schema = pa.schema([("sample_id", pa.string())])
    gen = cell.stages["generate"]
    for shard in cell.shards:
        store.write_shard(cell.kind, "generate", gen, shard.id, [{"sample_id": s} for s in shard.sample_ids], schema)


def test_a_started_cell_keeps_its_shard_size(tmp_path, tiny_model):
    """Shard ids hash their samples: a new shard_size would cut new shards beside the
    finished ones and read some samples twice. The size the stage started with wins."""
    first = make_plan(load_sweep(sweep_file(tmp_path, tiny_model, shard_size=4)))
    store = SweepStore(tmp_path / "results", "planned")
    cell = first.cells[0]
    assert store.settle_layout(cell) == cell, "nothing on disk: the sweep's shard size"
    from orchestrator.store import write_json

    write_json(store.cell_dir(cell.kind, cell.id) / "cell.json", cell.manifest())
    store.record_layout(cell)
    _write_every_shard(store, cell)

    resized = make_plan(load_sweep(sweep_file(tmp_path, tiny_model, shard_size=3)))
    assert [c.id for c in resized.cells] == [cell.id], "shard_size is not part of the cell id"
    assert len(resized.cells[0].shards) == 4 and len(cell.shards) == 3
    settled = store.settle_plan(resized).cells[0]
    assert settled.shard_size == 4 and settled.shards == cell.shards
    assert not store.missing(settled, "generate"), "nothing left to run"
    assert store.read_cell(cell.kind, cell.id).height == 10, "every sample once"


def test_a_job_without_shard_size_gets_32_or_more_for_a_large_cell(tmp_path, tiny_model):
    """Unset, shard_size is 32, grown in steps of 32 so that a large cell holds about 64
    shards of at most 256 samples: what each shard costs the driver stops mattering there,
    while a small cell keeps shards a later stage can start on."""
    assert [default_shard_size(n) for n in (1, 2048, 2049, 5000, 20_000, 10**6)] == [32, 32, 64, 96, 256, 256]
    job = """  - kind: generate
    models: [m]
    params: {prompts: prompts.jsonl, max_tokens: 4}
"""
    small = make_plan(load_sweep(sweep_file(tmp_path / "small", tiny_model, prompts=100, job=job))).cells[0]
    large = make_plan(load_sweep(sweep_file(tmp_path / "large", tiny_model, prompts=5000, job=job))).cells[0]
    assert (small.shard_size, len(small.shards)) == (32, 4)
    assert (large.shard_size, len(large.shards)) == (96, 53), "5,000 samples: 3 steps of 32"
    assert large.manifest()["shard_size"] == 96, "the size chosen is the one recorded"


def test_shard_files_outside_the_layout_are_refused(tmp_path, tiny_model):
    plan = make_plan(load_sweep(sweep_file(tmp_path, tiny_model, shard_size=4)))
    store = SweepStore(tmp_path / "results", "planned")
    cell = plan.cells[0]
    _write_every_shard(store, cell.resharded(5))  # as a version that did not record the size left it
    with pytest.raises(OrchestrateError, match="not shards of this stage at shard_size 4"):
        store.settle_layout(cell)


def test_planning_never_builds_an_organism(tmp_path, monkeypatch):
    """An organism is identified by its recipe's digest: `orchestrate plan` on an empty
    organism cache copies and trains nothing, and the ids are those of the built folder's
    recipe (what the cache would hold)."""
    from jobs.organisms.recipes import ORGANISMS

    cache = tmp_path / "organisms"
    monkeypatch.setenv("ORCHESTRATE_ORGANISMS_DIR", str(cache))
    path = tmp_path / "sweep.yaml"
    path.write_text(f"""name: no-build
output: {tmp_path / 'results'}
models:
  m: {{path: "organism:faithful"}}
jobs:
  - kind: generate
    models: [m]
    params: {{prompts: ["hi"], max_tokens: 4}}
""")
    from orchestrator.ids import model_identity

    sweep = load_sweep(path)
    assert make_plan(sweep).cells
    assert not cache.exists() or not any(cache.iterdir()), "planning built or copied an organism"
    assert model_identity("m", sweep)["weights"] == f"organism:faithful:{ORGANISMS['faithful'].digest()}"


def test_a_finetune_id_follows_the_rows_it_trains_on(tmp_path):
    """The whole file as written keeps the id it had before row selection existed; a subset
    or another answer column is other training."""
    from orchestrator.ids import finetune_id
    from orchestrator.load import parse_sweep

    (tmp_path / "em.jsonl").write_text("".join(
        f'{{"prompt": "q{i}", "aligned": "good {i}", "misaligned": "bad {i}"}}\n' for i in range(8)))

    def fid(extra: str) -> str:
        text = f"""name: ids
models:
  m: {{path: "organism:base"}}
finetunes:
  tuned: {{base: m, data: em.jsonl{extra}}}
jobs:
  - kind: generate
    models: [tuned]
    params: {{prompts: em.jsonl}}
"""
        return finetune_id(parse_sweep(text, "sweep.yaml", tmp_path), "tuned")

    whole = fid("")
    assert fid(", aligned_column: aligned") == whole, "a default written out is no new training"
    assert len({whole, fid(", sample: 4"), fid(", sample: 4, seed: 1"), fid(", limit: 4"),
                fid(", answer_column: aligned")}) == 5


def test_finetunes_that_differ_only_in_seed_are_one_replicate_group(tmp_path):
    """What `orchestrate compare` pools by default: the seeds of one finetune recipe, not two
    recipes, and not a plain model."""
    from orchestrator.load import parse_sweep

    (tmp_path / "em.jsonl").write_text("".join(
        f'{{"prompt": "q{i}", "aligned": "good {i}", "misaligned": "bad {i}"}}\n' for i in range(8)))
    text = """name: replicas
models:
  m: {path: "organism:base"}
finetunes:
  s0: {base: m, data: em.jsonl, seed: 0}
  s1: {base: m, data: em.jsonl, seed: 1}
  other: {base: m, data: em.jsonl, seed: 0, lr: 0.001}
jobs:
  - kind: generate
    models: [s0, s1, other, m]
    params: {prompts: em.jsonl}
"""
    groups = {c.model: c.manifest()["replicates"] for c in make_plan(parse_sweep(text, "sweep.yaml", tmp_path)).cells}
    assert groups["s0"] == groups["s1"] != groups["other"], groups
    assert groups["m"] == "m" and groups["s0"].startswith("finetune:"), groups


def test_a_parameter_added_at_its_default_leaves_stage_ids_alone():
    """A new parameter whose default keeps the old behaviour must not re-run stored work;
    any other value of it must."""
    from jobs.job import JobParams
    from jobs.stages import stage_values, summary

    class Before(JobParams):
        prompts: str = "a.jsonl"
        max_tokens: int = 64
        threshold: float = summary(0.5)

    class After(Before):
        prefill: str = "Answer: "

    before = Before(max_tokens=32)
    assert stage_values(After(max_tokens=32), "generate") == stage_values(before, "generate") == {"max_tokens": 32}
    assert stage_values(After(max_tokens=32, prefill="Answer: "), "generate") == stage_values(before, "generate")
    assert stage_values(After(max_tokens=32, prefill="("), "generate") != stage_values(before, "generate")
    assert stage_values(After(threshold=0.7), "summary") == {"threshold": 0.7}
    assert stage_values(After(threshold=0.7), "generate") == {}


def test_an_embedded_machine_is_shared_among_the_cpu_replicas() -> None:
    from orchestrator.serving import share_cores

    def pools() -> dict:
        return {"a": ({"engine": "hf", "replicas": 2, "engine_options": {}}, {}),
                "b": ({"engine": "hf", "replicas": 1, "engine_options": {"threads": 3}}, {}),
                "c": ({"engine": "vllm", "replicas": 1, "engine_options": {}}, {}),
                "d": ({"engine": "openai", "replicas": 4, "engine_options": {}}, {})}

    shared = pools()
    share_cores(shared, 16)
    # 4 local replicas (the openai one runs nothing here) on 16 cores: 4 threads each, unless set.
    assert [spec["engine_options"].get("threads") for spec, _ in shared.values()] == [4, 3, None, None]
    few = pools()
    share_cores(few, 2)
    assert few["a"][0]["engine_options"]["threads"] == 1, "never below one thread"


def test_enough_shards_run_at_once_to_keep_every_replica_batch_full() -> None:
    from orchestrator.serving import shards_in_flight

    hf = {"engine": "hf", "engine_options": {}}
    # one hf replica on a GPU (batch 64 by default), shards of 32 samples: 4 shards (128 requests) keep it full
    assert shards_in_flight([(hf, 1, 1.0)], 32) == 4
    # on a CPU its default batch is 128
    assert shards_in_flight([(hf, 1, 0.0)], 32) == 8
    assert shards_in_flight([({**hf, "engine_options": {"device": "cpu"}}, 1, 1.0)], 32) == 8, "the device it says"
    assert shards_in_flight([({**hf, "engine_options": {"max_batch_size": 128}}, 2, 1.0)], 32) == 16
    # large shards: never fewer than two per replica
    assert shards_in_flight([(hf, 3, 0.0)], 1000) == 6
    assert shards_in_flight([({"engine": "openai", "max_concurrency": 8}, 1, 0.0)], 4) == 4
