"""What a user can get wrong ends in one clear message and exit 2, never a traceback: the
sweep file, the data files the jobs read, parameters that cannot run together, engine
options. Checked through the command itself (`orchestrate plan`, which starts nothing)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main


def plan(tmp_path: Path, body: str) -> tuple[int, str]:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: errors\noutput: {tmp_path / 'results'}\n" + body)
    out = CliRunner().invoke(main, ["plan", str(sweep)])
    assert out.exception is None or isinstance(out.exception, SystemExit), f"a traceback: {out.exception!r}"
    return out.exit_code, out.output


def test_a_pool_file_without_decompositions_is_a_clear_error(tmp_path):
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({"p1": {"passage": "The home team scored 3 goals.", "qa_pairs": [
        {"question": "How many goals?", "query_id": "q1", "answer": {"number": "3", "spans": [],
                                                                     "date": {"day": "", "month": "", "year": ""}}}]}}))
    code, output = plan(tmp_path, f"""models:
  m: {{path: "organism:multihop"}}
jobs:
  - kind: decompose
    models: [m]
    params: {{data: multihop, pool: {pool}, limit: 2}}
""")
    assert code == 2 and "pool.json: no question carries `decomp_qas`" in output, output


def test_a_trigger_scan_that_cannot_find_anything_is_refused(tmp_path):
    code, output = plan(tmp_path, """models:
  m: {path: "organism:backdoored"}
jobs:
  - kind: trigger_scan
    models: [m]
    roles: {judge: m}
    params: {scenarios: [core]}
""")
    assert code == 2 and "probes cannot make any of" in output, output


@pytest.mark.parametrize(("engine", "option", "expected"), [
    ("hf", "quantization: fp8", "sweep.yaml:5: models.m.engine_options.quantization: unknown key 'quantization'"),
    ("vllm", "max_num_seqs: lots", "sweep.yaml:5: models.m.engine_options.max_num_seqs: expected an integer"),
    ("vllm", "max_num_seq: 8", "(did you mean 'max_num_seqs'?)"),
])
def test_engine_options_are_checked_where_they_are_written(tmp_path, engine, option, expected):
    code, output = plan(tmp_path, f"""models:
  m: {{path: "organism:faithful", engine: {engine},
      engine_options: {{{option}}}}}
jobs:
  - kind: generate
    models: [m]
    params: {{prompts: ["hi"]}}
""")
    assert code == 2 and expected in output, output


def test_a_broken_data_line_names_its_file_and_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": \n')
    code, output = plan(tmp_path, f"""models:
  m: {{path: "organism:faithful"}}
jobs:
  - kind: generate
    models: [m]
    params: {{prompts: {prompts}}}
""")
    assert code == 2 and "prompts.jsonl:2: not JSON" in output, output
