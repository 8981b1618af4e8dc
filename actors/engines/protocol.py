"""The one inference protocol every engine speaks.

Imports no Ray, so jobs, engines and tests share these types. A request says everything that
changes the generated tokens; a completion says everything a job may want to record.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.errors import ContextLengthError, RequestError

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    role: Role
    content: str


class Sampling(BaseModel):
    """Sampling parameters. max_tokens has no default on purpose: a silent engine default
    (16 in some engines, 'to the context end' in others) changes results between engines."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_tokens: int = Field(gt=0)
    n: int = Field(1, gt=0)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = Field(None, ge=0, le=20, description="top-k logprobs per generated token")


class Request(BaseModel):
    """Chat messages (rendered with the model's template) or a raw prompt (sent as is)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    prefill: str = ""  # text the assistant turn starts with, e.g. "<think>\nOkay"
    thinking: bool = True  # False renders an empty think block, like Qwen3's enable_thinking
    sampling: Sampling
    adapter: str | None = None  # name of a LoRA adapter known to the replica
    affinity: str | None = None  # requests with the same key prefer the same replica

    @model_validator(mode="after")
    def _one_input(self) -> Request:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a request carries exactly one of `messages` or `prompt`")
        if self.prompt is not None and self.prefill:
            raise ValueError("`prefill` applies to chat messages; append it to a raw prompt yourself")
        return self

    @classmethod
    def chat(cls, user: str, *, system: str | None = None, **kwargs: Any) -> Request:
        msgs = ([Message(role="system", content=system)] if system else []) + [Message(role="user", content=user)]
        return cls(messages=tuple(msgs), **kwargs)


class TopLogprob(BaseModel):
    model_config = ConfigDict(frozen=True)
    token: str
    logprob: float


class TokenLogprob(BaseModel):
    model_config = ConfigDict(frozen=True)
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


FinishReason = Literal["stop", "length", "error"]


class Completion(BaseModel):
    model_config = ConfigDict(frozen=True)
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    logprobs: tuple[TokenLogprob, ...] | None = None


class Counters(Mapping[str, float]):
    """An engine's running counts: attributes to its code, a mapping to whoever reports them
    (`dict(engine.stats)`). Subclasses are dataclasses of numbers."""

    def __getitem__(self, key: str) -> float:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]


@runtime_checkable
class Engine(Protocol):
    """What a replica needs of an engine. Engines batch concurrent `generate` calls."""

    async def generate(self, request: Request) -> list[Completion]:
        """A request in, its n completions out; failures are the `actors.errors` tree."""
        ...

    def add_adapter(self, name: str, path: str) -> None:
        """Serve the LoRA adapter at `path` as `name` (EngineError where there are none)."""
        ...

    def close(self) -> None:
        """Stop serving and free the model; later calls raise ReplicaUnavailable."""
        ...

    @property
    def stats(self) -> Mapping[str, float]:
        """Counters of what the engine did (requests, batches, tokens, ...)."""
        ...


def check_prompt_fits(prompt_tokens: int, max_tokens: int, max_model_len: int | None) -> None:
    """Refuse, before any model work, a prompt that is empty or that cannot fit the context
    with its whole token budget (an engine would otherwise cut the answer short, or fail
    deep inside a batch that other requests share)."""
    if prompt_tokens == 0:
        raise RequestError("the prompt renders to zero tokens")
    if max_model_len is not None and prompt_tokens + max_tokens > max_model_len:
        raise ContextLengthError(
            f"prompt of {prompt_tokens} tokens plus max_tokens={max_tokens} exceeds max_model_len={max_model_len}"
        )
