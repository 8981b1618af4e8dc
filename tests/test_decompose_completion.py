"""Completion-style prompting (`prompting: completion`): the decompose job's prompts as raw text
for a model without a chat template, refused in chat mode at validation and, where planning
cannot see the template, at the request."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from actors.errors import RequestError
from jobs.decompose.job import DecomposeJob, DecomposeParams
from jobs.decompose.prompts import direct_prompt, qd_prompt
from jobs.local import local_context, run_job
from orchestrator.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama without a chat template: a base model as the paper's few-shot setting has."""
    folder = tmp_path_factory.mktemp("tiny-base") / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "chat_template.jinja").unlink()
    assert "chat_template" not in (folder / "tokenizer_config.json").read_text()
    return folder


def test_completion_prompts_reach_a_model_without_a_chat_template(base_model: Path):
    """Each call is the chat mode's user text plus the cue of the line the model writes, sent
    as is (the prompt tokens are exactly that text's), and the reply stops at the line's end;
    the same model in chat mode fails with a message that names the remedy."""
    from actors.engines.hf.engine import HFEngine
    from jobs.decompose.job import bundled_questions

    engine = HFEngine(str(base_model), max_batch_size=16)
    params = DecomposeParams(data="multihop", limit=2, shots=0, max_steps=2, step_max_tokens=6,
                             answer_max_tokens=6, cot_max_tokens=8, bootstrap_samples=10, prompting="completion")
    rows = asyncio.run(run_job(DecomposeJob(), params, local_context({"subject": engine})))
    assert sorted(r["arm"] for r in rows) == ["decompose", "decompose", "direct", "direct", "direct_cot", "direct_cot"]
    questions = {q.query_id: q for q in bundled_questions("multihop")}

    def tokens(text: str) -> int:
        return len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    for row in rows:
        q = questions[row["query_id"]]
        if row["arm"] == "decompose":
            first = row["steps"][0]
            assert first["qd_prompt_tokens"] == tokens(qd_prompt([], q.passage, q.question, []) + "\nQ1:"), row
        elif row["arm"] == "direct":
            assert row["prompt_tokens"] == tokens(direct_prompt([], q.passage, q.question) + "\nA:"), row
            assert "\n" not in row["steps"][0]["answer"], "a one-line call stops at the line's end"

    chat = params.model_copy(update={"prompting": "chat", "arms": ("direct",)})
    with pytest.raises(RequestError, match=r"no chat template.*prompting: completion"):
        asyncio.run(run_job(DecomposeJob(), chat, local_context({"subject": engine})))


def test_validation_refuses_chat_prompts_for_a_model_without_a_chat_template(base_model: Path, tmp_path: Path):
    def validate(params: dict) -> tuple[int, str]:
        sweep = {"name": "base-lm", "output": str(tmp_path / "results"), "models": {"base": {"path": str(base_model)}},
                 "jobs": [{"kind": "decompose", "models": ["base"], "params": {"data": "multihop", "limit": 2,
                                                                              "shots": 0, **params}}]}
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep))
        result = CliRunner().invoke(main, ["validate", str(path)])
        return result.exit_code, result.output

    code, output = validate({})
    assert code == 2 and "no chat template" in output and "prompting: completion" in output, output
    code, output = validate({"prompting": "completion"})
    assert code == 0, output
    code, output = validate({"prompting": "completion", "thinking": True})
    assert code == 2 and "sweep.yaml" in output and "set thinking: false" in output, output
