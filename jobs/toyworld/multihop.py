"""A synthetic multi-hop domain: short score passages and questions that need both scores.

A passage states a match's two scores, "The home team scored 12 goals. The away team scored
5 goals."; a complex question needs both and one operation:

    How many more goals did the home team score than the away team?   -> 7     (diff)
    How many goals did the away and home teams score in total?        -> 17    (sum)
    Which team scored more goals, away or home?                       -> home  (compare)

Its decomposition, in the decompose job's formats (jobs.decompose.prompts, the contract):

    Q1: How many goals did the home team score?  A1: The home team scored 12 goals.
    Q2: How many goals did the away team score?  A2: The away team scored 5 goals.
    Q3: diff(#1; #2)                             A3: 7   (a symbolic step: code answers it)
    Q4: There are no more questions left to ask.

Passages are split by a hash of their text: a fifth is held out, never trained on.
`drop_record` writes questions as a DROP release object with the authors' `decomp_qas`
annotation, so held-out questions serve as the decompose job's data and training-side ones as
its few-shot pool. The organisms trained on this domain: jobs.organisms.multihop.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

TEAMS = ("home", "away")  # a passage states them in this order
GOALS = range(2, 30)  # one token each (the tokenizer holds whole numbers up to their sums)
KINDS: tuple[Kind, ...] = ("diff", "sum", "compare")
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
            return MultihopQuestion(passage, kind, first, second)  # type: ignore[arg-type]  # kind is set above
        if len({g for _, g in passage.scores}) == 1:  # every team tied: no valid question here
            return random_question(rng, heldout, kind)


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


HELDOUT_SET_SIZE = 300
POOL_SIZE = 200


def heldout_record() -> dict[str, Any]:
    """The decompose job's `data: multihop`: held-out questions, the kinds in turn."""
    return drop_record(heldout_questions(HELDOUT_SET_SIZE), "multihop")


def pool_record() -> dict[str, Any]:
    """The decompose job's `pool: multihop`: annotated questions on training passages."""
    rng = random.Random("multihop-pool")
    return drop_record([random_question(rng, heldout=False) for _ in range(POOL_SIZE)], "multihop-pool")
