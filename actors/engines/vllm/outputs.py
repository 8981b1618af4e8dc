"""What one of vLLM's sampled outputs says, as the protocol's Completion: its text without the
ids that are never shown (eos, pad), cut at the stop string that ended it, and its logprobs
with the top alternatives vLLM ranked."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.engines.protocol import Completion, Sampling, TokenLogprob, TopLogprob


def completion_of(sample: Any, *, prompt_tokens: int, sampling: Sampling, hidden_ids: frozenset[int],
                  decode: Callable[[list[int]], str], token_text: Callable[[int], str]) -> Completion:
    """`sample`: one of a RequestOutput's `outputs`; `decode`: ids to text; `token_text`: one
    id's text (cached by the caller)."""
    token_ids = list(sample.token_ids)
    text = decode([t for t in token_ids if t not in hidden_ids])
    if isinstance(sample.stop_reason, str) and (cut := text.find(sample.stop_reason)) >= 0:
        text = text[:cut]
    logprobs = None
    if sampling.logprobs is not None:
        k = sampling.logprobs
        logprobs = tuple(
            TokenLogprob(
                token=token_text(token), logprob=alternatives[token].logprob,
                top=tuple(
                    TopLogprob(token=token_text(t), logprob=lp.logprob)
                    for t, lp in sorted(alternatives.items(), key=lambda item: item[1].rank)
                    if lp.rank <= k
                ),
            )
            for token, alternatives in zip(token_ids, sample.logprobs)
        )
    finish_reason = sample.finish_reason if sample.finish_reason in ("stop", "length") else "error"
    return Completion(
        text=text, prompt_tokens=prompt_tokens, completion_tokens=len(token_ids),
        finish_reason=finish_reason, logprobs=logprobs,
    )
