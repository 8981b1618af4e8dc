"""Finetune data for trained components: the decompose job's QD and QA calls as chat rows.

Successive prompting trains its decomposer and its simple-question answerer apart. An
annotated question (the authors' format: `decomp_qas`, as the bundled pools, DROP
annotations and jobs.decompose.synthetic write it) yields, for the decomposer (`qd`), one row
per step and one for the stop: the prompt the job sends after k pairs (prompts.qd_prompt) and
the reply it parses, `Q<k+1>: <simple question>` (the stop sentence last); for the answerer
(`qa`), one row per simple question a model answers (symbolic steps are code's): the job's
QA prompt and the answer. Rows are `{"messages": [user, assistant], "call": "qd"|"qa",
"query_id": ...}`, the chat shape actors.training.data reads (extra keys are ignored there).
`shots` > 0 puts that many few-shot examples in each prompt, drawn at random from the
other questions of the same data, as the job would show them with `fewshot: random`.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from jobs.decompose import prompts
from jobs.decompose.dataset import DropQuestion
from jobs.decompose.fewshot import FewShotSelector
from jobs.decompose.symbolic import is_symbolic

Call = Literal["qd", "qa"]
CALLS: tuple[Call, ...] = ("qd", "qa")


def _row(call: Call, query_id: str, user: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "call": call, "query_id": query_id}


def qd_rows(question: DropQuestion, shots: Sequence[DropQuestion] = ()) -> list[dict[str, Any]]:
    """The decomposer's rows of one annotated question: each next step, then the stop."""
    pairs = question.decomposition
    out = []
    for k in range(len(pairs) + 1):
        target = pairs[k][0] if k < len(pairs) else prompts.STOP_SENTENCE
        user = prompts.qd_prompt(shots, question.passage, question.question, pairs[:k])
        out.append(_row("qd", question.query_id, user, f"Q{k + 1}: {target}"))
    return out


def finetune_rows(pool: Sequence[DropQuestion], calls: Iterable[Call] = CALLS, shots: int = 0,
                  seed: int = 0) -> list[dict[str, Any]]:
    """The rows of every annotated question of `pool`, question by question."""
    calls = set(calls)
    annotated = [q for q in pool if q.decomposition]
    simple = [(q.passage, sq, sa) for q in annotated for sq, sa in q.decomposition if not is_symbolic(sq)]
    simple_ids = [q.query_id for q in annotated for sq, _ in q.decomposition if not is_symbolic(sq)]
    complex_pick = FewShotSelector([q.query_id for q in annotated], [q.question for q in annotated], "random",
                                   shots, seed)
    simple_pick = FewShotSelector(simple_ids, [s[1] for s in simple], "random", shots, seed)
    rows: list[dict[str, Any]] = []
    for q in annotated:
        if "qd" in calls:
            rows += qd_rows(q, [annotated[i] for i in complex_pick.select(q.query_id, q.question)])
        if "qa" in calls:
            for sq, sa in q.decomposition:
                if not is_symbolic(sq):
                    chosen = [simple[i] for i in simple_pick.select(q.query_id, sq)]
                    rows.append(_row("qa", q.query_id, prompts.qa_prompt(chosen, q.passage, sq), sa))
    return rows


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows as JSONL, written to a temporary name and renamed, so a reader never sees half."""
    return write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would make the data unreadable to a cluster's other users
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
