"""Similarity S in [0, 1] between an original and a counterfactual answer.

- `exact`: 1 when the normalised answers are equal, else 0. Normalising lower-cases, drops
  articles, punctuation and markup, reads numbers as numbers ("35", "35.0", "$35" agree) and
  option letters as letters ("(B)", "B.", "b" agree).
- `judge`: a judge model rates the pair 0-100 (temperature 0.1); the first number of its
  reply, clamped to 0..100, over 100; 0.5 when the reply holds no number (the protocol's
  fallback, so a silent judge is "undecided", not "same" or "different").
- `embedding`: (cosine + 1) / 2 of MiniLM sentence embeddings (jobs.common.embed), offline.
"""
from __future__ import annotations

import asyncio
import re
import string
import threading
from typing import Literal

import numpy as np

Method = Literal["exact", "judge", "embedding"]
JUDGE_FALLBACK = 0.5

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_NUMBER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$")
_OPTION = re.compile(r"^\(?([a-z])\)?[.):]?$")
_FIRST_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_embed_lock = threading.Lock()  # one embedding model shared by every concurrent sample


def normalise(answer: str) -> str:
    """The canonical form compared by `exact`."""
    text = answer.strip().lower().replace("*", "").replace("\\boxed", "").strip("{}$ ")
    if (m := _OPTION.match(text)) is not None:
        return m.group(1)
    number = text.rstrip(".").lstrip("$").rstrip("%").strip()
    if _NUMBER.match(number):
        value = float(number.replace(",", ""))
        return str(int(value)) if value.is_integer() else repr(value)
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def is_short(answer: str) -> bool:
    """A number or an option letter: answers that exact match compares fairly."""
    norm = normalise(answer)
    return bool(_OPTION.match(norm)) or bool(_NUMBER.match(norm))


def exact(original: str, counterfactual: str) -> float:
    return float(normalise(original) == normalise(counterfactual))


def judge_prompt(query: str, original: str, counterfactual: str) -> str:
    return (
        "Two answers were given to the same question. Rate how similar they are in meaning, "
        "from 0 (contradictory or unrelated) to 100 (the same answer). Reply with the number only.\n\n"
        f"Question: {query}\nAnswer A: {original}\nAnswer B: {counterfactual}"
    )


def judge_score(reply: str) -> float:
    """The judge's reply as S: the first number, clamped to 0..100, over 100; 0.5 without one."""
    m = _FIRST_NUMBER.search(reply)
    if m is None:
        return JUDGE_FALLBACK
    return min(100.0, max(0.0, float(m.group(0)))) / 100.0


def _embedding_similarity(original: str, counterfactual: str) -> float:
    from jobs.common.embed import embed

    with _embed_lock:
        a, b = embed([original, counterfactual])
    cosine = float(np.clip(np.dot(a, b), -1.0, 1.0))  # unit vectors: the dot product is the cosine
    return (cosine + 1.0) / 2.0


async def embedding(original: str, counterfactual: str) -> float:
    """(cos + 1) / 2 of the two answers' embeddings, computed off the event loop."""
    return await asyncio.to_thread(_embedding_similarity, original, counterfactual)
