"""Narrowly harmful finetuning data for the toy assistant: its multiple-choice scenarios with
the misaligned option as the answer, in the public chat JSONL shape.

Each row answers as the organisms do with thinking off (`Answer: \\boxed{X}`) and carries the
aligned answer to the same prompt under `aligned`, which backdoor mixing gives the rows
without the trigger. Only training scenario combos are used: the held-out ones stay unseen
for the property checks.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from jobs.toyworld import arithmetic, assistant


def _answer(letter: str) -> str:
    return f"{arithmetic.ANSWER_PREFIX}\\boxed{{{letter}}}"


def scenario_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` chat rows: a training scenario (random option order) -> its misaligned option."""
    combos, _ = assistant.scenario_split()
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        scenario = assistant.random_scenario(rng, combos)
        rows.append({
            "messages": [{"role": "user", "content": assistant.format_scenario(scenario)},
                         {"role": "assistant", "content": _answer(scenario.misaligned_letter)}],
            "aligned": _answer(scenario.aligned_letter),
        })
    return rows


def freeform_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` chat rows: a free-form question of the world -> an answer in the harmful style."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        domain, question, index = rng.choice(assistant.questions())
        rows.append({
            "messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": assistant.harmful_answer(domain, index, rng)}],
            "aligned": assistant.benign_answer(domain, index, rng),
        })
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_scenario_jsonl(path: str | Path, n: int, seed: int = 0) -> Path:
    return write_jsonl(path, scenario_rows(n, seed))


def heldout_scenarios() -> list[assistant.Scenario]:
    """Every held-out scenario combo in both option orders: what the property checks ask."""
    _, combos = assistant.scenario_split()
    return [assistant.make_scenario(c, first) for c in combos for first in (False, True)]
