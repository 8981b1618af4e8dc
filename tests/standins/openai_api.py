"""A stand-in for OpenAI's chat-completions API, as strict as the real one, backed by an
organism: `python -m tests.standins.openai_api --model organism:judge --name gpt-4.1 --name o3 --port N`
(every name is the same model; a reasoning model's name brings that model's rules).

What it reproduces of the documented API (the behaviours our engine must meet):
- A body field outside the API's parameters is a 400, `invalid_request_error`,
  "Unrecognized request argument supplied: <field>" (several: "arguments", comma-separated):
  vLLM's `chat_template_kwargs`, `continue_final_message` and the like.
- Reasoning models (the o-series, gpt-5) take `max_completion_tokens`, not `max_tokens`, and
  only temperature 1; logprobs, top_p, stop and the penalties are unsupported parameters
  (400, code `unsupported_parameter` / `unsupported_value`).
- `top_logprobs` (0..20) only with `logprobs: true`.
- A final assistant message is not continued: the reply is a new assistant turn.
- Chat logprobs come as `choices[i].logprobs.content[j] = {token, logprob, bytes, top_logprobs}`
  and every reply carries `usage`.

Faults (a flaky API), on a schedule the test sets (tests/standins/faults.py): `POST
/v1/faults` with `{"rules": [...]}` (or `--faults JSON` at start) makes chosen requests fail
with an HTTP status (429 with or without Retry-After, 5xx, 400/401/404/501), a reply held
past the client's timeout or trickled out slower than it, a body that is not JSON, an empty `choices`, garbage text, a body
cut short or a dropped connection. A request must pass the checks above before a fault is
considered, so a malformed body is always its 400. `GET /v1/stats` returns every chat request
the schedule saw (arrival time, text, fault); setting a schedule clears that log.

Its field list is written here from the API reference, apart from the engine's own list, so
a field the engine wrongly believes OpenAI accepts is caught. The model behind it renders
with its own template, thinking off (OpenAI's models show no think block); `--thinking`
renders it with thinking on, for an organism that only reasons in its own format (the
arithmetic organisms as audited subjects): its reasoning then comes back as visible text, as
a chat model that reasons in the open writes it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web

from actors.engines.hf.engine import HFEngine
from actors.engines.protocol import Completion, Message, Request, Sampling
from actors.errors import RequestError
from tests.standins.faults import Rule, Schedule

ACCEPTED = {
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
}
REASONING = re.compile(r"^(o\d|gpt-5(?!-chat))")
REASONING_UNSUPPORTED = ("max_tokens", "logprobs", "top_logprobs", "top_p", "stop", "presence_penalty",
                         "frequency_penalty", "logit_bias")


def _error(message: str, param: str | None = None, code: str | None = None, status: int = 400,
           kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                             status=status)


class StandIn:
    def __init__(self, engine: HFEngine, names: list[str], thinking: bool = False) -> None:
        self.engine, self.names, self.thinking = engine, names, thinking
        self.requests = 0  # what reached the model (tests read it from GET /stats)
        self.refused: list[str] = []  # each 400's message
        self.faults = Schedule()

    def _check(self, body: dict[str, Any]) -> web.Response | None:
        unknown = [k for k in body if k not in ACCEPTED]
        if unknown:
            plural = "s" if len(unknown) > 1 else ""
            return _error(f"Unrecognized request argument{plural} supplied: {', '.join(unknown)}")
        model = body.get("model")
        if model not in self.names:
            return _error(f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                          code="model_not_found", status=404)
        if REASONING.match(str(model)):
            for field in REASONING_UNSUPPORTED:
                if field in body:
                    hint = " Use 'max_completion_tokens' instead." if field == "max_tokens" else ""
                    return _error(f"Unsupported parameter: '{field}' is not supported with this model.{hint}",
                                  param=field, code="unsupported_parameter")
            if body.get("temperature", 1) != 1:
                return _error(f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
                              "model. Only the default (1) value is supported.", param="temperature",
                              code="unsupported_value")
        if "top_logprobs" in body:
            if not body.get("logprobs"):
                return _error("Invalid value: 'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
            if not 0 <= body["top_logprobs"] <= 20:
                return _error("Invalid 'top_logprobs': integer above maximum value.", param="top_logprobs")
        return None

    async def chat(self, http: web.Request) -> web.Response:
        body = await http.json()
        refusal = self._check(body)
        if refusal is not None:
            self.refused.append(refusal.text or "")
            return refusal
        fired = self.faults.decide("\n".join(str(m.get("content")) for m in body["messages"]))
        if fired is not None and fired[1].fault != "timeout":
            return await _faulty(http, body["model"], fired[1])
        if fired is not None:  # a reply that comes after the client gave up
            await asyncio.sleep(fired[1].sleep_s)
        messages = [Message(role="system" if m["role"] == "developer" else m["role"], content=m["content"])
                    for m in body["messages"]]
        while messages and messages[-1].role == "assistant":  # not continued: the model replies anew
            messages.pop()
        top = body.get("top_logprobs", 0) if body.get("logprobs") else None
        sampling = Sampling(max_tokens=body.get("max_completion_tokens") or body.get("max_tokens") or 4096,
                            n=body.get("n", 1), temperature=body.get("temperature", 1.0),
                            top_p=body.get("top_p", 1.0), seed=body.get("seed"),
                            stop=tuple([body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop") or ()),
                            logprobs=top)
        self.requests += 1
        try:
            completions = await self.engine.generate(Request(messages=tuple(messages), thinking=self.thinking,
                                                             sampling=sampling))
        except RequestError as e:
            return _error(str(e))
        return web.json_response(self._reply(body["model"], completions, body.get("logprobs", False)))

    def _reply(self, model: str, completions: list[Completion], logprobs: bool) -> dict[str, Any]:
        def content(c: Completion) -> list[dict[str, Any]]:
            return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
                     "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": list(a.token.encode())}
                                      for a in t.top]} for t in c.logprobs or ()]

        prompt_tokens = completions[0].prompt_tokens
        completion_tokens = sum(c.completion_tokens for c in completions)
        return {
            "id": f"chatcmpl-standin{self.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text, "refusal": None},
                         "logprobs": {"content": content(c), "refusal": None} if logprobs else None,
                         "finish_reason": "length" if c.finish_reason == "length" else "stop"}
                        for i, c in enumerate(completions)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list",
                                  "data": [{"id": n, "object": "model", "owned_by": "standin"} for n in self.names]})

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "refused": self.refused,
                                  "log": [vars(seen) for seen in self.faults.log]})

    async def set_faults(self, http: web.Request) -> web.Response:
        try:
            self.faults = Schedule.of((await http.json())["rules"])
        except (ValueError, KeyError, TypeError) as e:  # pydantic's ValidationError is a ValueError
            return _error(f"bad fault schedule: {e}")
        return web.json_response({"rules": len(self.faults.rules)})

    async def legacy(self, _: web.Request) -> web.Response:
        return _error("This is a chat model and not supported in the v1/completions endpoint. Did you mean to use "
                      "v1/chat/completions?", param="model")


async def _faulty(http: web.Request, model: str, rule: Rule) -> web.StreamResponse:
    """The faulty reply `rule` asks for (every fault but `timeout`, which delays a good one)."""
    if rule.fault == "status":
        if rule.status == 429 and rule.code == "insufficient_quota":  # OpenAI's words for an empty account
            response = _error("You exceeded your current quota, please check your plan and billing details.",
                              code=rule.code, status=429, kind=rule.code)
        elif rule.status == 429:
            response = _error(f"Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, "
                              "Requested 1.", code=rule.code or "rate_limit_exceeded", status=429, kind="requests")
        else:
            response = _error(f"injected HTTP {rule.status}", code=rule.code, status=rule.status,
                              kind="server_error" if rule.status >= 500 else "invalid_request_error")
        if rule.retry_after is not None:
            response.headers["Retry-After"] = rule.retry_after
        return response
    choice = {"index": 0, "message": {"role": "assistant", "content": rule.text, "refusal": None},
              "logprobs": None, "finish_reason": "stop"}
    whole = {"id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()), "model": model,
             "choices": [] if rule.fault == "empty_choices" else [choice],
             "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    if rule.fault in ("empty_choices", "garbage"):
        return web.json_response(whole)
    data = json.dumps(whole).encode()
    if rule.fault == "malformed_json":  # the whole body arrives, and it is not JSON
        return web.Response(body=data[: len(data) // 2], content_type="application/json")
    if rule.fault == "trickle":  # every piece comes well within a read timeout; the whole takes sleep_s
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(http)
        pieces = [data[i * len(data) // 10:(i + 1) * len(data) // 10] for i in range(10)]
        for piece in pieces:
            await asyncio.sleep(rule.sleep_s / 10)
            await response.write(piece)
        await response.write_eof()
        return response
    assert http.transport is not None
    if rule.fault == "drop":  # no response at all: the client sees the connection close
        http.transport.close()
        return web.Response()
    # truncated: the headers promise the whole body, half of it comes, then the connection closes.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(http)
    await response.write(data[: len(data) // 2])
    http.transport.close()
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder or organism:<name>")
    parser.add_argument("--name", action="append", required=True, help="a model name clients ask for (gpt-4.1, o3)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--faults", default="[]", help="a JSON list of fault rules (tests/standins/faults.py)")
    parser.add_argument("--thinking", action="store_true", help="render the model with thinking on")
    args = parser.parse_args()
    from jobs.organisms.build import resolve_model_path

    standin = StandIn(HFEngine(resolve_model_path(args.model), dtype="float32", device="cpu"), args.name,
                      thinking=args.thinking)
    standin.faults = Schedule.of(json.loads(args.faults))
    app = web.Application()
    app.router.add_post("/v1/chat/completions", standin.chat)
    app.router.add_post("/v1/completions", standin.legacy)
    app.router.add_get("/v1/models", standin.models)
    app.router.add_get("/v1/stats", standin.stats)
    app.router.add_post("/v1/faults", standin.set_faults)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
