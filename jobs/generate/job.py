"""Batch generation: prompts through a model with the sweep's sampling parameters.

Useful on its own (sample a model on a prompt set at scale) and the plumbing's first job.
Prompts come from a JSONL file (`{"id": ..., "prompt": "..."}` or `{"id": ..., "messages":
[...]}` per line) or inline strings.

Stages: generation only. No model judges the completions, and the summary has no parameter
of its own.
"""
from __future__ import annotations

import json
import re
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actors.engines.chat import THINK_OPEN, split_thinking
from actors.engines.protocol import Message, Request, Sampling
from jobs.errors import DataFileError
from jobs.inputs import DataPath, FileState, file_digest, jsonl_objects, per_file_state, row_problems
from jobs.job import SUBJECT, Job, JobContext, JobParams, RoleNeeds, Sample
from jobs.measures import Measure


class GenerateParams(JobParams):
    prompts: DataPath | list[str] = Field(description="a JSONL file or a list of inline prompts")
    max_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, gt=0, description="samples per prompt")
    seed: int = 0
    thinking: bool = True
    prefill: str = ""
    system: str | None = None
    limit: int | None = Field(None, gt=0, description="use only the first `limit` prompts")


class PromptFileError(DataFileError):
    pass


class PromptLine(BaseModel):
    """One line of a prompts file: a `prompt`, or the chat `messages` (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")
    id: str | int | None = None
    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1)


def _prompt(where: str, lineno: int, obj: object) -> tuple[str, list[dict]]:
    """(prompt id, chat messages) of one parsed line; a malformed one names file and line."""
    if not isinstance(obj, dict) or ("prompt" in obj) == ("messages" in obj):
        raise PromptFileError(f"{where}: expected an object with `prompt` or `messages`")
    try:
        line = PromptLine.model_validate(obj)
    except ValidationError as e:
        raise PromptFileError(f"{where}: {row_problems(e)}") from None
    if line.messages is None and line.prompt is None:
        raise PromptFileError(f"{where}: prompt: expected a string, got null")
    msgs: list[dict] = ([m.model_dump() for m in line.messages] if line.messages is not None
                        else [{"role": "user", "content": line.prompt}])
    return (str(line.id) if line.id is not None else f"p{lineno}"), msgs


def _prompt_id(where: str, lineno: int, obj: object) -> str:
    """The id `_prompt` gives a line, without building its messages where the line is plainly
    valid (`{"id": ..., "prompt": "..."}`: the common shape of a big file)."""
    if type(obj) is dict and "messages" not in obj and type(obj.get("prompt")) is str:
        pid = obj.get("id")
        if pid is None or type(pid) in (str, int):
            return str(pid) if pid is not None else f"p{lineno}"
    return _prompt(where, lineno, obj)[0]


def read_prompts(params: GenerateParams) -> list[tuple[str, list[dict]]]:
    """(prompt id, chat messages) per prompt; a malformed line names file and line."""
    if isinstance(params.prompts, list):
        items = [(f"p{i}", [{"role": "user", "content": p}]) for i, p in enumerate(params.prompts)]
    else:
        items = read_prompt_file(params.prompts)
    return items[: params.limit] if params.limit else items


def read_prompt_file(path: str) -> list[tuple[str, list[dict]]]:
    """(prompt id, chat messages) per line of a prompts file; a malformed line names file and line."""
    items = []
    first_line: dict[str, int] = {}
    for where, lineno, obj in jsonl_objects(path, PromptFileError):
        pid, msgs = _prompt(where, lineno, obj)
        if pid in first_line:
            raise PromptFileError(f"{where}: id {pid!r} is already used on line {first_line[pid]}; "
                                  "ids name the rows and must be unique")
        first_line[pid] = lineno
        items.append((pid, msgs))
    return items


@dataclass(frozen=True)
class PromptIndex:
    """A prompts file read once: each prompt's id and where its line starts, in file order, so
    the ids of a sweep's every cell cost one read, and a shard reads only its own lines."""

    ids: tuple[str, ...]
    offsets: array[int]  # the byte offset of each prompt's line
    lines: array[int]  # its line number (1-based), for messages


_INDEXES: dict[str, tuple[FileState, PromptIndex]] = {}


def prompt_index(path: str) -> PromptIndex:
    """The file's PromptIndex, read once per process while the file is unchanged. A file that
    `read_prompts` refuses is refused with its message."""
    return per_file_state(_INDEXES, path, lambda: _plain_index(path) or _read_index(path))


# A JSON string (escapes as JSON allows them; no raw control characters), an id with no escape
# (its bytes are its text) or a plain integer (its text is `str()` of it; not -0), whitespace.
# Possessive (`++`, `*+`): a string is matched in runs, never backtracked into.
_STRING = rb'"(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+"'
_PLAIN_LINE = re.compile(rb'(?m)^[ \t\r]*\{[ \t\r]*"id"[ \t\r]*:[ \t\r]*(?:"([^"\\\x00-\x1f]*+)"|(0|-?[1-9][0-9]*+))'
                         rb'[ \t\r]*,[ \t\r]*"prompt"[ \t\r]*:[ \t\r]*' + _STRING + rb'[ \t\r]*\}[ \t\r]*$')


_BLOCK = 1 << 25  # bytes read at a time: a file of 10M prompts is not held whole beside its index


def _plain_index(path: str) -> PromptIndex | None:
    """The index of a file whose every line is blank or exactly `{"id": ..., "prompt": "..."}`
    (what a program writes), found by one regular expression over each block of lines, which
    checks each line as JSON would; None for any other file (`_read_index` reads it)."""
    index = PromptIndex(ids=(), offsets=array("q"), lines=array("q"))
    ids: list[str] = []
    offset, lineno, rest = 0, 1, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            data = rest + block
            cut = data.rfind(b"\n") + 1 if block else len(data)  # whole lines; the last at the end of the file
            chunk, rest = data[:cut], data[cut:]
            if chunk and not _plain_lines(chunk, offset, lineno, ids, index):
                return None
            offset, lineno = offset + len(chunk), lineno + chunk.count(b"\n")
            if not block:
                break
    if len(set(ids)) != len(ids):
        return None  # a repeated id: the careful reader says which, and where
    return PromptIndex(ids=tuple(ids), offsets=index.offsets, lines=index.lines)


def _plain_lines(chunk: bytes, offset: int, lineno: int, ids: list[str], index: PromptIndex) -> bool:
    """Add the prompts of `chunk` (whole lines, starting at byte `offset` and line `lineno` of
    the file) to `ids` and `index`; False when a line is not blank or plain."""
    try:
        chunk.decode("utf-8")  # cut at line ends, never inside a character
    except UnicodeDecodeError:
        return False
    found = _PLAIN_LINE.findall(chunk)
    n_lines = chunk.count(b"\n") + (not chunk.endswith(b"\n"))
    if len(found) == n_lines:  # every line plain (at most one match a line): no position to look for
        ids += [text.decode() if text else number.decode() for text, number in found]
        starts = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == ord("\n"))[: n_lines - 1] + 1
        index.offsets.frombytes((np.concatenate([[0], starts]) + offset).astype(np.int64).tobytes())
        index.lines.extend(range(lineno, lineno + n_lines))
        return True
    end = 0
    for m in _PLAIN_LINE.finditer(chunk):
        between = chunk[end : m.start()]  # blank lines and line ends (bytes.strip: ASCII whitespace), or not plain
        if between.strip():
            return False
        lineno += between.count(b"\n")
        end = m.end()
        text, number = m.group(1, 2)
        ids.append(text.decode() if text is not None else number.decode())
        index.offsets.append(offset + m.start())
        index.lines.append(lineno)
    return not chunk[end:].strip()


def _read_index(path: str) -> PromptIndex:
    """One pass over the file's lines. The common line (`{"id": ..., "prompt": "..."}`) is
    checked inline, a loop over a million lines being the point; any other goes through
    `_prompt`, and anything wrong is said by `read_prompt_file`, the reader every other path
    uses, in its words."""
    ids: list[str] = []
    offsets, lines = array("q"), array("q")
    loads, add_id, add_offset, add_line = json.loads, ids.append, offsets.append, lines.append
    offset = lineno = 0
    try:
        with open(path, "rb") as f:
            for raw in f:  # binary lines end at b"\n" only, as jsonl_objects splits them
                lineno += 1
                text = raw.decode("utf-8")
                if text and not text.isspace():  # `not text.strip()`, without a copy
                    obj = loads(text)
                    if type(obj) is dict and "messages" not in obj and type(obj.get("prompt")) is str \
                            and type(pid := obj.get("id")) in (str, int):
                        add_id(str(pid))
                    else:
                        add_id(_prompt_id(f"{path}:{lineno}", lineno, obj))
                    add_offset(offset)
                    add_line(lineno)
                offset += len(raw)
        if len(set(ids)) != len(ids):
            raise PromptFileError("a repeated id")  # `read_prompt_file` names it and its lines
    except (UnicodeDecodeError, json.JSONDecodeError, PromptFileError):
        read_prompt_file(path)
        raise
    return PromptIndex(ids=tuple(ids), offsets=offsets, lines=lines)


def prompts_at(path: str, start: int, stop: int) -> list[tuple[str, list[dict]]]:
    """(prompt id, chat messages) of the file's prompts `start` to `stop` (in file order): one
    read of their lines."""
    index = prompt_index(path)
    stop = min(stop, len(index.ids))
    if start >= stop:
        return []
    with open(path, "rb") as f:
        f.seek(index.offsets[start])
        raw = f.read(index.offsets[stop] - index.offsets[start]) if stop < len(index.ids) else f.read()
    out: list[tuple[str, list[dict]]] = []
    for text in raw.decode("utf-8").split("\n"):
        if text.strip() and len(out) < stop - start:
            lineno = index.lines[start + len(out)]
            out.append(_prompt(f"{path}:{lineno}", lineno, json.loads(text)))
    return out


class GenerateJob(Job[GenerateParams]):
    kind = "generate"
    headline = ('completions', 'mean_completion_tokens', 'finished_by_stop')
    versions: ClassVar[Mapping[str, str]] = {"generate": "1"}
    Params = GenerateParams
    schema = pa.schema([
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("cot", pa.string()),
        ("answer", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()),
    ])

    def samples(self, params: GenerateParams) -> Sequence[Sample]:
        return [Sample(id=pid, data={"messages": msgs}) for pid, msgs in read_prompts(params)]

    def sample_ids(self, params: GenerateParams) -> Sequence[str]:
        if isinstance(params.prompts, list):
            return super().sample_ids(params)
        ids = prompt_index(params.prompts).ids  # shared by every cell that reads the file
        return ids[: params.limit] if params.limit and params.limit < len(ids) else ids

    def samples_at(self, params: GenerateParams, start: int, stop: int) -> Sequence[Sample]:
        if isinstance(params.prompts, list):
            return super().samples_at(params, start, stop)
        stop = min(stop, params.limit or stop)
        return [Sample(id=pid, data={"messages": msgs}) for pid, msgs in prompts_at(params.prompts, start, stop)]

    def needs(self, params: GenerateParams) -> dict[str, RoleNeeds]:
        return {SUBJECT: RoleNeeds(thinks=THINK_OPEN in params.prefill, prefill=bool(params.prefill),
                                   greedy=params.temperature == 0)}

    def data_digest(self, params: GenerateParams) -> str:
        return "" if isinstance(params.prompts, list) else file_digest(params.prompts)

    async def run(self, sample: Sample, params: GenerateParams, ctx: JobContext) -> list[dict]:
        msgs = sample.data["messages"]
        if params.system and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": params.system}, *msgs]
        request = Request(
            messages=tuple(Message(**m) for m in msgs), prefill=params.prefill, thinking=params.thinking,
            sampling=Sampling(max_tokens=params.max_tokens, n=params.n, temperature=params.temperature,
                              top_p=params.top_p, seed=params.seed),
        )
        completions = await ctx.model().generate(request)
        rows = []
        for i, c in enumerate(completions):
            cot, answer = split_thinking(params.prefill + c.text)
            rows.append({
                "prompt_id": sample.id, "sample_index": i, "prompt": msgs[-1]["content"],
                "completion": c.text, "cot": cot, "answer": answer, "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
            })
        return rows

    def measures(self, params: GenerateParams) -> tuple[Measure, ...]:
        done = pl.col("finish_reason").is_not_null()
        return (
            Measure("completion_tokens", pl.col("completion_tokens"), unit="prompt_id", where=done,
                    description="tokens per completion"),
            Measure("finished_by_stop", pl.col("finish_reason") == "stop", unit="prompt_id", where=done, rate=True,
                    description="completions that ended on their own, not at the token budget"),
        )

    def summarize(self, rows: pl.DataFrame, params: GenerateParams) -> dict[str, float]:
        ok = rows.filter(pl.col("finish_reason").is_not_null())
        if ok.height == 0:
            return {"completions": 0.0}
        return {
            "completions": float(ok.height),
            "mean_completion_tokens": float(ok["completion_tokens"].mean()),
            "finished_by_stop": float((ok["finish_reason"] == "stop").mean()),
        }
