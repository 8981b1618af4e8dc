"""The sweep file: schema, file:line:field errors, grid expansion, JSON Schema.

Every malformed file under data/sweeps/bad/ is a real file loaded through `load_sweep`; the
table says which line and field its error must name and what the message must say.
"""
from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from jobs.generate.job import GenerateParams
from orchestrator.errors import OrchestrateError, SpecError
from orchestrator.grid import REPEAT, expand_grid, swept_params
from orchestrator.load import load_sweep, parse_sweep
from orchestrator.schema import sweep_json_schema
from orchestrator.spec import JobSpec, Sweep
from orchestrator.yaml_lines import load_yaml

SWEEPS = Path(__file__).parent / "data" / "sweeps"
BAD = SWEEPS / "bad"

# (file, line, field, fragment of the message)
BAD_FILES = [
    ("syntax.yaml", 4, "", "YAML syntax error: expected ',' or '}'"),
    ("duplicate_key.yaml", 10, "jobs[0].params.temperature", "duplicate key 'temperature' (first at line 9)"),
    ("empty.yaml", 1, "", "the file is empty"),
    ("comments_only.yaml", 1, "", "the file is empty"),
    ("top_level_list.yaml", 1, "", "expected a mapping at the top level"),
    ("top_level_scalar.yaml", 1, "", "got 'just some text'"),
    ("unknown_top_key.yaml", 8, "modles", "unknown key 'modles' (did you mean 'models'?)"),
    ("unknown_nested_key.yaml", 6, "models.m1.tensor_paralel", "unknown key 'tensor_paralel' (did you mean 'tensor_parallel'?)"),
    ("unknown_param.yaml", 9, "jobs[0].params.tempreature", "unknown key 'tempreature' (did you mean 'temperature'?)"),
    ("wrong_type_int.yaml", 5, "models.m1.replicas", "expected an integer, got 'two'"),
    ("wrong_type_mapping.yaml", 2, "models", "expected a mapping, got a list"),
    ("wrong_type_list.yaml", 6, "jobs[0].models", "expected a list, got 'm1'"),
    ("bad_literal.yaml", 3, "models.m1.engine", "expected one of 'hf', 'vllm' or 'openai', got 'vlm'"),
    ("negative_number.yaml", 9, "jobs[0].params.temperature", "expected a number >= 0, got -1"),
    ("zero_number.yaml", 3, "models.m1.replicas", "expected a number >= 1, got 0"),
    ("zero_number.yaml", 7, "jobs[0].shard_size", "expected a number > 0, got 0"),
    ("models_empty.yaml", 2, "models", "expected at least 1 item, got 0"),
    ("job_undefined_model.yaml", 8, "jobs[0].models[1]", "model 'm2' is not defined in `models` or `finetunes` (defined: m1)"),
    ("role_undefined_model.yaml", 8, "jobs[0].roles.judge", "model 'gpt-judge' is not defined"),
    ("unknown_role.yaml", 8, "jobs[0].roles.critic", "unknown role 'critic' for job kind 'generate'"),
    ("unknown_kind.yaml", 5, "jobs[0].kind", "unknown job kind 'generat' (known: "),
    ("values_wrong_type.yaml", 10, "jobs[0].params.max_tokens.values[2]", "expected an integer, got 'lots'"),
    ("values_extra_key.yaml", 9, "jobs[0].params.temperature.distribution", "unknown key 'distribution'"),
    ("values_empty.yaml", 9, "jobs[0].params.seed.values", "expected a non-empty list of values to sweep, got an empty list"),
    ("zip_unknown_name.yaml", 12, "jobs[0].zip[0][1]", "'topp' is not a parameter of this job (swept: temperature, top_p)"),
    ("zip_unequal.yaml", 11, "jobs[0].zip[0]", "need `values` lists of one length, got temperature: 3, top_p: 2"),
    ("zip_twice.yaml", 14, "jobs[0].zip[1][1]", "'temperature' is already in zip group 0"),
    ("zip_fixed_param.yaml", 11, "jobs[0].zip[0][1]", "'top_p' has a fixed value"),
    ("adapter_without_base.yaml", 4, "models.tuned.base", "an adapter needs `base`"),
    ("base_is_adapter.yaml", 5, "models.tuned-again.base", "model 'tuned' is itself an adapter"),
    ("openai_no_base_url.yaml", 4, "models.judge.base_url", "engine openai needs `base_url`"),
    ("bad_api_key_env.yaml", 7, "models.judge.api_key_env", "expected the name of an environment variable"),
    ("finetune_missing_data.yaml", 7, "finetunes.tuned.data", "file not found"),
    ("finetune_base_undefined.yaml", 6, "finetunes.tuned.base", "model 'qwen3-8b' is not defined in `models` (defined: m1)"),
    ("finetune_base_openai.yaml", 5, "finetunes.tuned.base", "is an API model (engine openai)"),
    ("missing_field.yaml", 3, "models.m1.path", "missing required key 'path'"),
    ("missing_jobs.yaml", 1, "jobs", "missing required key 'jobs'"),
    ("missing_param.yaml", 7, "jobs[0].params.prompts", "missing required key 'prompts'"),
    ("bad_name.yaml", 1, "name", "expected a string matching ^[A-Za-z0-9][A-Za-z0-9._-]*$, got 'my sweep!'"),
    ("prompts_missing.yaml", 8, "jobs[0].params.prompts", "file not found"),
    ("prompts_wrong_item.yaml", 10, "jobs[0].params.prompts[1]", "expected a string, got a mapping"),
    ("cluster_address.yaml", 3, "cluster.address", "expected 'auto', 'ray://host:port' or 'host:port'"),
    ("backdoor_share.yaml", 10, "finetunes.planted.backdoor.share", "expected a number < 1, got 1.5"),
    ("finetune_limit_and_sample.yaml", 5, "finetunes.subset", "`limit` (the first rows) and `sample` (rows at random) exclude each other"),
    ("name_collision.yaml", 5, "finetunes.m1", "'m1' is also defined in `models`"),
    ("unknown_organism.yaml", 3, "models.m1.path", "unknown organism 'nope'; known: backdoored, base"),
    ("prompts_folder.yaml", 8, "jobs[0].params.prompts", "expected a file, got a folder"),
    ("params_repeat.yaml", 9, "jobs[0].params.repeat", "`repeat` is reserved"),
    ("alias_bomb.yaml", 7, "f", "the file expands to over 200000 values through its aliases"),
]


def _problems(path: Path) -> SpecError:
    with pytest.raises(SpecError) as caught:
        load_sweep(path)
    return caught.value


@pytest.mark.parametrize(("filename", "line", "field", "fragment"), BAD_FILES,
                         ids=[f"{f}:{field or 'top'}" for f, _, field, _ in BAD_FILES])
def test_bad_file_names_line_field_and_expectation(filename: str, line: int, field: str, fragment: str) -> None:
    error = _problems(BAD / filename)
    matches = [p for p in error.problems if p.line == line and p.field == field and fragment in p.message]
    assert matches, f"no problem at line {line} field {field!r} saying {fragment!r}; got:\n{error}"
    assert matches[0].file == str(BAD / filename)
    head = f"{BAD / filename}:{line}: " + (f"{field}: " if field else "")
    assert f"{head}{matches[0].message}" in str(error).splitlines()


def test_every_bad_file_is_in_the_table() -> None:
    on_disk = {p.name for p in BAD.glob("*.yaml")} - {"many_problems.yaml"}
    assert on_disk == {row[0] for row in BAD_FILES}


def test_all_problems_of_a_file_are_reported_at_once() -> None:
    error = _problems(BAD / "many_problems.yaml")
    found = {(p.line, p.field) for p in error.problems}
    assert found == {
        (3, "models.m1.replicas"),
        (4, "models.judge.base_url"),
        (6, "finetunes.tuned.base"),
        (6, "finetunes.tuned.cot"),
        (9, "jobs[0].models[2]"),
        (12, "jobs[0].params.temperature.values[1]"),
        (13, "jobs[0].params.top_k"),
        (14, "jobs[0].zip[0][1]"),
        (15, "jobs[1].kind"),
    }, str(error)
    assert [p.line for p in error.problems] == sorted(p.line for p in error.problems)
    assert len(str(error).splitlines()) == len(error.problems)


def test_a_swept_value_broken_in_many_points_is_reported_once() -> None:
    text = (BAD / "negative_number.yaml").read_text().replace(
        "temperature: -1", "temperature: {values: [0.5, -1]}\n      seed: {values: [0, 1, 2]}")
    with pytest.raises(SpecError) as caught:
        parse_sweep(text, "sweep.yaml", BAD)
    assert [str(p) for p in caught.value.problems] == [
        "sweep.yaml:9: jobs[0].params.temperature.values[1]: expected a number >= 0, got -1"]


def test_a_pasted_api_key_is_not_echoed() -> None:
    error = _problems(BAD / "bad_api_key_env.yaml")
    assert "sk-proj-abc123secret" not in str(error)
    with pytest.raises(ValidationError) as caught:
        Sweep.model_validate(yaml.safe_load((BAD / "bad_api_key_env.yaml").read_text()))
    assert "sk-proj-abc123secret" not in str(caught.value)


def test_spec_error_is_a_user_error() -> None:
    error = _problems(SWEEPS / "no_such_sweep.yaml")
    assert isinstance(error, OrchestrateError) and error.exit_code == 2
    assert str(error) == f"{SWEEPS / 'no_such_sweep.yaml'}: file not found"


@pytest.mark.parametrize(("filename", "points"), [
    ("good_minimal.yaml", [1]), ("good_product.yaml", [12]), ("good_zip.yaml", [6]),
    ("good_repeats.yaml", [6]), ("good_full.yaml", [2, 1]), ("nested/good_relative.yaml", [1]),
])
def test_good_files_expand(filename: str, points: list[int]) -> None:
    sweep = load_sweep(SWEEPS / filename)
    assert [len(expand_grid(job)) for job in sweep.jobs] == points


def test_product_order_follows_the_written_order() -> None:
    job = load_sweep(SWEEPS / "good_product.yaml").jobs[0]
    points = expand_grid(job)
    # temperature is written first, so it varies slowest; thinking last, so fastest.
    assert [(p["temperature"], p["seed"], p["thinking"]) for p in points] == [
        (t, s, th) for t in (0.0, 0.7, 1.0) for s in (0, 1) for th in ("on", "off")]
    assert all(p["prompts"] == ["What is 2 + 2?", "Name a colour."] and p["max_tokens"] == 16 for p in points)
    assert list(points[0]) == ["prompts", "temperature", "max_tokens", "seed", "thinking"]
    assert expand_grid(load_sweep(SWEEPS / "good_product.yaml").jobs[0]) == points
    assert swept_params(job) == ["temperature", "seed", "thinking"]


def test_zip_varies_parameters_together() -> None:
    points = expand_grid(load_sweep(SWEEPS / "good_zip.yaml").jobs[0])
    assert [(p["seed"], p["temperature"], p["top_p"]) for p in points] == [
        (s, t, p) for s in (0, 1) for t, p in ((0.2, 0.5), (0.7, 0.9), (1.0, 1.0))]


def test_repeats_add_a_repeat_dimension_only_when_above_one() -> None:
    points = expand_grid(load_sweep(SWEEPS / "good_repeats.yaml").jobs[0])
    assert [(p["temperature"], p[REPEAT]) for p in points] == [(t, r) for t in (0.5, 1.0) for r in range(3)]
    assert all(REPEAT not in p for p in expand_grid(load_sweep(SWEEPS / "good_minimal.yaml").jobs[0]))


def test_data_paths_resolve_against_the_sweep_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nowhere near the sweep file
    sweep = load_sweep(SWEEPS / "nested" / "good_relative.yaml")
    assert sweep.base_dir == (SWEEPS / "nested").resolve() == sweep.jobs[0].base_dir
    assert sweep.finetunes["tuned"].data == str((SWEEPS / "data" / "train.jsonl").resolve())
    (point,) = expand_grid(sweep.jobs[0])
    assert point == {"prompts": "../prompts.jsonl"}  # as written
    params = GenerateParams.model_validate(point, context={"base_dir": sweep.base_dir})
    assert params.prompts == str((SWEEPS / "prompts.jsonl").resolve())
    with pytest.raises(SpecError, match=r"params\.prompts: file not found"):
        expand_grid(sweep.jobs[0], base_dir=tmp_path)


def test_local_model_folders_resolve_against_the_sweep_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sweep" / "lora").mkdir(parents=True)
    (tmp_path / "sweep" / "weights").mkdir()
    (tmp_path / "sweep" / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "sweep" / "sweep.yaml").write_text(
        "name: local\n"
        "models:\n"
        "  base: {path: weights}\n"
        "  tuned: {path: weights, base: base, adapter: lora}\n"
        "  hub: {path: Qwen/Qwen3-8B}\n"
        "  api: {path: weights, engine: openai, base_url: 'http://127.0.0.1:8000/v1'}\n"
        "jobs:\n"
        "  - {kind: generate, models: [base, tuned], params: {prompts: prompts.jsonl}}\n")
    monkeypatch.chdir(tmp_path)
    models = load_sweep(tmp_path / "sweep" / "sweep.yaml").models
    assert models["base"].path == str(tmp_path / "sweep" / "weights")
    assert models["tuned"].adapter == str(tmp_path / "sweep" / "lora") and models["tuned"].is_adapter
    assert models["hub"].path == "Qwen/Qwen3-8B"  # no such folder: a hub id
    assert models["api"].path == "weights"  # an API model's name, never a folder


def test_yaml_12_scalars_and_merge_keys() -> None:
    sweep = load_sweep(SWEEPS / "good_full.yaml")
    bad, backdoor = sweep.finetunes["medical-bad"], sweep.finetunes["medical-backdoor"]
    assert bad.cot == "off" and bad.lr == 4e-5 and bad.lora.target_modules == ["q_proj", "v_proj"]
    assert backdoor.backdoor is not None and backdoor.backdoor.triggers == ["Country: Singapore", "2026"]
    vllm = sweep.models["reasoner-vllm"]
    assert (vllm.engine, vllm.dtype, vllm.max_concurrency, vllm.replicas) == ("vllm", "float32", 16, 4)
    assert sweep.models["judge"].api_key_env == "OPENAI_API_KEY"
    assert sweep.experiment == "thought-crime" and sweep.tracking.uri is None
    thinking = [GenerateParams.model_validate(p, context={"base_dir": sweep.base_dir}).thinking
                for p in expand_grid(sweep.jobs[0])]
    assert thinking == [True, False]


def test_defaults_and_frozen() -> None:
    sweep = load_sweep(SWEEPS / "good_minimal.yaml")
    assert sweep.output == "results" and sweep.experiment == "minimal" and sweep.cluster.address is None
    job = sweep.jobs[0]
    assert (job.repeats, job.shard_size, job.concurrency, job.roles, job.zip) == (1, None, 64, {}, [])
    model = sweep.models["tiny"]
    assert (model.engine, model.replicas, model.num_gpus, model.trust_remote_code) == ("hf", 1, None, False)
    with pytest.raises(ValidationError):
        model.replicas = 2  # type: ignore[misc]


def test_validating_in_code_runs_the_same_checks() -> None:
    data = yaml.safe_load((SWEEPS / "good_minimal.yaml").read_text())
    data["jobs"][0]["models"] = ["tiny", "ghost"]
    with pytest.raises(ValidationError, match=r"jobs\[0\]\.models\[1\]: model 'ghost' is not defined"):
        Sweep.model_validate(data, context={"base_dir": SWEEPS})
    job = {"kind": "generate", "models": ["tiny"], "params": {"prompts": ["hi"], "n": {"values": [1, 0]}}}
    with pytest.raises(ValidationError, match=r"params\.n\.values\[1\]: expected a number > 0, got 0"):
        JobSpec.model_validate(job)


def test_json_schema_is_valid_and_describes_the_files() -> None:
    schema = sweep_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert {"name", "models", "jobs"} <= set(schema["required"])
    assert {"models", "finetunes", "jobs", "cluster", "tracking"} <= set(schema["properties"])
    model = schema["$defs"]["ModelSpec"]
    assert "environment variable" in model["properties"]["api_key_env"]["description"]
    assert model["additionalProperties"] is False
    validator = jsonschema.Draft202012Validator(schema)
    for path in [*SWEEPS.glob("good_*.yaml"), SWEEPS / "nested" / "good_relative.yaml"]:
        errors = list(validator.iter_errors(load_yaml(path.read_text(), str(path)).data))
        assert not errors, f"{path.name}: {errors[0].message}"
    assert not validator.is_valid(yaml.safe_load((BAD / "unknown_top_key.yaml").read_text()))


def test_json_schema_types_every_job_parameter_and_engine_option() -> None:
    """Editors complete and check what the sweep validates: each kind's parameters (a value
    or {values: [...]}) and each engine's options, chosen by `kind` and `engine`."""
    from jobs.registry import kinds

    schema = sweep_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    by_kind = {rule["if"]["properties"]["kind"]["const"]: rule["then"]["properties"]["params"]
               for rule in schema["$defs"]["JobSpec"]["allOf"]}
    assert set(by_kind) == set(kinds())
    assert "Benjamini-Hochberg" in by_kind["trigger_scan"]["properties"]["fdr"]["description"]

    def sweep(params: dict, model: dict | None = None, kind: str = "ariadne") -> dict:
        return {"name": "s", "models": {"m": model or {"path": "organism:faithful"}},
                "jobs": [{"kind": kind, "models": ["m"], "params": params}]}

    assert validator.is_valid(sweep({"queries": "arithmetic", "tau": {"values": [0.5, 0.8]}, "baseline": "off"}))
    for bad in ({"tua": 0.5}, {"tau": "high"}, {"tau": {"values": ["high"]}}, {"tau": {"values": []}}):
        assert not validator.is_valid(sweep(bad)), bad
    assert not validator.is_valid(sweep({"prompts": ["hi"], "tau": 0.5}, kind="generate")), "tau is not generate's"

    vllm = {"path": "m", "engine": "vllm", "engine_options": {"quantization": "fp8", "max_num_seqs": 8}}
    assert validator.is_valid(sweep({}, vllm))
    assert not validator.is_valid(sweep({}, {**vllm, "engine": "hf"})), "quantization is not an hf option"
    assert validator.is_valid(sweep({}, {"path": "m", "engine_options": {"max_batch_size": 8}})), "hf by default"
    options = schema["$defs"]["ModelSpec"]["allOf"]
    declared = [p for rule in options for p in rule["then"]["properties"]["engine_options"]["properties"].values()]
    assert declared and all(isinstance(p.get("changes_outputs"), bool) for p in declared)
