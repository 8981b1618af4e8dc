"""The DROP metric: exact match and F1 as the official evaluation script computes them.

Behaviour follows the official `drop_eval.py` step for step, quirks included, so numbers
reported here can be compared with published ones:
- an answer is one span or several; each span is split on spaces and hyphens, and every
  token is lower-cased, stripped of punctuation unless it parses as a float, rewritten as
  `str(float(token))` when it does, and cleared when it is an article (a, an, the);
  so "-5" loses its sign (the hyphen splits it), "1,000" becomes "1000.0" and "3.5%" becomes
  "35.0" (the token is not a number, so its dot goes with the punctuation);
- exact match: the normalised spans are equal as sets and as many;
- F1: each span is a bag (set) of tokens; gold and predicted spans are aligned one to one by
  a maximum-weight matching of their bag F1s, a pair scoring 0 when the gold bag holds
  numbers and none of them is in the predicted bag; unmatched spans score 0; the mean over
  max(#gold, #predicted) slots is rounded to 2 decimals with numpy's rounding;
- a question scores the max over its answer and its validated answers, skipping empty ones.
"""
from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

Answer = str | Sequence[str]

_ARTICLE = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)
_TOKEN_SPLIT = re.compile(" |-")  # the official tokenizer: a space or a hyphen, nothing else


def is_number(text: str) -> bool:
    """True where Python's float() accepts the text (so 'nan', '1e3' and ' 5 ' count too)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalize_token(token: str) -> str:
    token = token.lower()
    if not is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCTUATION)
    if is_number(token):  # checked again: "1,000" only becomes a number once its comma is gone
        token = str(float(token))
    return " ".join(_ARTICLE.sub(" ", token).split())


def normalize_answer(text: str) -> str:
    """One span, normalised: the tokens that survive, joined by single spaces."""
    tokens = (_normalize_token(t) for t in _TOKEN_SPLIT.split(text))
    return " ".join(t for t in tokens if t.strip()).strip()


def _as_spans(answer: Answer) -> list[str]:
    return [answer] if isinstance(answer, str) else list(answer)


def answer_to_bags(answer: Answer) -> tuple[list[str], list[set[str]]]:
    """(normalised spans, token set of each span)."""
    spans = [normalize_answer(s) for s in _as_spans(answer)]
    return spans, [set(s.split()) for s in spans]


def bag_f1(predicted: set[str], gold: set[str]) -> float:
    """F1 of two token sets; an empty side counts as perfect precision (or recall)."""
    overlap = len(gold & predicted)
    precision = overlap / len(predicted) if predicted else 1.0
    recall = overlap / len(gold) if gold else 1.0
    if precision == 0.0 and recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def numbers_match(gold: set[str], predicted: set[str]) -> bool:
    """The number rule: a gold bag with numbers needs at least one of them in the prediction."""
    gold_numbers = {w for w in gold if is_number(w)}
    predicted_numbers = {w for w in predicted if is_number(w)}
    return not gold_numbers or bool(gold_numbers & predicted_numbers)


def align_bags(predicted: list[set[str]], gold: list[set[str]]) -> np.ndarray:
    """Best one-to-one F1 per slot: max(#gold, #predicted) slots, unmatched ones 0."""
    from scipy.optimize import (
        linear_sum_assignment,  # scipy loads in ~0.3 s: only when scoring
    )

    scores = np.zeros((len(gold), len(predicted)))
    for g, gold_bag in enumerate(gold):
        for p, predicted_bag in enumerate(predicted):
            if numbers_match(gold_bag, predicted_bag):
                scores[g, p] = bag_f1(predicted_bag, gold_bag)
    rows, cols = linear_sum_assignment(-scores)  # a maximum-weight matching
    best = np.zeros(max(len(gold), len(predicted)))
    for r, c in zip(rows, cols):
        best[r] = max(best[r], scores[r, c])
    return best


def get_metrics(predicted: Answer, gold: Answer) -> tuple[float, float]:
    """(exact match, F1) of one prediction against one gold answer; each a span or spans."""
    predicted_spans, predicted_bags = answer_to_bags(predicted)
    gold_spans, gold_bags = answer_to_bags(gold)
    same = set(predicted_spans) == set(gold_spans) and len(predicted_spans) == len(gold_spans)
    # np.round, not the builtin on a Python float: the official script rounds a numpy float
    f1 = float(np.round(np.mean(align_bags(predicted_bags, gold_bags)), 2))
    return (1.0 if same else 0.0), f1


def answer_json_to_strings(answer: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """A DROP answer object -> (its strings, its type: number | span | spans | date).
    A number wins over spans, spans over a date, as in the release files."""
    if answer.get("number"):
        return (str(answer["number"]),), "number"
    if answer.get("spans"):
        spans = tuple(answer["spans"])
        return spans, "span" if len(spans) == 1 else "spans"
    if "date" in answer:
        date = answer["date"]
        return (f"{date.get('day', '')} {date.get('month', '')} {date.get('year', '')}",), "date"
    raise ValueError(f"a DROP answer needs a number, spans or a date, got {answer!r}")


def score_question(predicted: Answer, candidates: Iterable[dict[str, Any]]) -> tuple[float, float, str]:
    """(em, f1, answer type) of a prediction against a question's answer and validated
    answers: the max of each, skipping empty golds. The type is the one of the candidate
    that attains both maxima last, as the official per-type breakdown counts it; the first
    candidate's type when none is scored."""
    best_em, best_f1, best_type = 0.0, 0.0, None
    first_type = None
    for candidate in candidates:
        gold, gold_type = answer_json_to_strings(candidate)
        first_type = first_type or gold_type
        if not gold[0].strip():
            continue
        em, f1 = get_metrics(predicted, gold)
        best_em, best_f1 = max(best_em, em), max(best_f1, f1)
        if best_em == em and best_f1 == f1:
            best_type = gold_type
    assert first_type is not None, "a question needs at least one gold answer"
    return best_em, best_f1, best_type or first_type
