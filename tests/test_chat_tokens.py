"""Every engine sees the same prompt tokens for the same request, and greedy decoding on the
hf and vllm engines gives the same text.

Chat rendering lives in actors.engines.chat.render_prompt; this proves the engines do not
drift from it: the hf engine, the vllm engine and the openai engine (what it sends to a
served model we hold locally) all hand the model identical token ids.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from actors.engines.hf.engine import HFEngine
from actors.engines.openai.engine import OpenAIEngine
from actors.engines.protocol import Message, Request, Sampling
from actors.engines.vllm.engine import VLLMEngine
from tests.test_vllm_engine import LIGHT, make_organism_sized_model

SAMPLING = Sampling(max_tokens=12, temperature=0.0, logprobs=2)
REQUESTS = {
    "plain": Request.chat("What is 12 plus 30?", sampling=SAMPLING),
    "system": Request.chat("What is 12 plus 30?", system="Answer with a number.", sampling=SAMPLING),
    "thinking off": Request.chat("What is 12 plus 30?", thinking=False, sampling=SAMPLING),
    "prefill": Request.chat("What is 12 plus 30?", prefill="<think>\nStep 1:", sampling=SAMPLING),
    "thinking off + prefill": Request.chat("What is 7 plus 8?", thinking=False, prefill="Answer:", sampling=SAMPLING),
    "multi-turn": Request(messages=(
        Message(role="system", content="Be brief."), Message(role="user", content="What is 1 plus 2?"),
        Message(role="assistant", content="3"), Message(role="user", content="And 3 plus 4?"),
    ), sampling=SAMPLING),
    "raw prompt": Request(prompt="Question 4: what is 4 plus 12? Step 1:", sampling=SAMPLING),
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_organism_sized_model(tmp_path_factory.mktemp("organism-sized"))


@pytest.fixture(scope="module")
def engines(model_path: Path):
    hf = HFEngine(str(model_path), dtype="float32", device="cpu")
    vllm = VLLMEngine(str(model_path), dtype="float32", max_model_len=256, **LIGHT)
    # What the openai engine would send to `vllm serve` of this model: no server needed to see it.
    served = OpenAIEngine("organism", "http://127.0.0.1:9/v1", tokenizer_path=str(model_path))
    yield hf, vllm, served
    vllm.close()
    hf.close()


@pytest.mark.parametrize("name", list(REQUESTS))
def test_every_engine_gets_the_same_prompt_tokens(engines, name):
    hf, vllm, served = engines
    request = REQUESTS[name]
    tokens = hf.prompt_token_ids(request)
    assert vllm.prompt_token_ids(request) == tokens, f"{name}: vllm engine differs from hf"
    endpoint, body = served.payload(request)
    assert endpoint == "/completions" and body["prompt"] == tokens, f"{name}: the served model would see other tokens"

    text = hf.tokenizer.decode(tokens, skip_special_tokens=False)
    if request.messages is not None:
        assert text.endswith("<|im_start|>assistant\n" + ("" if request.thinking else "<think>\n\n</think>\n\n")
                             + request.prefill), f"{name}: generation prompt, thinking switch, then prefill"
    else:
        assert text == request.prompt, "a raw prompt passes through untouched"


def test_greedy_text_is_the_same_on_hf_and_vllm(engines):
    hf, vllm, _ = engines
    requests = list(REQUESTS.values())

    async def both():
        return (await asyncio.gather(*(hf.generate(r) for r in requests)),
                await asyncio.gather(*(vllm.generate(r) for r in requests)))

    from_hf, from_vllm = asyncio.run(both())
    for name, [a], [b] in zip(REQUESTS, from_hf, from_vllm):
        assert a.text == b.text, f"{name}: hf {a.text!r} != vllm {b.text!r}"
        assert [t.token for t in a.logprobs] == [t.token for t in b.logprobs], name
        assert a.prompt_tokens == b.prompt_tokens and a.completion_tokens == b.completion_tokens, name
        assert a.finish_reason == b.finish_reason, name
        gaps = [abs(x.logprob - y.logprob) for x, y in zip(a.logprobs, b.logprobs)]
        assert max(gaps) < 1e-3, f"{name}: fp32 logprobs should agree, differ by up to {max(gaps):.2e}"
    assert len({c[0].text for c in from_hf}) == len(requests), "each prompt has its own continuation"
