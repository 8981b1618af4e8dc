"""What each kind of OpenAI-compatible server accepts: the request bodies we send it.

Three flavours:

- `openai`: OpenAI's own API (detected from an api.openai.com URL). Only documented
  chat-completions fields are sent (an unknown one is a 400, "Unrecognized request argument
  supplied"); `max_completion_tokens`, never the deprecated `max_tokens`; and for its
  reasoning models (o1, o3, o4, gpt-5: they think internally) the rules those models set:
  temperature 1 only, no top_p, stop or logprobs. A request the API cannot honour (an
  assistant prefill, temperature 0 on a reasoning model) is refused here, before it is sent,
  with a message that says why; the thinking switch is not sent (a non-reasoning model does
  not think; a reasoning model cannot be told not to).
- `vllm`: `vllm serve` (the default for other URLs). A prefill is a final assistant message
  continued (`continue_final_message`), thinking off is `chat_template_kwargs`; in tokenizer
  mode prompts go to /completions as token ids with vLLM's fields for ids back.
- `sglang`: SGLang's server: the same chat fields as vLLM; no tokenizer mode.
"""
from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlparse

from actors.engines.protocol import Request
from actors.errors import EngineError, RequestError

Flavour = Literal["openai", "vllm", "sglang"]
FLAVOURS: tuple[Flavour, ...] = ("openai", "vllm", "sglang")

# OpenAI's chat-completions request body, as documented (the fields a body may carry).
OPENAI_CHAT_FIELDS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
    "top_p", "user", "verbosity", "web_search_options",
})
# Its legacy /completions body (raw prompts).
OPENAI_COMPLETION_FIELDS = frozenset({
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
})
# What OpenAI's reasoning models refuse outright (temperature is refused unless it is 1).
REASONING_MODEL_REFUSES = ("top_p", "stop", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
                           "logit_bias", "max_tokens")
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5(?!-chat))", re.IGNORECASE)
OPENAI_HOSTS = ("api.openai.com",)


def flavour_of(base_url: str, declared: Flavour | None) -> Flavour:
    """The declared flavour, else `openai` for OpenAI's API URL and `vllm` for the rest."""
    if declared is not None:
        return declared
    host = urlparse(base_url).hostname or ""
    return "openai" if any(host == h or host.endswith("." + h) for h in OPENAI_HOSTS) else "vllm"


def is_reasoning_model(model: str) -> bool:
    """OpenAI's reasoning models (o-series, gpt-5), which take only their own parameters."""
    return bool(_REASONING_MODEL.match(model))


def check_extra_body(flavour: Flavour, extra: dict[str, Any]) -> None:
    """Refuse, when the engine starts, extra fields OpenAI's API would answer with a 400."""
    if flavour != "openai":
        return
    unknown = sorted(set(extra) - OPENAI_CHAT_FIELDS)
    if unknown:
        raise EngineError(f"extra_body {unknown} are not chat-completions parameters of OpenAI's API, which answers "
                          f"unknown fields with HTTP 400; remove them, or set the flavour of another server")


def chat_body(flavour: Flavour, model: str, request: Request, sample_seed: int | None) -> dict[str, Any]:
    """The /chat/completions body of one sample of `request`."""
    sampling = request.sampling
    messages: list[dict[str, Any]] = [m.model_dump() for m in request.messages or ()]
    body: dict[str, Any] = {"model": model, "n": 1}
    if flavour == "openai":
        if request.prefill:
            raise RequestError(f"OpenAI's API cannot continue an assistant message: the prefill "
                               f"{request.prefill[:40]!r} cannot be sent (serve the model with vLLM, flavour vllm, or "
                               "drop the prefill)")
        body["max_completion_tokens"] = sampling.max_tokens
        reasoning = is_reasoning_model(model)
        _sampling_fields(body, request, sample_seed, refuse=reasoning, model=model)
        if sampling.logprobs is not None:
            body["logprobs"], body["top_logprobs"] = True, sampling.logprobs
        if reasoning:
            _refuse_for_reasoning_model(model, body)
    else:
        body["max_tokens"] = sampling.max_tokens
        _sampling_fields(body, request, sample_seed)
        if request.prefill:
            messages.append({"role": "assistant", "content": request.prefill})
            body["continue_final_message"], body["add_generation_prompt"] = True, False
        if not request.thinking:
            body["chat_template_kwargs"] = {"enable_thinking": False}
        if sampling.logprobs is not None:
            body["logprobs"], body["top_logprobs"] = True, sampling.logprobs
    body["messages"] = messages
    return body


def completion_body(flavour: Flavour, model: str, request: Request, prompt: str | list[int],
                    sample_seed: int | None) -> dict[str, Any]:
    """The /completions body of one sample: a raw prompt, or (vllm) the rendered tokens."""
    sampling = request.sampling
    body: dict[str, Any] = {"model": model, "n": 1, "max_tokens": sampling.max_tokens, "prompt": prompt}
    _sampling_fields(body, request, sample_seed)
    if sampling.logprobs is not None:
        if flavour == "openai" and sampling.logprobs > 5:
            raise RequestError(f"OpenAI's /completions gives at most 5 logprobs per token, {sampling.logprobs} asked")
        body["logprobs"] = sampling.logprobs
    if flavour == "openai" and is_reasoning_model(model):
        raise RequestError(f"{model} is a chat model: a raw prompt cannot be sent to it")
    return body


def _sampling_fields(body: dict[str, Any], request: Request, sample_seed: int | None, refuse: bool = False,
                     model: str = "") -> None:
    sampling = request.sampling
    if refuse and sampling.temperature != 1.0:
        raise RequestError(f"{model} accepts only temperature 1 (OpenAI's reasoning models), "
                           f"{sampling.temperature:g} asked: set the job's temperature to 1 or use another model")
    if not refuse or sampling.temperature != 1.0:
        body["temperature"] = sampling.temperature
    if not (refuse and sampling.top_p == 1.0):
        body["top_p"] = sampling.top_p
    if sample_seed is not None:
        body["seed"] = sample_seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)


def _refuse_for_reasoning_model(model: str, body: dict[str, Any]) -> None:
    refused = [field for field in REASONING_MODEL_REFUSES if field in body]
    if refused:
        raise RequestError(f"{model} (an OpenAI reasoning model) does not accept {', '.join(refused)}: "
                           "the request asks for them (a logprob judge, stop strings, top_p below 1)")
