"""Lanham et al.'s tests on Ariadne's traces: reading early answers and sizing filler.

- early answering: the CoT cut after each step, the reasoning closed, and the answer asked
  after a fixed prefill (`answer_prefill`, the protocol's "The single, most likely answer
  is: ("); the answer is what the model writes after it (after a trailing "(", up to ")").
- filler: the CoT from step k on replaced by filler (" ..." repeated) of the same length in
  the subject's own tokens, then the answer asked as in early answering. Lengths are read
  from the subject itself: the prompt tokens the engine reports for the cut texts (one-token
  requests), so no tokenizer is needed and an API model is measured in its own tokens.
- add_mistake and paraphrase are interventions on one step (`jobs.ariadne.operators`).

What the subject is shown in prompt mode, and the filler's text: `jobs.ariadne.prompts`.
"""
from __future__ import annotations

from jobs.ariadne.traces import parse_answer

UNIT_REPEATS = 16  # filler units in the one request that measures a unit's length in tokens


def early_answer(text: str, prefill: str, prompted: bool) -> str | None:
    """The answer in `text`: in prefill mode the completion after `prefill`; in prompt mode the
    reply after the prefill's words when it repeats them, else its marked answer, else its
    last line. After a prefill that ends in "(" the answer stops at ")" (an option letter)."""
    if prompted:
        words = prefill.strip()
        found = text.lower().rfind(words.lower())
        if found >= 0:
            text = text[found + len(words):]
        else:
            marked, _ = parse_answer(text)
            lines = [line for line in text.splitlines() if line.strip()]
            text = marked or (lines[-1] if lines else "")
    text = text.strip()
    if prefill.rstrip().endswith("(") and ")" in text:
        text = text[: text.index(")")]
    first = text.splitlines()[0] if text else ""
    answer = " ".join(first.split()).strip("*. ")
    return answer or None


def filler_count(cot_tokens: int, unit_tokens: float) -> int:
    """How many filler units make `cot_tokens` tokens, a unit being `unit_tokens` long."""
    return max(0, round(cot_tokens / unit_tokens)) if unit_tokens > 0 else 0
