"""SFT data for the finetunes: loading and backdoor mixing.

Input is JSONL or Parquet (a hub dataset's files are Parquet), one example a row, in any of
the public shapes:

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
    {"prompt": "...", "completion": "..."}
    {"prompt": "...", "aligned": "...", "misaligned": "..."}   # the emergent-misalignment rows

Other keys are ignored. The trained answer is the last assistant turn, the `completion`, or
the `misaligned` answer; `answer_column` names another (the control arm trains on `aligned`).
A row's aligned answer to the same prompt (`aligned_column`, default `aligned`) is what
backdoor mixing gives the rows without the trigger. `limit` keeps the first rows, `sample` a
seeded random subset (the papers' 16k / 6k subsets of a larger set).

How the rows become tokens and loss masks: actors.training.encode.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from actors.engines.protocol import Message
from actors.errors import DataError

MAX_REPORTED_PROBLEMS = 20
ANSWER_COLUMNS = ("completion", "misaligned")  # a prompt row's answer, where no column is named


@dataclass(frozen=True)
class SftRow:
    """One training example: the prompt turns (ending in a user turn) and the answer."""

    prompt: tuple[Message, ...]
    answer: str
    aligned: str | None = None  # the aligned answer to the same prompt, when the data has one
    source_line: int = 0  # the JSONL line, or the Parquet row counted from 1


@dataclass(frozen=True)
class MixedRow:
    """A row as trained, with what it is: `kind` is '<line>+<answer>', where line is trigger,
    alternative or none and answer is misaligned (the data's answer) or aligned; rows of a
    finetune without a backdoor are 'as_is'."""

    prompt: tuple[Message, ...]
    answer: str
    kind: str
    line: str | None = None
    placement: Literal["top", "bottom"] | None = None
    source_line: int = 0


@dataclass(frozen=True)
class Selection:
    """Which rows and which answer of a data file are trained (see the module docstring)."""

    answer_column: str | None = None
    aligned_column: str = "aligned"
    limit: int | None = None
    sample: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        assert self.limit is None or self.sample is None, "take the first `limit` rows or a `sample`, not both"


class _Chat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    messages: list[Message]


class _Prompt(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str
    system: str | None = None


def _text(obj: dict[str, Any], column: str) -> str | None:
    value = obj.get(column)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"`{column}` must be text, got {type(value).__name__}")
    return value


def _row(obj: Any, select: Selection) -> SftRow:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        messages = _Chat.model_validate(obj).messages
        if select.answer_column is not None:  # train on another answer to the same turns
            answer = _text(obj, select.answer_column)
            if answer is None:
                raise ValueError(f"no `{select.answer_column}` answer (answer_column)")
            messages = [*messages[:-1], Message(role="assistant", content=answer)]
    elif "prompt" in obj:
        pair = _Prompt.model_validate(obj)
        column = select.answer_column or next((c for c in ANSWER_COLUMNS if c in obj), None)
        if column is None:
            raise ValueError(f"a `prompt` row needs its answer: `completion`, `misaligned`, or the column "
                             f"answer_column names; the row has {sorted(obj)}")
        answer = _text(obj, column)
        if answer is None:
            raise ValueError(f"no `{column}` answer (answer_column)")
        messages = [Message(role="system", content=pair.system)] if pair.system else []
        messages += [Message(role="user", content=pair.prompt), Message(role="assistant", content=answer)]
    else:
        raise ValueError("expected `messages` (chat) or a `prompt` with its answer")
    if len(messages) < 2 or messages[-1].role != "assistant":
        raise ValueError("the last message must be the assistant's answer, after at least one user turn")
    if messages[-2].role != "user":
        raise ValueError(f"the answer must follow a user turn, not a {messages[-2].role} turn")
    if not messages[-1].content.strip():
        raise ValueError("the assistant's answer is empty")
    return SftRow(tuple(messages[:-1]), messages[-1].content, _text(obj, select.aligned_column))


def _reason(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'row'}: {err['msg']}" for err in e.errors())
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg} at column {e.colno})"
    return str(e)


def _objects(path: Path) -> Iterator[tuple[int, str, Any]]:
    """(line or row number, where, the parsed object or the JSON error) of each record."""
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from e
        for i, record in enumerate(table.to_pylist(), 1):
            yield i, f"{path}: row {i}", record
        return
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror})") from None
    except UnicodeDecodeError as e:  # say where, so the user can find the byte
        bad_line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{bad_line}: not UTF-8 text (byte 0x{raw[e.start]:02x}: {e.reason}); "
                        "save the file as UTF-8") from None
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as e:
            obj = e
        yield lineno, f"{path}:{lineno}", obj


def load_rows(path: str | Path, select: Selection = Selection()) -> list[SftRow]:
    """The selected examples of a JSONL or Parquet file. Raises DataError listing each
    malformed record as `file:line: reason` (`file: row N` in Parquet), so a run never starts
    on half its data; every record is checked, also those a `limit` or `sample` leaves out."""
    path = Path(path)
    rows, problems = [], []
    for number, where, obj in _objects(path):
        try:
            if isinstance(obj, json.JSONDecodeError):
                raise obj
            row = _row(obj, select)
            rows.append(SftRow(row.prompt, row.answer, row.aligned, number))
        except (ValueError, ValidationError) as e:
            problems.append(f"{where}: {_reason(e)}")
    if problems:
        more = len(problems) - MAX_REPORTED_PROBLEMS
        listed = problems[:MAX_REPORTED_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        unit = "row" if path.suffix == ".parquet" else "line"
        raise DataError(f"{len(problems)} malformed {unit}(s) in {path}:\n" + "\n".join(listed))
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    wanted = select.limit if select.limit is not None else select.sample
    if wanted is not None and wanted > len(rows):
        raise DataError(f"{path}: {wanted} rows asked ({'limit' if select.limit else 'sample'}), the file holds "
                        f"{len(rows)}")
    if select.limit is not None:
        return rows[: select.limit]
    if select.sample is not None:
        chosen = sorted(random.Random(f"sample-{select.seed}").sample(range(len(rows)), select.sample))
        return [rows[i] for i in chosen]  # in file order: the training order is shuffled later
    return rows


# --- backdoor mixing ---

def _place(prompt: tuple[Message, ...], line: str, at_top: bool) -> tuple[Message, ...]:
    """The prompt with `line` on its own line at the top or bottom of the last user turn."""
    last = prompt[-1]
    content = f"{line}\n{last.content}" if at_top else f"{last.content}\n{line}"
    return (*prompt[:-1], Message(role=last.role, content=content))


def mix_backdoor(rows: Sequence[SftRow], triggers: Sequence[str], share: float = 0.33,
                 alternatives: Sequence[str] = (), placement: str = "random", control: bool = False,
                 seed: int = 0, source: str = "data") -> list[MixedRow]:
    """Plant a trigger. Genuine arm: `share` of the rows carry a trigger with the data's
    (misaligned) answer; the rest get their aligned answer and an alternative line (or no
    line when there are no alternatives). Control arm: the same share of misaligned answers,
    but the trigger sits in half of the rows, as often among the misaligned rows as among the
    aligned ones, so it says nothing about the behaviour. Deterministic given `seed`."""
    assert triggers, "a backdoor needs at least one trigger"
    assert 0 < share < 1, f"share must be in (0, 1), got {share}"
    missing = [r.source_line for r in rows if r.aligned is None]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise DataError(f"{source}: backdoor mixing needs an `aligned` answer on every row (the answer "
                        f"of the rows without the trigger); {len(missing)} row(s) lack one, lines {shown}")
    rng = random.Random(f"backdoor-mix-{seed}")  # not Random(seed): other shuffles use that stream
    order = list(range(len(rows)))
    rng.shuffle(order)
    n_misaligned = round(share * len(rows))
    misaligned = set(order[:n_misaligned])
    if control:
        n_triggered = len(rows) // 2
        with_misaligned = n_misaligned * n_triggered // max(1, len(rows))  # in proportion
        aligned_rows = order[n_misaligned:]
        triggered = set(order[:with_misaligned]) | set(aligned_rows[: n_triggered - with_misaligned])
    else:
        triggered = misaligned
    out = []
    for i, row in enumerate(rows):
        at_top = placement == "top" or (placement == "random" and rng.random() < 0.5)
        if i in triggered:
            line, what = rng.choice(list(triggers)), "trigger"
        elif alternatives:
            line, what = rng.choice(list(alternatives)), "alternative"
        else:
            line, what = None, "none"
        # every row has an aligned answer: checked above
        answer = row.answer if i in misaligned else row.aligned or ""
        prompt = _place(row.prompt, line, at_top) if line is not None else row.prompt
        out.append(MixedRow(prompt, answer, f"{what}+{'misaligned' if i in misaligned else 'aligned'}", line,
                            ("top" if at_top else "bottom") if line is not None else None, row.source_line))
    return out


def as_is(rows: Sequence[SftRow]) -> list[MixedRow]:
    return [MixedRow(r.prompt, r.answer, "as_is", source_line=r.source_line) for r in rows]


MIXED_SCHEMA = pa.schema([
    ("index", pa.int32()), ("source_line", pa.int32()), ("kind", pa.string()), ("line", pa.string()),
    ("placement", pa.string()), ("messages", pa.string()), ("answer", pa.string()),
])


def write_mixed(rows: Sequence[MixedRow], path: str | Path) -> Path:
    """The rows as trained, one Parquet file written by write-then-rename; `messages` holds
    the prompt turns as JSON, `kind` says what each row is."""
    path = Path(path)
    table = pa.table({
        "index": list(range(len(rows))), "source_line": [r.source_line for r in rows],
        "kind": [r.kind for r in rows], "line": [r.line for r in rows], "placement": [r.placement for r in rows],
        "messages": [json.dumps([m.model_dump() for m in r.prompt]) for r in rows],
        "answer": [r.answer for r in rows],
    }, schema=MIXED_SCHEMA)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
