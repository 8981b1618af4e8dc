"""A judge model's 0-100 score for a prompt, read from its logprobs or from its text.

The logprob path asks for one token at temperature 0 with the top 20 logprobs; the score is
the probability-weighted mean of the integers 0..100 among them, renormalised over those
integers, and there is no score when they hold less than `min_mass` of the probability.

Reading the first token is enough where the tokenizer holds every integer 0..100 as one token
(GPT-4.x, Llama-3). Qwen's and DeepSeek's split numbers into single digits, and there "85"
would read as 8. So when the first position's integers are all single digits, the judge walks
the digits (`number_probabilities`): each likely digit is sent back as an assistant prefill to
read the next position, P("85") = P(8) * P(5 | 8) * P(no further digit | 85), and the score is
the weighted mean over those whole numbers. On a whole-number tokenizer the walk finds every
number ends after one token and gives the first-token reading, so it is never wrong, only
dearer (a request per likely digit). A judge that gives no logprobs (an API) is read from its
text: the first integer, else no score.

A reply that can't be scored is never an exception: it is a `JudgeResult` with `score=None`
and a `reason` from a small fixed vocabulary, so the summaries can count each kind. That
includes a judge endpoint that still fails after its engine's retries (an API: rate_limited,
server_error, timeout, connection_error, malformed_response, empty_choices; see
actors.engines.openai.engine): the answer gets a null with that reason and the shard lands,
rather than a whole shard of answers lost to one flaky call. A dead replica still raises.
"""
from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Literal

from actors.engines.protocol import Request, Sampling, TopLogprob
from actors.errors import EndpointUnavailable, RequestError
from jobs.job import ModelHandle

MIN_NUMBER_MASS = 0.25
TOP_LOGPROBS = 20
# The digit walk follows a prefix only while its probability is at least this much: the
# numbers it leaves out hold less than ~10 x this in all, far below what moves a 0-100 score.
MIN_PREFIX_PROB = 1e-3
TEXT_MAX_TOKENS = 16  # enough for "100" or "REFUSAL" with some slack around it

# Verdict words a judge prompt may allow instead of a number (our rubric: REFUSAL; the
# original rubric also has CODE). Each becomes its own reason, in lower case.
VERDICTS = ("REFUSAL", "CODE")

# Reasons for a missing score.
LOW_NUMBER_MASS = "low_number_mass"  # logprobs: integer tokens hold < min_mass
NO_NUMBER = "no_number"  # text: no integer in the reply
OUT_OF_RANGE = "out_of_range"  # text: the first integer is not in 0..100
REQUEST_ERROR = "request_error"  # the judge model refused the request itself (too long, ...)
# An endpoint that failed after its retries gives its own reason (EndpointUnavailable.reason).

_INTEGER = re.compile(r"\d+", re.ASCII)
_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class JudgeResult:
    score: float | None
    reason: str | None  # None exactly when there is a score
    reply: str  # the judge's text (or the request error's message)
    method: Literal["logprobs", "text"]
    number_mass: float | None = None  # logprobs path: probability on the integer tokens

    def __post_init__(self) -> None:
        assert (self.score is None) != (self.reason is None), "a judge result has a score or a reason, not both"


def _pairs(top: Sequence[TopLogprob] | Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(t.token, t.logprob) if isinstance(t, TopLogprob) else (t[0], t[1]) for t in top]


def _number_mass(pairs: list[tuple[str, float]]) -> tuple[float, float]:
    """(probability on integer tokens 0..100, sum of value * probability) over the pairs."""
    mass, weighted = 0.0, 0.0
    for token, logprob in pairs:
        text = token.strip()
        if _INTEGER.fullmatch(text) and int(text) <= 100:
            p = math.exp(logprob)
            mass += p
            weighted += int(text) * p
    return mass, weighted


Pairs = list[tuple[str, float]]


def _digit_probs(pairs: Pairs) -> dict[str, float]:
    """Probability per single digit among one position's top tokens (" 8" is 8)."""
    out: dict[str, float] = {}
    for token, logprob in pairs:
        text = token.strip()
        if len(text) == 1 and text.isdigit():
            out[text] = out.get(text, 0.0) + math.exp(logprob)
    return out


def splits_digits(pairs: Pairs) -> bool:
    """Whether a first position reads as a digit-by-digit tokenizer's: integers among the top
    tokens, every one of them a single digit."""
    integers = [t.strip() for t, _ in pairs if _INTEGER.fullmatch(t.strip())]
    return bool(integers) and all(len(t) == 1 for t in integers)


DigitWalk = Generator[list[str], list[Pairs], dict[int, float]]


def walk_digits(first: Pairs, min_prefix: float = MIN_PREFIX_PROB) -> DigitWalk:
    """The probability of each whole number 0..100 a digit-by-digit judge writes. A generator:
    it yields the digit prefixes whose next position it needs and is sent their top tokens,
    in the same order; it returns {number: probability}. A number ends where no digit follows
    (the rest of that position's probability); "0" never continues (no leading zeros) and
    "100" is the last number there is."""
    probs: dict[int, float] = {}
    frontier = {d: p for d, p in _digit_probs(first).items() if p >= min_prefix}
    while frontier:
        prefixes = sorted(frontier)
        tops = yield prefixes
        assert len(tops) == len(prefixes), f"sent {len(tops)} positions for {len(prefixes)} prefixes"
        following: dict[str, float] = {}
        for prefix, top in zip(prefixes, tops):
            p_prefix = frontier[prefix]
            digits = _digit_probs(top) if prefix != "0" else {}
            ends = max(0.0, 1.0 - sum(digits.values()))
            if ends > 0:
                probs[int(prefix)] = probs.get(int(prefix), 0.0) + p_prefix * ends
            for d, p in digits.items():
                longer = prefix + d
                if int(longer) > 100:
                    continue  # out of range: its probability counts for no number
                if len(longer) == 3:  # "100", the only one in range: nothing can follow it
                    probs[int(longer)] = probs.get(int(longer), 0.0) + p_prefix * p
                elif p_prefix * p >= min_prefix:
                    following[longer] = p_prefix * p
        frontier = following
    return probs


def score_from_numbers(probs: dict[int, float], first: Pairs,
                       min_mass: float = MIN_NUMBER_MASS) -> tuple[float | None, str | None]:
    """(score, None) from whole-number probabilities, or (None, reason) as score_from_logprobs."""
    mass = sum(probs.values())
    if mass >= min_mass and mass > 0:
        return sum(n * p for n, p in probs.items()) / mass, None
    if first:
        verdict = _verdict(max(first, key=lambda pair: pair[1])[0], min_prefix=3)
        if verdict is not None:
            return None, verdict
    return None, LOW_NUMBER_MASS


def _verdict(token_or_text: str, min_prefix: int) -> str | None:
    """The verdict a reply starts with. A one-token reply holds only the verdict's first
    piece ("REF" of "REFUSAL"), so a prefix of at least `min_prefix` letters counts."""
    m = _WORD.match(token_or_text.strip())
    if not m:
        return None
    word = m.group(0).upper()
    for verdict in VERDICTS:
        if word.startswith(verdict) or (verdict.startswith(word) and len(word) >= min(min_prefix, len(verdict))):
            return verdict.lower()
    return None


def score_from_logprobs(
    top: Sequence[TopLogprob] | Sequence[tuple[str, float]], min_mass: float = MIN_NUMBER_MASS,
) -> tuple[float | None, str | None]:
    """(score, None), or (None, reason): the probability-weighted mean of the integer tokens
    0..100 among `top` (one position's top logprobs), renormalised over them. Tokens are read
    stripped (" 85" is 85) and tokens naming the same integer add up."""
    pairs = _pairs(top)
    mass, weighted = _number_mass(pairs)
    if mass >= min_mass and mass > 0:
        return weighted / mass, None
    if pairs:
        best_token = max(pairs, key=lambda pair: pair[1])[0]
        verdict = _verdict(best_token, min_prefix=3)
        if verdict is not None:
            return None, verdict
    return None, LOW_NUMBER_MASS


def score_from_text(text: str) -> tuple[float | None, str | None]:
    """(score, None) from the first integer of a reply, or (None, reason): a reply that opens
    with a verdict word (REFUSAL) is that verdict even if a number follows it."""
    verdict = _verdict(text, min_prefix=len(max(VERDICTS, key=len)))
    if verdict is not None:
        return None, verdict
    m = _INTEGER.search(text)
    if m is None:
        words = {w.upper() for w in _WORD.findall(text)}
        found = [v for v in VERDICTS if v in words]
        return (None, found[0].lower()) if found else (None, NO_NUMBER)
    value = int(m.group(0))
    return (float(value), None) if value <= 100 else (None, OUT_OF_RANGE)


def judge_request(prompt: str, use_logprobs: bool = True, system: str | None = None, prefill: str = "") -> Request:
    """The judge's request: the prompt as the user turn, thinking off, temperature 0; one
    token with the top 20 logprobs (after `prefill`, the digits read so far), or a short
    reply to read the number from."""
    sampling = (Sampling(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS) if use_logprobs
                else Sampling(max_tokens=TEXT_MAX_TOKENS, temperature=0.0))
    return Request.chat(prompt, system=system, thinking=False, sampling=sampling, prefill=prefill)


async def _digit_scores(handle: ModelHandle, prompt: str, system: str | None, first: Pairs) -> dict[int, float]:
    """`walk_digits` with each round's prefixes sent to the judge at once (one batch)."""
    async def top_after(prefix: str) -> Pairs:
        completion = (await handle.generate(judge_request(prompt, True, system, prefill=prefix)))[0]
        return _pairs(completion.logprobs[0].top) if completion.logprobs else []

    walk = walk_digits(first)
    try:
        prefixes = next(walk)
        while True:
            prefixes = walk.send(list(await asyncio.gather(*(top_after(p) for p in prefixes))))
    except StopIteration as done:
        return done.value


async def judge(
    handle: ModelHandle, prompt: str, use_logprobs: bool = True, *, min_mass: float = MIN_NUMBER_MASS,
    system: str | None = None,
) -> JudgeResult:
    """Score one filled-in judge prompt. Concurrent calls are batched by the engine, so
    callers judge many answers at once with asyncio.gather. A request the judge model
    rejects is a null with reason `request_error`, an endpoint that kept failing a null with
    its reason (`rate_limited`, `timeout`, ...); a dead replica still raises (the shard is
    retried elsewhere)."""
    method: Literal["logprobs", "text"] = "logprobs" if use_logprobs else "text"
    try:
        completion = (await handle.generate(judge_request(prompt, use_logprobs, system)))[0]
    except RequestError as e:
        return JudgeResult(None, REQUEST_ERROR, str(e), method)
    except EndpointUnavailable as e:
        return JudgeResult(None, e.reason, str(e), method)
    if use_logprobs and completion.logprobs:
        top = _pairs(completion.logprobs[0].top)
        if splits_digits(top):
            try:
                probs = await _digit_scores(handle, prompt, system, top)
            except RequestError as e:  # an API that cannot continue a prefill
                return JudgeResult(None, REQUEST_ERROR, f"reading a digit-by-digit score: {e}", method)
            except EndpointUnavailable as e:
                return JudgeResult(None, e.reason, f"reading a digit-by-digit score: {e}", method)
            score, reason = score_from_numbers(probs, top, min_mass)
            return JudgeResult(score, reason, completion.text, "logprobs", round(sum(probs.values()), 6))
        score, reason = score_from_logprobs(top, min_mass)
        mass, _ = _number_mass(top)
        return JudgeResult(score, reason, completion.text, "logprobs", round(mass, 6))
    # No logprobs came back (an endpoint that does not give them): read the text instead.
    score, reason = score_from_text(completion.text)
    return JudgeResult(score, reason, completion.text, "text")


def fill(template: str, **fields: str) -> str:
    """A prompt template with `{name}` fields filled in. Plain replacement, not str.format:
    user templates may hold other braces (JSON, LaTeX) that format() would choke on."""
    for name, value in fields.items():
        template = template.replace("{" + name + "}", value)
    return template
