"""Few-shot examples picked from an annotated pool: nearest neighbours, random, or fixed.

`nearest` embeds the pool's questions and the query with MiniLM (jobs.common.embed) and, like the
authors' code, draws the k examples from the k * `spread` most similar ones (spread 1: the
plain top k), seeded per query. `random` draws k from the whole pool per query; `fixed` uses
the same k for every query. An example never shares the query's id or its exact question,
so a pool that overlaps the evaluated set does not leak answers.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Literal

import numpy as np

Strategy = Literal["nearest", "random", "fixed"]


@functools.lru_cache(maxsize=16)
def _embed_pool(texts: tuple[str, ...]) -> np.ndarray:
    from jobs.common.embed import embed

    return embed(list(texts))


@functools.lru_cache(maxsize=4096)
def _embed_query(text: str) -> np.ndarray:
    from jobs.common.embed import embed

    return embed([text])[0]


class FewShotSelector:
    """Chooses indices into a pool of (id, question text) entries."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str], strategy: Strategy, k: int,
                 seed: int = 0, spread: int = 2) -> None:
        assert len(ids) == len(texts), "one id per pool text"
        assert spread >= 1, f"spread is a multiple of k and at least 1, got {spread}"
        self.ids, self.texts = list(ids), list(texts)
        self.strategy, self.k, self.seed, self.spread = strategy, k, seed, spread
        self._fixed_order = list(range(len(texts)))
        random.Random(f"fixed:{seed}").shuffle(self._fixed_order)

    def _eligible(self, query_id: str, query_text: str) -> list[int]:
        return [i for i, (pid, t) in enumerate(zip(self.ids, self.texts)) if pid != query_id and t != query_text]

    def select(self, query_id: str, query_text: str) -> list[int]:
        """Pool indices to show, in prompt order (for `nearest`, the most similar last, next
        to the query)."""
        if self.k == 0 or not self.texts:
            return []
        eligible = self._eligible(query_id, query_text)
        rng = random.Random(f"{self.seed}:{query_id}:{query_text}")
        if self.strategy == "fixed":
            allowed = set(eligible)
            return [i for i in self._fixed_order if i in allowed][: self.k]
        if self.strategy == "random":
            return rng.sample(eligible, min(self.k, len(eligible)))
        pool = _embed_pool(tuple(self.texts))
        similarity = pool[eligible] @ _embed_query(query_text)
        ranked = [eligible[j] for j in np.argsort(-similarity, kind="stable")]
        candidates = ranked[: self.k * self.spread]
        chosen = rng.sample(candidates, min(self.k, len(candidates)))
        rank = {i: r for r, i in enumerate(ranked)}
        return sorted(chosen, key=lambda i: -rank[i])
