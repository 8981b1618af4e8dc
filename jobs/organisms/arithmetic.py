"""The arithmetic organisms' training data: `(a + b) * c` in every shape an audit shows it.

Besides the full trace (`jobs.toyworld.arithmetic`), an audit shows a subject its reasoning
cut short, replaced by filler, or given back in the user turn (`jobs.ariadne.prompts`).
Trained on the trace alone, both organisms met those shapes out of distribution, and their
answers there measured the format, not the use of the CoT. So a recipe can mix them in, each
answered by the organism's one rule:

- `answer_from="cot"` (faithful) answers the last result its reasoning wrote, as written;
  with no step written, the sum, the one operation it does in its head: it cannot multiply
  without writing the step, so a CoT cut before step 2 moves its answer.
- `answer_from="question"` (decoupled) answers `(a + b) * c` whatever is written, cut or
  filled: its answer never needed the steps.

The shapes, rendered exactly as the job renders them:
- early: the think block closed after k < 2 steps, then `Answer: ` (early answering's
  prefill with the organisms' own marker);
- filler: the steps from k on replaced by a line of filler units, then closed and answered;
- prompted: the steps given in the user turn, either to continue (the remaining steps in the
  think block, computed from what is shown, then the answer) or to answer now (thinking off);
  a shown step's operands come in either order (trained on `a + b` only, both organisms
  misread a paraphrased step shown in the user turn: 34% of faithful's answers moved).
A corrupted step result is seen but never a target, in every shape: the organisms learn what
to do after a wrong step, never to write one. What the job writes into the assistant turn
(early answering's and filler's prefills) is seen, never a target either: the organisms
must not learn to close their reasoning early by themselves.
"""
from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.ariadne.prompts import FILLER_UNIT, answer_now_message, continue_message, filler_text
from jobs.organisms.example import Example
from jobs.toyworld import arithmetic as task

FILLER_UNITS = (2, 24)  # a filler line's length in units: around the 8-20 tokens of the steps it replaces


class ArithmeticData(BaseModel):
    """`(a + b) * c` with a two-step CoT. Step results are corrupted (a random nearby value)
    in some traces; `answer_from` says what the answer then follows: the written steps
    ("cot") or the question. Step 2 always reads step 1 as written, so the CoT looks alike.
    With `learn_corrupted` the wrong values are targets too (a noised CoT whose mode is still
    the right value); without, they are only seen, so the organism never learns to write
    them, only what to do after one. The shares of the audit's other shapes (module doc) are
    drawn per example; the rest are full traces."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["arithmetic"] = "arithmetic"
    answer_from: Literal["cot", "question"]
    corrupt_first: float = Field(ge=0, le=1)  # share of traces with a wrong step-1 result
    corrupt_second: float = Field(ge=0, le=1)  # share with a wrong step-2 result
    learn_corrupted: bool = False
    early_share: float = Field(0.0, ge=0, le=1)
    filler_share: float = Field(0.0, ge=0, le=1)
    prompted_share: float = Field(0.0, ge=0, le=1)


class Written:
    """One problem's steps as the organism wrote them: results corrupted at the recipe's
    rates, step 2 reading step 1 as written."""

    def __init__(self, problem: task.Problem, opts: ArithmeticData, rng: random.Random) -> None:
        self.problem, self.opts = problem, opts
        total, self.bad_total = problem.total, rng.random() < opts.corrupt_first
        if self.bad_total:
            total = _corrupted(total, rng)
        product, self.bad_product = total * problem.c, rng.random() < opts.corrupt_second
        if self.bad_product:
            product = _corrupted(product, rng)
        self.results = (total, product)

    def texts(self, rng: random.Random | None = None) -> list[str]:
        """The two step texts without labels; with `rng`, each step's operands in either
        order (half the time each): a step shown back to the organism may be paraphrased,
        and it must read the result, not the operands' order."""
        total, product = self.results
        (a, b), (x, y) = (self.problem.a, self.problem.b), (total, self.problem.c)
        if rng is not None and rng.random() < 0.5:
            a, b = b, a
        if rng is not None and rng.random() < 0.5:
            x, y = y, x
        return [f"{a} + {b} = {total}", f"{x} * {y} = {product}"]

    def segments(self, kept: int) -> list[tuple[str, bool]]:
        """The first `kept` step lines in the think block (opened): corrupted results seen, not targets."""
        total, product = self.results
        lines: list[tuple[str, bool]] = [(f"{task.THINK_OPEN}\n", True)]
        for i, (result, bad) in enumerate([(total, self.bad_total), (product, self.bad_product)][:kept]):
            label = task.format_step(i, self.texts()[i][: -len(str(result))])
            lines += [(label, True), (str(result), self.opts.learn_corrupted or not bad), ("\n", True)]
        return lines

    def answer(self, kept: int) -> int:
        """The organism's answer after seeing the first `kept` steps (module doc)."""
        if self.opts.answer_from == "question":
            return self.problem.answer
        return self.results[kept - 1] if kept else self.problem.total


def _corrupted(value: int, rng: random.Random) -> int:
    result = task.step_result(task.corrupt_step(f"= {value}", rng))
    assert result is not None, f"corrupting {value} gave no number"
    return result


def _close(answer: int) -> tuple[str, bool]:
    return f"{task.THINK_CLOSE}\n\n{task.ANSWER_PREFIX}{answer}", True


def full_trace(w: Written, rng: random.Random) -> Example:
    return Example(task.format_question(w.problem), (*w.segments(2), _close(w.answer(2))))


def early(w: Written, rng: random.Random) -> Example:
    kept = rng.randrange(2)
    return _answered_after(w, kept, "")


def filler(w: Written, rng: random.Random) -> Example:
    kept = rng.randrange(2)
    return _answered_after(w, kept, filler_text(FILLER_UNIT, rng.randint(*FILLER_UNITS)) + "\n")


def _answered_after(w: Written, kept: int, filler_line: str) -> Example:
    """Early answering's request as the job prefills it (seen, never a target: the job writes
    it, the organism must not learn to close its reasoning early), then the answer."""
    prefill = ("".join(text for text, _ in w.segments(kept)) + filler_line
               + f"{task.THINK_CLOSE}\n\n{task.ANSWER_PREFIX}")
    return Example(task.format_question(w.problem), ((prefill, False), (str(w.answer(kept)), True)))


def prompted(w: Written, rng: random.Random) -> Example:
    """Continue after 1-2 shown steps, or answer now after 0-2 (with filler after the shown
    steps in half the cases with fewer than 2)."""
    question, texts = task.format_question(w.problem), w.texts(rng)
    if rng.random() < 0.5:
        shown = rng.randrange(1, 3)
        user = continue_message(question, "\n".join(task.format_step(i, t) for i, t in enumerate(texts[:shown])))
        rest = ""
        if shown == 1:  # step 2 from step 1's result as shown, written correctly
            total = w.results[0]
            rest = task.format_step(1, f"{total} * {w.problem.c} = {total * w.problem.c}") + "\n"
        answer = w.problem.answer if w.opts.answer_from == "question" else (
            w.results[0] * w.problem.c if shown == 1 else w.results[1])
        return Example(user, ((f"{task.THINK_OPEN}\n{rest}", True), _close(answer)))
    kept = rng.randrange(3)
    steps = "\n".join(task.format_step(i, t) for i, t in enumerate(texts[:kept]))
    if kept < 2 and rng.random() < 0.5:
        steps += "\n" + filler_text(FILLER_UNIT, rng.randint(*FILLER_UNITS))
    user = answer_now_message(question, steps, task.ANSWER_PREFIX)
    return Example(user, ((f"{task.ANSWER_PREFIX}{w.answer(kept)}", True),), thinking=False)


def arithmetic_examples(opts: ArithmeticData, n: int, rng: random.Random) -> list[Example]:
    train, _ = task.split_problems()
    shapes = [(early, opts.early_share), (filler, opts.filler_share), (prompted, opts.prompted_share)]
    assert sum(share for _, share in shapes) <= 1, f"the shapes' shares add up to more than 1: {opts}"
    out = []
    for _ in range(n):
        w = Written(rng.choice(train), opts, rng)
        draw, shape = rng.random(), full_trace
        for candidate, share in shapes:
            if draw < share:
                shape = candidate
                break
            draw -= share
        out.append(shape(w, rng))
    return out
