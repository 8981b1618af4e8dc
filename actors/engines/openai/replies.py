"""What an OpenAI-compatible server's reply says: a completion (its text, finish reason,
token counts and logprobs, in the chat or the legacy completions format), a vLLM token id,
how long Retry-After asks to wait, and the server's own error text."""
from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from actors.engines.protocol import Completion, Sampling, TokenLogprob, TopLogprob
from actors.errors import EngineError


def completion_of(choice: dict[str, Any], usage: dict[str, Any], sampling: Sampling, *, chat: bool) -> Completion:
    if chat:
        text = (choice.get("message") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    logprobs = None
    raw = choice.get("logprobs")
    if sampling.logprobs is not None and raw:
        logprobs = chat_logprobs(raw) if chat else completion_logprobs(raw, sampling.logprobs)
    finish = finish_reason(choice.get("finish_reason"))
    completion_tokens = usage.get("completion_tokens")
    if completion_tokens is None:
        completion_tokens = len(logprobs) if logprobs is not None else 0
    return Completion(
        text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(completion_tokens),
        finish_reason=finish, logprobs=logprobs,
    )


def finish_reason(reason: str | None) -> str:
    # content_filter, abort and the like: the text is not what the model would have said.
    return "length" if reason == "length" else "stop" if reason in ("stop", "eos", None) else "error"


def token_id_of(token: str) -> int:
    if not token.startswith("token_id:"):
        raise EngineError(f"expected a token_id:<id> token from a vLLM server, got {token!r}: is the endpoint vLLM?")
    return int(token.removeprefix("token_id:"))


def chat_logprobs(raw: dict[str, Any]) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(
            token=item["token"], logprob=float(item["logprob"]),
            top=tuple(TopLogprob(token=t["token"], logprob=float(t["logprob"]))
                      for t in item.get("top_logprobs") or ()),
        )
        for item in raw.get("content") or ()
    )


def completion_logprobs(raw: dict[str, Any], k: int) -> tuple[TokenLogprob, ...]:
    # The legacy format: parallel lists, top alternatives as {token: logprob} per position
    # (the sampled token may be among them even when it ranks below k).
    tops = raw.get("top_logprobs") or [None] * len(raw.get("tokens") or ())
    out = []
    for token, logprob, top in zip(raw.get("tokens") or (), raw.get("token_logprobs") or (), tops):
        ranked = sorted((top or {}).items(), key=lambda item: -item[1])[:k]
        out.append(TokenLogprob(
            token=token, logprob=float(logprob), top=tuple(TopLogprob(token=t, logprob=float(lp)) for t, lp in ranked),
        ))
    return tuple(out)


def retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def error_of(response: httpx.Response) -> tuple[str, str | None]:
    """(the server's own error text, short: never the request, which holds no key but may
    hold a long prompt; its error code, if it gives one)."""
    code = None
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        message = response.text
    return str(message or response.reason_phrase)[:500], code if isinstance(code, str) else None
