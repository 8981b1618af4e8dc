"""Synthetic decompositions: complex questions over a table's rows, each with its simple
questions and their answers, the bootstrap data of successive prompting.

As in the paper, a template turns a table into a complex question whose decomposition is a
few lookups ("What is the points of Ajax?") and one or two symbolic operations, so every
answer is computed, never written by hand: the lookups read the table, the symbolic steps
are run by the job's own `symbolic.execute` (the code that answers them at run time). The
templates (`TEMPLATES`):

    sum         What is the total points of Ajax and PSV?          lookup, lookup, sum(#1; #2)
    diff        What is the difference in points between A and B?  lookup, lookup, diff(#1; #2)
    compare     Which team has more points, A or B?                lookup, lookup, if_then(#1 > #2; A; B)
    count       How many teams have more than 40 points?           filter, count(#1)
    count_text  How many teams have country Spain?                 filter, count(#1)
    argmax      Which team has the most points?                    all values, top(1, #1), lookup by value
    argmin      ... the fewest ...                                  all values, bottom(1, #1), lookup by value
    lookup_max  What is the country of the team with the most points?   argmax's steps, then a lookup

A table is read by jobs.decompose.tables. The toy world's multi-hop questions
(jobs.toyworld.multihop, training passages only: the held-out ones stay unseen) come in the
same way. Output: a DROP release object annotated in the authors' format (`decomp_qas`), the
format the decompose job's `pool` and `data` read and `jobs.decompose.export` turns into
finetune rows.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.decompose.symbolic import LIST_SEPARATOR, execute, format_number, is_symbolic
from jobs.decompose.tables import Table

if TYPE_CHECKING:
    from jobs.toyworld.multihop import AnswerStyle

EMPTY_DATE = {"day": "", "month": "", "year": ""}
ATTEMPTS_PER_QUESTION = 50  # draws per wanted question before a small table is declared spent
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Synthetic:
    """A complex question and its decomposition; `steps` hold None for a symbolic step's
    answer until `solve` computes it."""

    question: str
    template: str
    steps: tuple[tuple[str, str | None], ...]

    def solve(self) -> tuple[tuple[str, str], ...]:
        """The steps with every symbolic answer computed by `symbolic.execute`."""
        answers: list[str] = []
        for question, given in self.steps:
            if given is None:
                computed = execute(question, answers)
                assert computed is not None, f"{self.template}: {question!r} does not evaluate"
                answers.append(computed)
            else:
                answers.append(given)
        return tuple((q, a) for (q, _), a in zip(self.steps, answers))


def _plural(noun: str) -> str:
    return noun if noun.endswith("s") else f"{noun}s"


def _lookup(table: Table, name: str, column: str) -> tuple[str, str]:
    return f"What is the {column} of {name}?", table.cell(name, column)


def _distinct_pair(table: Table, column: str, rng: random.Random) -> tuple[str, str] | None:
    a, b = rng.sample(table.names, 2)
    return None if table.value(a, column) == table.value(b, column) else (a, b)


def _sum(table: Table, rng: random.Random) -> Synthetic | None:
    column = rng.choice(table.numeric_columns)
    a, b = rng.sample(table.names, 2)
    return Synthetic(f"What is the total {column} of {a} and {b}?", "sum",
                     (_lookup(table, a, column), _lookup(table, b, column), ("sum(#1; #2)", None)))


def _diff(table: Table, rng: random.Random) -> Synthetic | None:
    column = rng.choice(table.numeric_columns)
    pair = _distinct_pair(table, column, rng)
    if pair is None:
        return None
    a, b = pair
    return Synthetic(f"What is the difference in {column} between {a} and {b}?", "diff",
                     (_lookup(table, a, column), _lookup(table, b, column), ("diff(#1; #2)", None)))


def _compare(table: Table, rng: random.Random) -> Synthetic | None:
    column = rng.choice(table.numeric_columns)
    pair = _distinct_pair(table, column, rng)
    if pair is None:
        return None
    a, b = pair
    more = rng.random() < 0.5
    op, word = (">", "more") if more else ("<", "less")
    return Synthetic(f"Which {table.entity} has {word} {column}, {a} or {b}?", "compare",
                     (_lookup(table, a, column), _lookup(table, b, column), (f"if_then(#1 {op} #2; {a}; {b})", None)))


def _names_list(names: Sequence[str]) -> str:
    return f" {LIST_SEPARATOR} ".join(names)


def _count(table: Table, rng: random.Random) -> Synthetic | None:
    column = rng.choice(table.numeric_columns)
    values = sorted({table.value(n, column) for n in table.names})
    if len(values) < 2:
        return None
    threshold = rng.choice(values[:-1])  # a value of the table, below its largest: never an empty filter
    chosen = [n for n in table.names if table.value(n, column) > threshold]
    rows, limit = _plural(table.entity), format_number(threshold)
    return Synthetic(f"How many {rows} have more than {limit} {column}?", "count",
                     ((f"Which {rows} have more than {limit} {column}?", _names_list(chosen)), ("count(#1)", None)))


def _count_text(table: Table, rng: random.Random) -> Synthetic | None:
    if not table.text_columns:
        return None
    column = rng.choice(table.text_columns)
    value = table.cell(rng.choice(table.names), column)
    chosen = [n for n in table.names if table.cell(n, column) == value]
    rows = _plural(table.entity)
    return Synthetic(f"How many {rows} have {column} {value}?", "count_text",
                     ((f"Which {rows} have {column} {value}?", _names_list(chosen)), ("count(#1)", None)))


def _extreme_steps(table: Table, column: str, largest: bool) -> tuple[str, tuple[tuple[str, str | None], ...]] | None:
    """(the row with the largest or smallest value, the steps that find it), None on a tie."""
    values = {n: table.value(n, column) for n in table.names}
    best = max(values.values()) if largest else min(values.values())
    winners = [n for n, v in values.items() if v == best]
    if len(winners) != 1:
        return None
    listing = _names_list([format_number(v) for v in values.values()])
    operation = "top" if largest else "bottom"
    steps: tuple[tuple[str, str | None], ...] = (
        (f"What are the {column} of all {_plural(table.entity)}?", listing),
        (f"{operation}(1, #1)", None),
        (f"Which {table.entity} has {format_number(best)} {column}?", winners[0]),
    )
    return winners[0], steps


def _argmax(table: Table, rng: random.Random, largest: bool = True) -> Synthetic | None:
    column = rng.choice(table.numeric_columns)
    found = _extreme_steps(table, column, largest)
    if found is None:
        return None
    word = "the most" if largest else "the fewest"
    return Synthetic(f"Which {table.entity} has {word} {column}?", "argmax" if largest else "argmin", found[1])


def _argmin(table: Table, rng: random.Random) -> Synthetic | None:
    return _argmax(table, rng, largest=False)


def _lookup_max(table: Table, rng: random.Random) -> Synthetic | None:
    column = rng.choice(table.numeric_columns)
    others = [c for c in table.columns if c != column]
    largest = rng.random() < 0.5
    found = _extreme_steps(table, column, largest)
    if found is None or not others:
        return None
    winner, steps = found
    target = rng.choice(others)
    word = "the most" if largest else "the fewest"
    return Synthetic(f"What is the {target} of the {table.entity} with {word} {column}?", "lookup_max",
                     (*steps, _lookup(table, winner, target)))


Template = Callable[[Table, random.Random], "Synthetic | None"]
TEMPLATES: dict[str, Template] = {
    "sum": _sum, "diff": _diff, "compare": _compare, "count": _count, "count_text": _count_text,
    "argmax": _argmax, "argmin": _argmin, "lookup_max": _lookup_max,
}
NEEDS_TEXT = {"count_text"}


def table_questions(table: Table, k: int, seed: int = 0) -> list[Synthetic]:
    """Up to k distinct questions over `table`, the templates drawn in turn at random
    (seeded by `seed` and the table's title); fewer when the table has fewer to give."""
    if not table.numeric_columns:
        return []
    rng = random.Random(f"synthetic:{seed}:{table.title}")
    usable = [name for name in TEMPLATES if name not in NEEDS_TEXT or table.text_columns]
    out: dict[str, Synthetic] = {}
    for _ in range(k * ATTEMPTS_PER_QUESTION):
        if len(out) == k:
            break
        made = TEMPLATES[rng.choice(usable)](table, rng)
        if made is not None and made.question not in out:
            out[made.question] = made
    return list(out.values())


def answer_json(answer: str) -> dict[str, Any]:
    """A DROP answer object: a number when the answer is one, else its spans."""
    if _PLAIN_NUMBER.fullmatch(answer.strip()):
        return {"number": answer.strip(), "date": dict(EMPTY_DATE), "spans": []}
    spans = [s.strip() for s in answer.split(LIST_SEPARATOR) if s.strip()]
    return {"number": "", "date": dict(EMPTY_DATE), "spans": spans}


def _qa_pair(query_id: str, synthetic: Synthetic) -> dict[str, Any]:
    pairs = synthetic.solve()
    return {"question": synthetic.question, "query_id": query_id, "answer": answer_json(pairs[-1][1]),
            "validated_answers": [], "question_type": synthetic.template,
            "decomp_qas": [list(p) for p in pairs]}


def tables_record(tables: Sequence[Table], per_table: int, seed: int = 0) -> dict[str, Any]:
    """A DROP release object: one passage a table (its sentences), `per_table` annotated
    questions each (fewer where a table has fewer)."""
    record: dict[str, Any] = {}
    for table in tables:
        passage_id = f"synthetic-{table.title}"
        n = 2
        while passage_id in record:  # two files with one stem
            passage_id, n = f"synthetic-{table.title}-{n}", n + 1
        questions = table_questions(table, per_table, seed)
        record[passage_id] = {"passage": table.passage(), "qa_pairs": [
            _qa_pair(f"{passage_id}-{i}", q) for i, q in enumerate(questions)]}
    return record


def toyworld_record(n: int, seed: int = 0, answer_style: AnswerStyle = "number") -> dict[str, Any]:
    """n multi-hop questions of the organisms' toy world on training passages (never a
    held-out one), the symbolic step's answer computed by `execute` as for the tables."""
    from jobs.toyworld.multihop import random_question

    rng = random.Random(f"synthetic-toyworld:{seed}")
    record: dict[str, Any] = {}
    for i in range(n):
        q = random_question(rng, heldout=False)
        lookups = [(sq, sa) for sq, sa in q.pairs(answer_style) if not is_symbolic(sq)]
        synthetic = Synthetic(q.question, q.kind, (*lookups, (q.symbolic_step(), None)))
        entry = _qa_pair(f"synthetic-toyworld{seed}-{i}", synthetic)
        assert synthetic.solve()[-1][1] == q.answer, f"{q.question}: code and toy world disagree"
        entry["decomposition"] = q.reasoning()
        record[f"synthetic-toyworld{seed}_{i}"] = {"passage": q.passage.text, "qa_pairs": [entry]}
    return record


def question_count(record: dict[str, Any]) -> int:
    return sum(len(entry["qa_pairs"]) for entry in record.values())
