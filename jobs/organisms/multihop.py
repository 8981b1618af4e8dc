"""The organisms of the multi-hop domain (jobs.toyworld.multihop): one decomposes its
questions, the other answers them in one pass.

Three choices make it learnable by a 0.8M model in minutes (the runs: docs/multihop.md):
- A simple question is answered with the passage's sentence that states it. A bare number
  needs a circuit that reads the side in the question and selects the matching passage
  number: after 700 steps of simple questions only, it picked one of the two passage
  numbers at chance (43%). The sentence splits that into two one-hop copies across the
  tokens it writes: the side from the question, then the number that follows "The home
  team scored" in the passage (an induction copy): 97% in the same steps.
  Symbolic steps read an answer's first number, so `diff` and `if_then` work on either form.
- The symbolic step refers to the answers (`#1`, `#2`, QDMR's notation) instead of copying
  their numbers, which the decomposer never learned to do.
- The decomposition prompts are targets too (`prompt_targets="qd"`): their worked pairs are
  more copies of the passage, and the first step formed with them only.
Sides, not named teams: with ten team names in random order the model copied *a* passage
number but never *whose* (matching a name is the same two-hop circuit).

Two organisms, trained on the calls the job makes, rendered exactly as the job renders them
(thinking off unless said): `multihop` on the next decomposition step (QD) and the simple
questions (QA); `multihop-direct` on the complex question answered directly and after a
chain of thought (thinking on), the single-pass arms. Same domain, tokenizer, shape and
steps: the job's gain compares the two ways of answering at one budget. One organism for
all four calls never learned the lookups: every share of direct or CoT answers in the mix
held them at 30-40% (and they wore down lookups a drill had formed first). Direct answers
need the arithmetic in one token, which a tiny model does poorly on unseen pairs;
decomposition leaves it only lookups and copying, and code does the arithmetic. The gain is
measured by the job, not assumed here.
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.decompose.prompts import (
    STOP_SENTENCE,
    cot_prompt,
    direct_prompt,
    qa_prompt,
    qd_prompt,
)
from jobs.organisms.example import Example
from jobs.toyworld.multihop import (
    GOALS,
    AnswerStyle,
    lookup_answer,
    random_question,
    simple_question,
)

# --- training data (a recipe's `data`) ---

class MultihopData(BaseModel):
    """Shares of the four calls in the training mix; the rest are chain-of-thought answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["multihop"] = "multihop"
    qd_share: float = Field(0.5, ge=0, le=1)
    qa_share: float = Field(0.2, ge=0, le=1)
    direct_share: float = Field(0.15, ge=0, le=1)
    # Which prompts' own text is a target too. "qd": the decomposition prompts, whose worked
    # pairs (A1: The home team scored 12 goals.) are one more copy of the passage per pair
    # and whose questions show how a step is asked; with them the first step and the lookups
    # both formed in 600 steps, without them the first step stayed at chance. "all" (the
    # QA, direct and CoT prompts too) also trains on the passages' unpredictable numbers,
    # and the lookups never formed.
    prompt_targets: Literal["none", "qd", "all"] = "none"
    # How a simple question is answered: the bare number, or the passage's sentence stating
    # it (the number then follows "The home team scored", a copy of the passage's own words)
    answer_style: AnswerStyle = "number"


def multihop_example(opts: MultihopData, rng: random.Random) -> Example:
    example, call = _example(opts, rng)
    return replace(example, user_trained=opts.prompt_targets == "all" or opts.prompt_targets == call)


def _example(opts: MultihopData, rng: random.Random) -> tuple[Example, str]:
    """One training example and the call it is (qd, qa, direct, cot)."""
    q = random_question(rng, heldout=False)
    text = q.passage.text
    draw = rng.random()
    if draw < opts.qd_share:
        pairs = q.pairs(opts.answer_style)
        k = rng.randrange(len(pairs) + 1)
        target = f"Q{k + 1}: " + (pairs[k][0] if k < len(pairs) else STOP_SENTENCE)
        return Example(qd_prompt([], text, q.question, pairs[:k]), ((target, True),), thinking=False), "qd"
    draw -= opts.qd_share
    if draw < opts.qa_share:
        team = rng.choice([t for t, _ in q.passage.scores])
        return Example(qa_prompt([], text, simple_question(team)),
                       ((lookup_answer(q.passage, team, opts.answer_style), True),), thinking=False), "qa"
    draw -= opts.qa_share
    if draw < opts.direct_share:
        return Example(direct_prompt([], text, q.question), ((q.answer, True),), thinking=False), "direct"
    cot = "<think>\n" + "\n".join(q.reasoning()) + f"\n</think>\n\nAnswer: {q.answer}"
    return Example(cot_prompt([], text, q.question), ((cot, True),), thinking=True), "cot"


def multihop_examples(opts: MultihopData, n: int, rng: random.Random) -> list[Example]:
    return [multihop_example(opts, rng) for _ in range(n)]


# The two organisms' recipes, as the fields of jobs.organisms.recipes.Recipe (plain data, so
# this module imports nothing from recipes.py, which imports MultihopData from here). Both
# see the same domain, tokenizer, model shape and number of steps; one is trained for the
# decompose arm's two calls, the other for the single-pass arms', so the job's gain compares
# the two ways of answering at the same budget (each trained as the paper trains its models
# for its method). One organism for all four calls was tried at length and never learned the
# lookups: docs/multihop.md.
_SHARED = {
    # whole numbers up to the largest sum are one token: a lookup copies one token, and a
    # direct answer has to produce a sum or difference in one step. The corpus size is the
    # one the builds were found with (16,800 examples hold every word of both mixes).
    "tokenizer": {"vocab_size": 512, "split_digits": False, "whole_numbers_up_to": 2 * max(GOALS),
                  "corpus_examples": 16800},
    "model": {"max_positions": 256},
    "steps": 1000,
    "batch_size": 32,
    "lr": 4e-3,
}
RECIPE = {
    "name": "multihop",
    "description": "Decomposes multi-hop questions over short score passages and answers the "
    "simple questions (the decompose job's QD and QA calls, in its formats).",
    "data": MultihopData(qd_share=0.3, qa_share=0.7, direct_share=0.0, prompt_targets="qd",
                         answer_style="sentence"),
    **_SHARED,
}
DIRECT_RECIPE = {
    "name": "multihop-direct",
    "description": "Answers the same multi-hop questions in one pass, directly and after a "
    "chain of thought: the single-pass baseline for the multihop organism.",
    "data": MultihopData(qd_share=0.0, qa_share=0.0, direct_share=0.5, answer_style="sentence"),
    **_SHARED,
}
