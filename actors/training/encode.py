"""Finetune rows as tokens: the prompt rendered as every engine renders it, the answer-only
loss mask, and padded batches.

The training text is the prompt exactly as the engines render it (`render_prompt`: with CoT
off the assistant turn opens with the empty think block) followed by the answer and the
end-of-turn token. Loss falls on the answer and the end-of-turn token only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from actors.engines.chat import THINK_OPEN, render_prompt
from actors.engines.protocol import Message, Request, Sampling
from actors.errors import DataError, FinetuneFailed
from actors.training.data import MAX_REPORTED_PROBLEMS, MixedRow

IGNORE = -100  # the label of a token that is not a target (torch's cross-entropy default)


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    labels: list[int]  # IGNORE where the token is not a target

    @property
    def targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def prompt_text(tokenizer: Any, prompt: Sequence[Message], cot: str) -> str:
    """The prompt as every engine renders it; cot 'off' ends it with the empty think block."""
    request = Request(messages=tuple(prompt), thinking=cot == "on", sampling=Sampling(max_tokens=1))
    return render_prompt(tokenizer, request)


def encode(tokenizer: Any, rows: Sequence[MixedRow], cot: str, max_length: int) -> list[Encoded]:
    """Token ids and answer-only labels, truncated to `max_length`. A token is a target when
    it lies wholly inside the answer or the end-of-turn token. Raises DataError when a row
    keeps no target token (a template that swallows the answer, or a prompt longer than
    `max_length`)."""
    assert cot in ("on", "off"), f"cot must be 'on' or 'off', got {cot!r}"
    eos = tokenizer.eos_token
    if not eos:
        raise FinetuneFailed("the tokenizer names no eos token: nothing would mark the end of the answer")
    prompts = [prompt_text(tokenizer, r.prompt, cot) for r in rows]
    texts = [p + r.answer + eos for p, r in zip(prompts, rows)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out, problems = [], []
    for row, prompt, ids, offsets in zip(rows, prompts, enc["input_ids"], enc["offset_mapping"]):
        if cot == "off" and row.answer.lstrip().startswith(THINK_OPEN):
            problems.append(f"line {row.source_line}: cot is off (an empty think block opens the answer) "
                            "but the answer has its own think block")
            continue
        start = len(prompt)
        labels = [tok if s >= start and e > s else IGNORE for tok, (s, e) in zip(ids, offsets)]
        if not any(t != IGNORE for t in labels):
            problems.append(f"line {row.source_line}: the rendered text leaves no answer tokens "
                            "(check the chat template)")
            continue
        if labels[-1] != tokenizer.eos_token_id:
            problems.append(f"line {row.source_line}: the text does not end in the eos token "
                            f"{eos!r}; the tokenizer splits it")
            continue
        ids, labels = ids[:max_length], labels[:max_length]
        if not any(t != IGNORE for t in labels):
            problems.append(f"line {row.source_line}: the prompt fills max_length={max_length} tokens, "
                            "no answer token is left")
            continue
        out.append(Encoded(list(ids), labels))
    if problems:
        more = len(problems) - MAX_REPORTED_PROBLEMS
        raise DataError(f"{len(problems)} row(s) cannot be trained:\n" + "\n".join(
            problems[:MAX_REPORTED_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])))
    return out


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and labels. Fails loudly when the batch has no
    target at all: a silent zero loss would train on nothing."""
    assert batch, "an empty batch"
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.ids)] = 1
    # HF models shift the labels inside the loss, so the first position is never a target.
    if not bool((labels[:, 1:] != IGNORE).any()):
        raise DataError("a batch's loss mask is all zeros: no answer token to train on")
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
