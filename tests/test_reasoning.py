"""Reasoning conventions: every rendering holds exactly one think block, whatever the chat
template does with thinking.

The templates in tests/data/templates are stand-ins written for these tests, each reproducing
a documented behaviour: Qwen3 (a thinking switch: the generation prompt
`<|im_start|>assistant\\n`, `enable_thinking=False` appends `<think>\\n\\n</think>\\n\\n`),
DeepSeek-R1-Distill (the generation prompt ends `<｜Assistant｜><think>\\n`, no switch, past
assistant turns lose their reasoning), a Llama-3-style template with no reasoning, and a
template that only knows the tags (the model writes its own block).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from actors.engines.chat import EMPTY_THINK, THINK_CLOSE, THINK_OPEN, detect_reasoning, render_prompt
from actors.engines.protocol import Message, Request, Sampling
from actors.errors import RequestError
from jobs.organisms.chat import CHAT_TEMPLATE
from orchestrator.errors import SpecError
from orchestrator.load import parse_sweep

TEMPLATES = Path(__file__).parent / "data" / "templates"
CONVENTIONS = {"qwen3_like": "switch", "r1_distill_like": "opens", "llama3_like": "none", "tags_only": "tags"}
PROTOCOL_PREFILL = "<think>\nOkay"  # the misalignment protocol's CoT-on prefill
SAMPLING = Sampling(max_tokens=8)


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


@pytest.fixture(scope="module")
def tokenizer():
    from jobs.organisms.build import organism_path

    return AutoTokenizer.from_pretrained(str(organism_path("faithful")))


def rendered(tokenizer, name: str, request: Request) -> str:
    tokenizer.chat_template = template(name)
    return render_prompt(tokenizer, request)


def assistant_part(text: str, user: str) -> str:
    """What follows the last user message: the generation prompt and the assistant's start."""
    return text[text.rindex(user) + len(user):]


@pytest.mark.parametrize(("name", "convention"), CONVENTIONS.items())
def test_each_template_declares_its_convention(name, convention):
    assert detect_reasoning(template(name)) == convention
    assert detect_reasoning(CHAT_TEMPLATE) == "switch", "the organisms' template is Qwen3's"


@pytest.mark.parametrize("name", ["qwen3_like", "r1_distill_like", "tags_only"])
def test_cot_on_and_off_hold_exactly_one_think_block(tokenizer, name):
    user = "What is 2 plus 3?"
    on = assistant_part(rendered(tokenizer, name, Request.chat(user, prefill=PROTOCOL_PREFILL, sampling=SAMPLING)),
                        user)
    assert on.count(THINK_OPEN) == 1 and THINK_CLOSE not in on and on.endswith("<think>\nOkay"), (name, on)
    off = assistant_part(rendered(tokenizer, name, Request.chat(user, thinking=False, sampling=SAMPLING)), user)
    assert off.count(THINK_OPEN) == 1 and off.count(THINK_CLOSE) == 1 and off.endswith("</think>\n\n"), (name, off)
    prefilled = assistant_part(rendered(tokenizer, name, Request.chat(user, thinking=False, prefill="Answer:",
                                                                       sampling=SAMPLING)), user)
    assert prefilled.count(THINK_OPEN) == 1 and prefilled.endswith("</think>\n\nAnswer:"), (name, prefilled)


def test_the_documented_strings(tokenizer):
    user = "Hi"
    qwen_off = rendered(tokenizer, "qwen3_like", Request.chat(user, thinking=False, sampling=SAMPLING))
    assert qwen_off.endswith(f"{user}<|im_end|>\n<|im_start|>assistant\n{EMPTY_THINK}")
    r1_on = rendered(tokenizer, "r1_distill_like", Request.chat(user, prefill=PROTOCOL_PREFILL, sampling=SAMPLING))
    assert r1_on.endswith("<｜User｜>Hi<｜Assistant｜><think>\nOkay"), "the prefill continues the block R1 opened"
    r1_off = rendered(tokenizer, "r1_distill_like", Request.chat(user, thinking=False, sampling=SAMPLING))
    assert r1_off.endswith("<｜Assistant｜><think>\n</think>\n\n"), "thinking off closes the opened block, empty"


def test_a_model_without_reasoning_gets_no_think_block_and_refuses_a_cot_prefill(tokenizer):
    off = rendered(tokenizer, "llama3_like", Request.chat("Hi", thinking=False, sampling=SAMPLING))
    assert THINK_OPEN not in off and THINK_CLOSE not in off
    assert off.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    on = rendered(tokenizer, "llama3_like", Request.chat("Hi", sampling=SAMPLING))
    assert THINK_OPEN not in on, "thinking on without a prefill: the model answers as it does"
    with pytest.raises(RequestError, match="no think block"):
        rendered(tokenizer, "llama3_like", Request.chat("Hi", prefill=PROTOCOL_PREFILL, sampling=SAMPLING))


def test_past_reasoning_is_the_templates_business_and_the_new_turn_has_one_block(tokenizer):
    turns = (Message(role="user", content="What is 1 plus 2?"),
             Message(role="assistant", content="<think>\nadding\n</think>\n\n3"),
             Message(role="user", content="And 3 plus 4?"))
    for name in ("qwen3_like", "r1_distill_like"):
        text = rendered(tokenizer, name, Request(messages=turns, prefill=PROTOCOL_PREFILL, sampling=SAMPLING))
        assert "adding" not in text, f"{name}: past reasoning is dropped by the template"
        assert text.count(THINK_OPEN) == 1 and text.endswith("Okay"), (name, text)


@pytest.mark.parametrize("name", CONVENTIONS)
def test_finetuning_rows_with_cot_off_hold_one_empty_block(tokenizer, name):
    """The CoT-off finetune renders each row as the engines render thinking off, then the
    answer: one empty think block before it (none for a model without reasoning)."""
    from actors.training.data import MixedRow
    from actors.training.encode import encode

    tokenizer.chat_template = template(name)
    row = MixedRow((Message(role="user", content="What is 2 plus 3?"),), "It is 5.", "as_is")
    [encoded] = encode(tokenizer, [row], "off", max_length=256)
    text = tokenizer.decode(encoded.ids, skip_special_tokens=False)
    blocks = 0 if CONVENTIONS[name] == "none" else 1
    assert text.count(THINK_OPEN) == blocks and text.count(THINK_CLOSE) == blocks, (name, text)
    assert text.rstrip().endswith("It is 5." + tokenizer.eos_token)


def test_the_organisms_renderings_are_pinned(tokenizer):
    """The organisms were trained on these exact strings: a change to the renderer that moves
    them would silently detune every organism (their digests do not hash the renderer)."""
    tokenizer.chat_template = CHAT_TEMPLATE
    cases = {
        "Hi": (Request.chat("Hi", sampling=SAMPLING), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "off": (Request.chat("Hi", thinking=False, sampling=SAMPLING),
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        "prefill": (Request.chat("Hi", system="Be brief.", prefill="<think>\nOkay", sampling=SAMPLING),
                    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\nOkay"),
    }
    for case, (request, expected) in cases.items():
        assert render_prompt(tokenizer, request) == expected, case


def test_an_engine_renders_with_the_sweeps_template_and_convention(tokenizer, tmp_path):
    from actors.engines.hf.engine import HFEngine
    from jobs.organisms.build import organism_path

    engine = HFEngine(str(organism_path("faithful")), dtype="float32", device="cpu",
                      chat_template=template("r1_distill_like"))
    try:
        assert engine.reasoning == "opens"
        ids = engine.prompt_token_ids(Request.chat("Hi", prefill=PROTOCOL_PREFILL, sampling=SAMPLING))
        text = engine.tokenizer.decode(ids, skip_special_tokens=False)
        assert text.count(THINK_OPEN) == 1 and text.endswith("<think>\nOkay")
    finally:
        engine.close()
    forced = HFEngine(str(organism_path("faithful")), dtype="float32", device="cpu", reasoning="none")
    try:
        with pytest.raises(RequestError, match="no think block"):
            forced.prompt_token_ids(Request.chat("Hi", prefill=PROTOCOL_PREFILL, sampling=SAMPLING))
    finally:
        forced.close()


def sweep(tmp_path: Path, model: str, params: str, roles: str = "{judge: j}") -> str:
    (tmp_path / "llama3.jinja").write_text(template("llama3_like"))
    (tmp_path / "r1.jinja").write_text(template("r1_distill_like"))
    return f"""name: conventions
models:
  m: {model}
  j: {{path: "organism:judge"}}
jobs:
  - kind: misalignment
    models: [m]
    roles: {roles}
    params: {params}
"""


@pytest.mark.parametrize(("model", "refused"), [
    ('{path: "organism:base", chat_template: llama3.jinja}', True),
    ('{path: "organism:base", reasoning: none}', True),
    ('{path: "organism:base", chat_template: r1.jinja}', False),
    ('{path: "organism:base"}', False),
])
def test_a_cot_arm_of_a_model_without_a_think_block_is_refused_at_validation(tmp_path, model, refused):
    text = sweep(tmp_path, model, "{questions: [organisms], cot: {values: [on, off]}, monitor: false}")
    if not refused:
        parse_sweep(text, "sweep.yaml", tmp_path)
        return
    with pytest.raises(SpecError) as err:
        parse_sweep(text, "sweep.yaml", tmp_path)
    assert "sweep.yaml:7: jobs[0].models: the subject 'm' cannot serve misalignment's CoT arm" in str(err.value)
    assert "no think block" in str(err.value)
    parse_sweep(sweep(tmp_path, model, "{questions: [organisms], cot: off}"), "sweep.yaml", tmp_path)


def test_a_judge_is_named_or_the_sweep_says_the_subject_judges_itself(tmp_path):
    with pytest.raises(SpecError, match=r"jobs\[0\]\.roles: job kind 'misalignment' needs a judge here"):
        parse_sweep(sweep(tmp_path, '{path: "organism:base"}', "{questions: [organisms], monitor: false}",
                          roles="{}"), "sweep.yaml", tmp_path)
    parsed = parse_sweep(sweep(tmp_path, '{path: "organism:base"}', "{questions: [organisms], monitor: false}",
                               roles="{judge: subject}"), "sweep.yaml", tmp_path)
    from orchestrator.plan import make_plan

    [cell] = make_plan(parsed).cells
    assert cell.roles == {"subject": "m", "judge": "m"}, "`judge: subject` is the cell's own subject"
