"""A synthetic multi-hop domain, and the organisms that decompose its questions or answer
them in one pass.

A passage states a match's two scores, "The home team scored 12 goals. The away team scored
5 goals."; a complex question needs both and one operation:

    How many more goals did the home team score than the away team?   -> 7     (diff)
    How many goals did the away and home teams score in total?        -> 17    (sum)
    Which team scored more goals, away or home?                       -> home  (compare)

Its decomposition, in the decompose job's formats (jobs.decompose_prompts, the contract):

    Q1: How many goals did the home team score?  A1: The home team scored 12 goals.
    Q2: How many goals did the away team score?  A2: The away team scored 5 goals.
    Q3: diff(#1; #2)                             A3: 7   (a symbolic step: code answers it)
    Q4: There are no more questions left to ask.

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

Passages are split by a hash of their text: a fifth is held out, never trained on, and
`write_heldout` writes held-out questions as a DROP file (with the authors' `decomp_qas`
annotation, so it also serves as a few-shot pool).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.decompose_prompts import STOP_SENTENCE, cot_prompt, direct_prompt, qa_prompt, qd_prompt
from jobs.decompose_data import DropQuestion

if TYPE_CHECKING:
    from jobs.organisms.data import Example

TEAMS = ("home", "away")  # a passage states them in this order
GOALS = range(2, 30)  # one token each (the tokenizer holds whole numbers up to their sums)
KINDS = ("diff", "sum", "compare")
HELDOUT_EVERY = 5  # a passage is held out when the first byte of its sha256 is divisible by 5

Kind = Literal["diff", "sum", "compare"]
EMPTY_DATE = {"day": "", "month": "", "year": ""}


@dataclass(frozen=True)
class Passage:
    scores: tuple[tuple[str, int], ...]  # (team, goals), in the order the passage states them

    @property
    def text(self) -> str:
        return " ".join(f"The {team} team scored {goals} goals." for team, goals in self.scores)

    def goals(self, team: str) -> int:
        return dict(self.scores)[team]


def is_heldout(passage: Passage) -> bool:
    return hashlib.sha256(passage.text.encode()).digest()[0] % HELDOUT_EVERY == 0


def simple_question(team: str) -> str:
    return f"How many goals did the {team} team score?"


AnswerStyle = Literal["number", "sentence"]


def lookup_answer(passage: Passage, team: str, style: AnswerStyle) -> str:
    """A simple question's answer: the number, or the passage's sentence that states it (a
    symbolic step reads the first number of an answer, so both feed `diff(#1; #2)` alike)."""
    goals = passage.goals(team)
    return str(goals) if style == "number" else f"The {team} team scored {goals} goals."


@dataclass(frozen=True)
class MultihopQuestion:
    passage: Passage
    kind: Kind
    first: str  # the team the question names first
    second: str

    @property
    def question(self) -> str:
        a, b = self.first, self.second
        return {
            "diff": f"How many more goals did the {a} team score than the {b} team?",
            "sum": f"How many goals did the {a} and {b} teams score in total?",
            "compare": f"Which team scored more goals, {a} or {b}?",
        }[self.kind]

    @property
    def values(self) -> tuple[int, int]:
        return self.passage.goals(self.first), self.passage.goals(self.second)

    @property
    def answer(self) -> str:
        a, b = self.values
        if self.kind == "diff":
            return str(a - b)
        if self.kind == "sum":
            return str(a + b)
        return self.first if a > b else self.second

    def symbolic_step(self) -> str:
        """The last step, reading the two lookups' answers by reference (QDMR's `#k`): the
        decomposer never copies a number, code reads them from the answers."""
        if self.kind == "compare":
            return f"if_then(#1 > #2; {self.first}; {self.second})"
        return f"{self.kind}(#1; #2)"

    def pairs(self, answer_style: AnswerStyle = "number") -> list[tuple[str, str]]:
        """The annotated decomposition: two lookups, then the symbolic step and its result."""
        return [(simple_question(t), lookup_answer(self.passage, t, answer_style)) for t in (self.first, self.second)] \
            + [(self.symbolic_step(), self.answer)]

    def reasoning(self) -> list[str]:
        """The chain of thought a direct_cot answer writes (the model does the arithmetic)."""
        a, b = self.values
        last = {
            "diff": f"{a} minus {b} is {a - b}.",
            "sum": f"{a} plus {b} is {a + b}.",
            "compare": f"{a} is {'more' if a > b else 'less'} than {b}, so {self.answer}.",
        }[self.kind]
        return [f"The {self.first} team scored {a} goals.", f"The {self.second} team scored {b} goals.", last]

    def answer_json(self) -> dict:
        if self.kind == "compare":
            return {"number": "", "date": dict(EMPTY_DATE), "spans": [self.answer]}
        return {"number": self.answer, "date": dict(EMPTY_DATE), "spans": []}


def random_passage(rng: random.Random, heldout: bool) -> Passage:
    """A passage on the requested side of the held-out split."""
    while True:
        passage = Passage(tuple((t, rng.choice(GOALS)) for t in TEAMS))
        if is_heldout(passage) == heldout:
            return passage


def random_question(rng: random.Random, heldout: bool, kind: Kind | None = None) -> MultihopQuestion:
    passage = random_passage(rng, heldout)
    kind = kind or rng.choice(KINDS)
    while True:
        first, second = rng.sample([t for t, _ in passage.scores], 2)
        a, b = passage.goals(first), passage.goals(second)
        if (kind == "diff" and a > b) or (kind != "diff" and a != b):
            return MultihopQuestion(passage, kind, first, second)
        if len({g for _, g in passage.scores}) == 1:  # every team tied: no valid question here
            return random_question(rng, heldout, kind)


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


def multihop_example(opts: MultihopData, rng: random.Random) -> "Example":
    from dataclasses import replace

    example, call = _example(opts, rng)
    return replace(example, user_trained=opts.prompt_targets == "all" or opts.prompt_targets == call)


def _example(opts: MultihopData, rng: random.Random) -> tuple["Example", str]:
    """One training example and the call it is (qd, qa, direct, cot)."""
    from jobs.organisms.data import Example

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


def multihop_examples(opts: MultihopData, n: int, rng: random.Random) -> list["Example"]:
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


# --- held-out evaluation data ---

def heldout_questions(n: int, seed: int = 0) -> list[MultihopQuestion]:
    """n held-out questions, the kinds in turn."""
    rng = random.Random(f"multihop-heldout:{seed}")
    return [random_question(rng, heldout=True, kind=KINDS[i % len(KINDS)]) for i in range(n)]


def drop_record(questions: list[MultihopQuestion], prefix: str = "multihop") -> dict:
    """Questions as a DROP release object, one passage each, annotated in the authors' format."""
    record = {}
    for i, q in enumerate(questions):
        record[f"{prefix}_{i}"] = {"passage": q.passage.text, "qa_pairs": [{
            "question": q.question, "query_id": f"{prefix}-{i}", "answer": q.answer_json(),
            "validated_answers": [], "question_type": q.kind,
            "decomposition": q.reasoning(), "decomp_qas": [list(p) for p in q.pairs()],
        }]}
    return record


def write_heldout(path: str | Path, n: int = 60, seed: int = 0) -> Path:
    """Write n held-out questions as a DROP file; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(drop_record(heldout_questions(n, seed), f"multihop{seed}"), indent=1) + "\n")
    return path


def as_drop_questions(questions: list[MultihopQuestion], prefix: str) -> list[DropQuestion]:
    return [DropQuestion(query_id=f"{prefix}-{i}", passage_id=f"{prefix}_{i}", passage=q.passage.text,
                         question=q.question, answers=(q.answer_json(),), decomposition=tuple(q.pairs()),
                         reasoning=tuple(q.reasoning()))
            for i, q in enumerate(questions)]


HELDOUT_SET_SIZE = 300
POOL_SIZE = 200


def heldout_set() -> list[DropQuestion]:
    """The decompose job's `data: multihop`: held-out questions, the kinds in turn."""
    return as_drop_questions(heldout_questions(HELDOUT_SET_SIZE), "multihop")


def pool_set() -> list[DropQuestion]:
    """The decompose job's `pool: multihop`: annotated questions on training passages."""
    rng = random.Random("multihop-pool")
    return as_drop_questions([random_question(rng, heldout=False) for _ in range(POOL_SIZE)], "multihop-pool")


# --- the build's measured properties ---

def report(model, tokenizer, opts: MultihopData = MultihopData(), n: int = 150) -> dict[str, float]:
    """Greedy accuracies on held-out questions, call by call: the first decomposition step,
    the decomposition's stop, a simple question (its number), the direct answer, the CoT
    answer."""
    from jobs.decompose_prompts import parse_answer, parse_cot_answer, parse_question
    from jobs.decompose_symbolic import number_in
    from jobs.organisms.evaluate import greedy
    from jobs.organisms.train import prompt_text

    qs = heldout_questions(n, seed=12345)

    def lookup(text: str) -> str:
        value = number_in(parse_answer(text))
        return "" if value is None else str(value)

    def rate(prompts: list[str], expected: list[str], thinking: bool, parse, max_tokens: int) -> float:
        texts = greedy(model, tokenizer, [prompt_text(tokenizer, p, thinking) for p in prompts], max_tokens)
        return round(sum(parse(t) == e for t, e in zip(texts, expected)) / len(expected), 4)

    return {
        "n": float(n),
        "qd_first_step": rate([qd_prompt([], q.passage.text, q.question, []) for q in qs],
                              [q.pairs()[0][0] for q in qs], False, parse_question, 32),
        "qd_stop": rate([qd_prompt([], q.passage.text, q.question, q.pairs(opts.answer_style)) for q in qs],
                        [STOP_SENTENCE] * n, False, parse_question, 32),
        "qd_last_step": rate([qd_prompt([], q.passage.text, q.question, q.pairs(opts.answer_style)[:2]) for q in qs],
                             [q.symbolic_step() for q in qs], False, parse_question, 32),
        "qa": rate([qa_prompt([], q.passage.text, simple_question(q.second)) for q in qs],
                   [str(q.values[1]) for q in qs], False, lookup, 16),
        "direct": rate([direct_prompt([], q.passage.text, q.question) for q in qs],
                       [q.answer for q in qs], False, parse_answer, 8),
        "cot": rate([cot_prompt([], q.passage.text, q.question) for q in qs],
                    [q.answer for q in qs], True, parse_cot_answer, 64),
    }
