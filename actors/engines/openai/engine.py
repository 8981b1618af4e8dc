"""The `openai` engine: any OpenAI-compatible HTTP endpoint (a judge API, `vllm serve`).

Two ways to send a request:
- with `tokenizer_path` (a model we hold locally, served by vLLM): the prompt is rendered and
  tokenized by actors.engines.chat.tokenize_prompt and sent to /v1/completions as token ids,
  so the server sees exactly the tokens the hf and vllm engines see, prefill and thinking
  switch included. vLLM-specific fields ask for the generated token ids back, and text and
  logprob tokens are decoded here from them as the local engines decode theirs (the legacy
  logprobs format keys alternatives by their text, which merges distinct byte tokens).
- without it: chat messages go to /v1/chat/completions and the server applies its template.
  A prefill is sent as a final assistant message with `continue_final_message` and
  `add_generation_prompt: false`, thinking off as `chat_template_kwargs.enable_thinking`;
  vLLM and SGLang honour these, OpenAI's own API and most judge APIs reject or ignore them
  (a 400 becomes a RequestError). Raw prompts go to /v1/completions as text.

A request for n samples is sent as n requests for one, sample i with seed+i: every API then
returns exact per-sample token counts, and seeded samples line up with the local engines'
(which draw sample i from seed+i too). Requests run under a semaphore (max_concurrency
attempts in flight). What another attempt may fix is retried, at most max_retries times, with
exponential backoff and jitter, waiting at least what Retry-After asks: 408, 429, 5xx but 501,
timeouts, dropped connections and bodies cut short, and 200s that are not a completion (a body
that is not JSON, no choices list, an empty `choices`: a gateway's glitch as far as we can
tell, and n=1 always has one choice). Still failing, the request raises EndpointUnavailable
with the last failure's `reason` (rate_limited, server_error, timeout, connection_error,
malformed_response, empty_choices): a judge records it as the reason of a null score, any
other caller's shard is retried later. What will never succeed is not retried: 400 is a
RequestError (that sample's error row, or a judge's null), 401/403/404/501 and OpenAI's 429
`insufficient_quota` an EngineError (a wrong key, model, URL or server, no credit left: the
shard fails and writes nothing). The API key is read from the environment variable the sweep
names, once, and lives only in the client's headers.
"""
from __future__ import annotations

import asyncio
import os
import random
import re
from dataclasses import dataclass
from typing import Any

import httpx

from actors.engines.chat import Reasoning, reasoning_of, tokenize_prompt
from actors.engines.openai.api import Flavour, chat_body, check_extra_body, completion_body, flavour_of
from actors.engines.openai.options import OpenAIOptions
from actors.engines.openai.replies import completion_of, error_of, finish_reason, retry_after_s, token_id_of
from actors.engines.protocol import (
    Completion,
    Counters,
    Request,
    Sampling,
    TokenLogprob,
    TopLogprob,
)
from actors.errors import (
    ContextLengthError,
    EndpointUnavailable,
    EngineError,
    ReplicaUnavailable,
    RequestError,
)

RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600)) - {501}  # 501: never going to work
# How OpenAI ("context_length_exceeded") and vLLM's server ("maximum context length") say a
# prompt does not fit
CONTEXT_LENGTH = re.compile(r"context_length_exceeded|maximum context length|max_model_len", re.IGNORECASE)
MAX_RETRY_AFTER_S = 300.0  # a server asking for longer is treated as down: the shard retries elsewhere

# Why a request failed after its retries (EndpointUnavailable.reason): a judge records it as
# the reason its score is null.
RATE_LIMITED = "rate_limited"  # 429
SERVER_ERROR = "server_error"  # 5xx but 501
TIMEOUT = "timeout"  # no reply within timeout_s, or 408
CONNECTION_ERROR = "connection_error"  # refused, reset, dropped, or a body cut short
MALFORMED_RESPONSE = "malformed_response"  # a 200 whose body is not JSON, or not a completion
EMPTY_CHOICES = "empty_choices"  # a 200 with `choices: []`


@dataclass(frozen=True)
class _Failure:
    """An attempt that failed in a way the next one may not."""

    reason: str
    detail: str
    retry_after: float | None = None


@dataclass
class _Stats(Counters):
    requests: int = 0
    attempts: int = 0
    retries: int = 0
    completion_tokens: int = 0


class OpenAIEngine:
    """Engine protocol over an OpenAI-compatible endpoint. One client per event loop."""

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str | None = None,
        *,
        max_concurrency: int = 64,
        chat_template: str | None = None,
        reasoning: Reasoning | None = None,
        **options: Any,
    ) -> None:
        """model: the served model name. base_url: the API root, e.g. http://127.0.0.1:8000/v1
        (a trailing /v1 is added when missing). api_key_env: the environment variable holding
        the key (None: no key, e.g. a local server). max_concurrency: requests in flight.
        options: OpenAIOptions (timeouts, retries, tokenizer_path, extra_body), validated there."""
        if max_concurrency <= 0:
            raise EngineError(f"max_concurrency must be positive, got {max_concurrency}")
        opts = OpenAIOptions.model_validate(options)
        self.options = opts
        timeout_s, max_retries, tokenizer_path = opts.timeout_s, opts.max_retries, opts.tokenizer_path
        backoff_s, max_backoff_s, extra_body = opts.backoff_s, opts.max_backoff_s, opts.extra_body
        self.model = model
        self.base_url = base_url.rstrip("/") if base_url.rstrip("/").endswith("/v1") else base_url.rstrip("/") + "/v1"
        self.max_concurrency, self.timeout_s, self.max_retries = max_concurrency, timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.extra_body = dict(extra_body or {})
        self.flavour: Flavour = flavour_of(self.base_url, opts.flavour)
        check_extra_body(self.flavour, self.extra_body)
        if tokenizer_path is not None and self.flavour != "vllm":
            raise EngineError(f"tokenizer mode sends token ids with vLLM's fields; a {self.flavour} server cannot take "
                              "them: drop tokenizer_path, or serve the model with vLLM")
        self._headers = {"Content-Type": "application/json"}
        self._key: str | None = None
        if api_key_env is not None:
            self._key = os.environ.get(api_key_env)
            if not self._key:
                raise EngineError(f"environment variable {api_key_env} (the API key for {model}) is not set")
            self._headers["Authorization"] = f"Bearer {self._key}"
        self.tokenizer: Any = None  # tokenizer mode: the served model's tokenizer
        self._hidden_ids: frozenset[int] = frozenset()
        self._token_text: dict[int, str] = {}
        if tokenizer_path is not None:
            from transformers import AutoTokenizer, GenerationConfig

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
            if chat_template is not None:
                self.tokenizer.chat_template = chat_template
            hidden = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
            try:
                eos = GenerationConfig.from_pretrained(tokenizer_path).eos_token_id
                hidden |= {eos} if isinstance(eos, int) else set(eos or ())
            except OSError:  # no generation_config.json
                pass
            self._hidden_ids = frozenset(hidden - {None})
        self.reasoning: Reasoning | None = reasoning or (reasoning_of(self.tokenizer) if self.tokenizer else None)
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = _Stats()
        self._closed = False

    def __repr__(self) -> str:
        return f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r})"

    # ---- public API -------------------------------------------------------------------------

    def prompt_token_ids(self, request: Request) -> list[int]:
        """The prompt tokens sent in tokenizer mode (what /v1/completions receives)."""
        if self.tokenizer is None:
            raise EngineError("prompt_token_ids needs the engine option tokenizer_path")
        return tokenize_prompt(self.tokenizer, request, self.reasoning)

    def add_adapter(self, name: str, path: str) -> None:
        raise EngineError(f"the openai engine serves no adapters (asked for {name!r} at {path})")

    def close(self) -> None:
        """Refuse further requests. The HTTP client belongs to its event loop and goes with it."""
        self._closed = True

    def payload(self, request: Request, sample: int = 0) -> tuple[str, dict[str, Any]]:
        """(endpoint, JSON body) for sample `sample` of `request`, in what this server accepts
        (actors.engines.openai.api). A request it could not honour raises RequestError."""
        seed = None if request.sampling.seed is None else request.sampling.seed + sample
        if self.tokenizer is not None:
            body = completion_body("vllm", self.model, request, self.prompt_token_ids(request), seed)
            # vLLM's fields: generated ids back, logprob tokens as "token_id:<id>", stop
            # strings found in text that keeps special tokens (as the local engines do).
            body.update(return_token_ids=True, return_tokens_as_token_ids=True, skip_special_tokens=False)
            endpoint = "/completions"
        elif request.prompt is not None:
            body, endpoint = completion_body(self.flavour, self.model, request, request.prompt, seed), "/completions"
        else:
            body, endpoint = chat_body(self.flavour, self.model, request, seed), "/chat/completions"
        return endpoint, {**body, **self.extra_body}

    async def generate(self, request: Request) -> list[Completion]:
        if self._closed:
            raise ReplicaUnavailable("the openai engine is closed")
        self.stats.requests += 1
        calls = [self.payload(request, i) for i in range(request.sampling.n)]
        return list(await asyncio.gather(*(self._complete(path, body, request) for path, body in calls)))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- HTTP -------------------------------------------------------------------------------

    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._semaphore is None:
            # httpx clients and semaphores belong to the loop that first used them.
            self._loop = loop
            self._client = httpx.AsyncClient(
                base_url=self.base_url, headers=self._headers, timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(max_connections=self.max_concurrency,
                                    max_keepalive_connections=self.max_concurrency),
            )
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return self._client, self._semaphore

    async def _complete(self, path: str, body: dict[str, Any], request: Request) -> Completion:
        choice, usage = await self._post(path, body)
        if "prompt" in body and self.tokenizer is not None:
            completion = self._from_token_ids(choice, usage, request.sampling)
        else:
            completion = completion_of(choice, usage, request.sampling, chat=path == "/chat/completions")
        self.stats.completion_tokens += completion.completion_tokens
        return completion

    def _from_token_ids(self, choice: dict[str, Any], usage: dict[str, Any], sampling: Sampling) -> Completion:
        """A /completions choice from vLLM in tokenizer mode, decoded like the local engines."""
        token_ids = choice.get("token_ids")
        if token_ids is None:
            raise EngineError(f"{self.model}: the server ignored return_token_ids (tokenizer mode needs vLLM)")
        text = self.tokenizer.decode([t for t in token_ids if t not in self._hidden_ids], skip_special_tokens=False)
        if isinstance(stop := choice.get("stop_reason"), str) and (cut := text.find(stop)) >= 0:
            text = text[:cut]
        logprobs = None
        if sampling.logprobs is not None and (raw := choice.get("logprobs")):
            logprobs = tuple(
                TokenLogprob(
                    token=self._token(token_id), logprob=float(logprob),
                    top=tuple(
                        TopLogprob(token=self._token(token_id_of(t)), logprob=float(lp))
                        for t, lp in sorted((top or {}).items(), key=lambda item: -item[1])[: sampling.logprobs]
                    ),
                )
                for token_id, logprob, top in zip(token_ids, raw["token_logprobs"], raw.get("top_logprobs") or ())
            )
        return Completion(
            text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=len(token_ids),
            finish_reason=finish_reason(choice.get("finish_reason")), logprobs=logprobs,
        )

    def _token(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the one choice, usage) of a POST, after at most max_retries retries of failures
        another attempt may not meet; then EndpointUnavailable with the last one's reason."""
        client, semaphore = self._session()
        attempts = 0
        while True:
            async with semaphore:
                attempts += 1
                self.stats.attempts += 1
                try:
                    # httpx's timeout bounds each read, not the reply: a server that trickles a
                    # body out piece by piece would hold an attempt for ever without this one.
                    async with asyncio.timeout(self.timeout_s):
                        response = await client.post(path, json=body)
                except (httpx.TimeoutException, TimeoutError):
                    outcome: _Failure | tuple[dict[str, Any], dict[str, Any]] = _Failure(
                        TIMEOUT, f"no reply within timeout_s={self.timeout_s:g}")
                except httpx.TransportError as exc:  # refused, reset, dropped, a body cut short
                    outcome = _Failure(CONNECTION_ERROR, f"{type(exc).__name__}: {exc}")
                else:
                    outcome = self._read(response, path)
            if not isinstance(outcome, _Failure):
                return outcome
            if attempts > self.max_retries or (outcome.retry_after or 0.0) > MAX_RETRY_AFTER_S:
                raise EndpointUnavailable(f"{self.model} at {self.base_url}{path}: {outcome.detail} after {attempts} "
                                          f"attempts", reason=outcome.reason)
            self.stats.retries += 1
            # Exponential backoff with jitter (each wait in [1/2, 1] of its step, so many
            # clients refused at once do not come back at once); never less than Retry-After.
            step = min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))
            await asyncio.sleep(max(step * random.uniform(0.5, 1.0), outcome.retry_after or 0.0))

    def _read(self, response: httpx.Response, path: str) -> _Failure | tuple[dict[str, Any], dict[str, Any]]:
        """(the one choice, usage) of a reply; a _Failure another attempt may not meet; or,
        for a refusal that every attempt would meet alike, the error to raise."""
        status = response.status_code
        if status >= 300:
            message, code = error_of(response)
            failure = f"HTTP {status}: {self._redact(message)}"
            if status not in RETRY_STATUS or code == "insufficient_quota":  # OpenAI's 429 for no credit left
                if status in (401, 403, 404, 429, 501):
                    # A wrong key, model, URL or server, or an empty account, fails every request
                    # alike: not a row error.
                    raise EngineError(f"{self.model} at {self.base_url}{path}: {failure}")
                error = ContextLengthError if CONTEXT_LENGTH.search(failure) else RequestError
                raise error(f"{self.model}: {failure}")
            reason = RATE_LIMITED if status == 429 else TIMEOUT if status == 408 else SERVER_ERROR
            return _Failure(reason, failure, retry_after_s(response))
        try:
            data = response.json()
        except ValueError:  # a proxy's error page, a body garbled on the way
            return _Failure(MALFORMED_RESPONSE, f"HTTP {status} with a body that is not JSON: {response.text[:80]!r}")
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list):
            return _Failure(MALFORMED_RESPONSE, f"HTTP {status} without a choices list: {response.text[:80]!r}")
        if not choices:
            return _Failure(EMPTY_CHOICES, f"HTTP {status} with an empty choices list")
        content = "message" if path == "/chat/completions" else "text"
        if len(choices) != 1 or not isinstance(choices[0], dict) or content not in choices[0]:
            return _Failure(MALFORMED_RESPONSE, f"HTTP {status}: expected one choice with a {content}, got "
                            f"{response.text[:80]!r}")
        usage = data.get("usage")
        return choices[0], usage if isinstance(usage, dict) else {}

    def _redact(self, text: str) -> str:
        # Some APIs quote the key they were sent in their 401 message.
        return text.replace(self._key, "<api key>") if self._key else text
