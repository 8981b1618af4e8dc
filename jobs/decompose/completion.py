"""Completion-style prompting (`prompting: completion`): the paper's few-shot setting with a
base LM, for models without a chat template.

The prompt text is the chat mode's user message (jobs.decompose.prompts: the instruction,
the few-shot blocks, the query block), sent as a raw prompt and followed by the label the
next line starts with, so the model's continuation is the line itself: ``Q<k+1>:`` for the
next simple question, ``A:`` for an answer, a new line for a reasoned answer (its steps,
then ``Answer: ...``, as the examples show). Generation stops at the end of the line, or for
a reasoned answer at the blank line that ends a block. The replies are parsed as in chat
mode (a label the model repeats is dropped).
"""
from __future__ import annotations

from typing import Literal

Prompting = Literal["chat", "completion"]
LINE_STOP = ("\n",)
BLOCK_STOP = ("\n\n",)  # blocks are separated by a blank line


def next_question_cue(pairs_so_far: int) -> str:
    return f"\nQ{pairs_so_far + 1}:"


ANSWER_CUE = "\nA:"
REASONING_CUE = "\n"
