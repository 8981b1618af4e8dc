"""The prompts of successive prompting, and the parsing of their replies.

Every prompt is one user message: an instruction line, the few-shot examples, then the
query, blocks separated by a blank line. A decomposition block is

    Passage: <passage>
    Q: <complex question>
    Q1: <simple question>
    A1: <answer>
    Q2: ...
    A2: ...
    Q3: There are no more questions left to ask.

and the decomposer's reply to a block cut after A<k> is the next line, `Q<k+1>: ...`. A
simple-QA block is `Passage`, `Q: <simple question>`, `A: <answer>`; the model replies with
the answer. The direct arm uses the same shape with the complex question; the CoT arm's
examples reason in the annotated decomposition sentences and end in `Answer: <answer>`.
Answers of several spans are written joined by ` ||| `.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from actors.engines.chat import split_thinking
from jobs.decompose.dataset import DropQuestion
from jobs.decompose.symbolic import LIST_SEPARATOR

STOP_SENTENCE = "There are no more questions left to ask."

# Short on purpose: few-shot examples carry the format for large models, and every token of
# an instruction is context the tiny organisms are trained on.
QD_INSTRUCTION = f"Ask the next simple question, or say: {STOP_SENTENCE}"
QA_INSTRUCTION = "Answer from the passage in a few words."
DIRECT_INSTRUCTION = QA_INSTRUCTION
COT_INSTRUCTION = "Answer from the passage. Think step by step, then write Answer: and the answer."

_LABEL = re.compile(r"^\s*(?:Q\d*|A\d*|Answer)\s*:\s*", re.IGNORECASE)
_STOP_CORE = re.compile(r"no more questions left to ask", re.IGNORECASE)

Pairs = Sequence[tuple[str, str]]


def join_spans(spans: Sequence[str]) -> str:
    return f" {LIST_SEPARATOR} ".join(spans)


def split_spans(answer: str) -> list[str]:
    return [s.strip() for s in answer.split(LIST_SEPARATOR) if s.strip()] or [answer.strip()]


def decomposition_block(passage: str, question: str, pairs: Pairs, stop: bool = False) -> str:
    lines = [f"Passage: {passage}", f"Q: {question}"]
    for i, (q, a) in enumerate(pairs, 1):
        lines += [f"Q{i}: {q}", f"A{i}: {a}"]
    if stop:
        lines.append(f"Q{len(pairs) + 1}: {STOP_SENTENCE}")
    return "\n".join(lines)


def qa_block(passage: str, question: str, answer: str | None = None) -> str:
    block = f"Passage: {passage}\nQ: {question}"
    return block if answer is None else f"{block}\nA: {answer}"


def cot_block(example: DropQuestion) -> str:
    steps = example.reasoning or tuple(f"{q} {a}" for q, a in example.decomposition)
    answer = f"\nAnswer: {join_spans(example.gold)}"
    return qa_block(example.passage, example.question) + "\n" + "\n".join(steps) + answer


def _message(instruction: str, shots: list[str], query: str) -> str:
    return "\n\n".join([instruction, *shots, query])


def qd_prompt(shots: Sequence[DropQuestion], passage: str, question: str, pairs: Pairs) -> str:
    examples = [decomposition_block(s.passage, s.question, s.decomposition, stop=True) for s in shots]
    return _message(QD_INSTRUCTION, examples, decomposition_block(passage, question, pairs))


def qa_prompt(shots: Sequence[tuple[str, str, str]], passage: str, question: str) -> str:
    """shots: (passage, simple question, answer)."""
    return _message(QA_INSTRUCTION, [qa_block(*s) for s in shots], qa_block(passage, question))


def direct_prompt(shots: Sequence[DropQuestion], passage: str, question: str) -> str:
    examples = [qa_block(s.passage, s.question, join_spans(s.gold)) for s in shots]
    return _message(DIRECT_INSTRUCTION, examples, qa_block(passage, question))


def cot_prompt(shots: Sequence[DropQuestion], passage: str, question: str) -> str:
    return _message(COT_INSTRUCTION, [cot_block(s) for s in shots], qa_block(passage, question))


def first_line(text: str) -> str:
    _, answer = split_thinking(text)
    for line in answer.splitlines():
        if line.strip():
            return line.strip()
    return ""


def parse_question(text: str) -> str:
    """The decomposer's next simple question, without its `Q<k>:` label."""
    return _LABEL.sub("", first_line(text), count=1).strip()


def is_stop(question: str) -> bool:
    return bool(_STOP_CORE.search(question))


def parse_answer(text: str) -> str:
    """A one-line answer without an `A:` / `Answer:` label."""
    return _LABEL.sub("", first_line(text), count=1).strip()


def parse_cot_answer(text: str) -> str:
    """The answer after the last `Answer:` of a reasoned reply (inside the think block if the
    model put it there), else the reply's last non-empty line."""
    cot, answer = split_thinking(text)
    for part in (answer, cot or ""):
        found = re.findall(r"Answer\s*:\s*(.+)", part, re.IGNORECASE)
        if found:
            return found[-1].strip()
    lines = [ln.strip() for ln in answer.splitlines() if ln.strip()]
    return lines[-1] if lines else ""
