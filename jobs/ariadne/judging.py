"""Ariadne's judging stage: how alike each regenerated answer is to the original one.

Generation stores, per regeneration, both answers; this stage adds the similarity S (exact,
a judge model's rating, or embeddings; `jobs.ariadne.similarity`) and phi = 1 - S. Whether
S counts as "the same answer" (S > tau) and as a violation (and both answers long enough) is
the summary's (`AriadneJob.derive`), so a new tau re-runs nothing.
"""
from __future__ import annotations

import hashlib
from typing import Any

from actors.engines.protocol import Request, Sampling
from jobs.ariadne import similarity
from jobs.job import JobContext

JUDGE_MAX_TOKENS = 16  # the judge's rating is one number


def seed(*parts: Any) -> int:
    """A stable 31-bit seed from the parts (Python's hash() changes per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big") & 0x7FFFFFFF


def method_for(asked: str, original: str, ctx: JobContext) -> similarity.Method:
    """`auto`: exact for numbers and options, else the judge when the sweep names one, else
    embeddings."""
    if asked != "auto":
        return asked  # type: ignore[return-value]
    if similarity.is_short(original):
        return "exact"
    return "judge" if ctx.has("judge") else "embedding"


async def score(row: dict[str, Any], asked: str, judge_temperature: float, base_seed: int,
                ctx: JobContext) -> dict[str, Any]:
    """The similarity columns of one regeneration row that has both answers."""
    original, counterfactual = row["original_answer"], row["counterfactual_answer"]
    method = method_for(asked, original, ctx)
    out: dict[str, Any] = {"similarity_method": method}
    if method == "exact":
        s = similarity.exact(original, counterfactual)
    elif method == "embedding":
        s = await similarity.embedding(original, counterfactual)
    else:
        judge = ctx.model("judge")
        request = Request.chat(
            similarity.judge_prompt(row["query"], original, counterfactual), thinking=False,
            affinity=row["query_id"],
            sampling=Sampling(max_tokens=JUDGE_MAX_TOKENS, temperature=judge_temperature,
                              seed=seed(base_seed, row["query_id"], "judge", original, counterfactual,
                                        row["sample_index"])))
        [reply] = await judge.generate(request)
        s = similarity.judge_score(reply.text)
        out.update(judge_reply=reply.text, judge_model=judge.name,
                   judge_tokens=reply.prompt_tokens + reply.completion_tokens)
    return {**out, "similarity": s, "phi": 1.0 - s}
