"""Faults a stand-in server injects, on a schedule the test sets: which requests fail, and how.

A schedule is a list of rules, tried in order for each request; the first that applies
decides its fate, and a request no rule applies to is answered normally. A rule applies to a
request when its `match` is a substring of the request's messages (no `match`: every
request) and the request falls in its window among the requests it matched: the `first` N,
or every `every`-th (the k-th, 2k-th, ...), or all. Every rule counts every request it
matches, fired or not, so a window means the same whatever the other rules do, and the fate
of a request depends only on the requests before it that matched the same rules: a test that
matches one sample's prompt gets that sample's fate exactly, however the client interleaves
its requests.

Rules are validated strictly (an unknown key or fault is an error, never a silently healthy
server), and the schedule logs every request it saw: when it arrived, what it asked, what it
got. Tests read the log to count attempts and measure the waits between them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Fault = Literal["status", "timeout", "trickle", "malformed_json", "empty_choices", "garbage", "truncated", "drop"]


class Rule(BaseModel):
    """One line of a fault schedule (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid")

    fault: Fault = Field(description="status: an HTTP error; timeout: reply after `sleep_s`; trickle: a garbage "
                         "reply whose body comes in ten pieces over `sleep_s`; malformed_json: a 200 "
                         "whose body is not JSON; empty_choices: a 200 with `choices: []`; garbage: a 200 whose "
                         "content is `text`; truncated: headers promise more body than is sent before the "
                         "connection closes; drop: the connection closes before any response")
    match: str | None = Field(None, description="a substring of the request's messages; none: every request")
    first: int | None = Field(None, gt=0, description="fire on the first N requests this rule matches")
    every: int | None = Field(None, gt=0, description="fire on every k-th request this rule matches")
    status: int = Field(500, ge=400, le=599, description="fault status: the HTTP status")
    retry_after: str | None = Field(None, description="fault status: the Retry-After header (seconds or a date)")
    code: str | None = Field(None, description="fault status: the error's code (429: rate_limit_exceeded, or "
                             "insufficient_quota: no credit left)")
    sleep_s: float = Field(30.0, gt=0, description="faults timeout and trickle: how long the reply takes")
    text: str = Field("Sure! Here is a short poem about the sea instead.", description="fault garbage: the content")

    @model_validator(mode="after")
    def _one_window(self) -> Rule:
        if self.first is not None and self.every is not None:
            raise ValueError("a rule fires on its `first` N requests or on `every` k-th one, not both")
        return self


@dataclass
class Seen:
    """One request as the schedule saw it."""

    at: float  # time.monotonic() on arrival
    text: str  # the request's messages, joined
    fault: str  # the fault served ("ok": none)
    rule: int | None  # the index of the rule that fired


@dataclass
class Schedule:
    rules: list[Rule] = field(default_factory=list)
    matched: list[int] = field(default_factory=list)  # per rule: requests it matched so far
    log: list[Seen] = field(default_factory=list)

    @classmethod
    def of(cls, rules: list[dict]) -> Schedule:
        parsed = [Rule.model_validate(r) for r in rules]
        return cls(rules=parsed, matched=[0] * len(parsed))

    def decide(self, text: str) -> tuple[int, Rule] | None:
        """The rule that fires on this request (and log it), or None: answer it normally."""
        fired: tuple[int, Rule] | None = None
        for index, rule in enumerate(self.rules):
            if rule.match is not None and rule.match not in text:
                continue
            self.matched[index] += 1
            n = self.matched[index]
            in_window = (n <= rule.first if rule.first is not None
                         else n % rule.every == 0 if rule.every is not None else True)
            if in_window and fired is None:
                fired = (index, rule)
        name = "ok" if fired is None else (f"status {fired[1].status}" if fired[1].fault == "status"
                                           else fired[1].fault)
        self.log.append(Seen(at=time.monotonic(), text=text, fault=name, rule=None if fired is None else fired[0]))
        return fired
