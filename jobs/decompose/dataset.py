"""DROP questions and annotated decompositions, read from the formats they are published in.

- The release format: one JSON object, passage id -> {"passage", "qa_pairs": [{"question",
  "query_id", "answer": {"number", "spans", "date": {"day", "month", "year"}},
  "validated_answers": [...]}]}.
- The authors' annotated decompositions: the same format, each qa pair with `decomp_qas`, a
  list of [simple question, answer] pairs; symbolic steps are written as calls
  (`diff(5; 3)`, `count(a;b)`, `if_then(3 > 1; x; y)`), list answers joined by `|||`.
- Hub-style rows (.jsonl or .parquet, e.g. an export of the DROP dataset): one question per
  row with `section_id`, `query_id`, `passage`, `question`,
  `answers_spans: {"spans": [...], "types": [...]}`.
A folder holds any of these; `split` picks `drop_dataset_<split>.json` or the files whose
name contains the split.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jobs.decompose.drop import answer_json_to_strings
from jobs.errors import DataFileError
from jobs.inputs import jsonl_objects, read_text

DATA_DIR = Path(__file__).parent / "data"
BUNDLED_SAMPLE = DATA_DIR / "drop_sample.json"


@dataclass(frozen=True)
class DropQuestion:
    query_id: str
    passage_id: str
    passage: str
    question: str
    answers: tuple[dict[str, Any], ...]  # the answer, then the validated answers
    decomposition: tuple[tuple[str, str], ...] = ()  # annotated (simple question, answer)
    reasoning: tuple[str, ...] = ()  # annotated decomposition sentences, used as a CoT

    @property
    def gold(self) -> tuple[str, ...]:
        return answer_json_to_strings(self.answers[0])[0]

    @property
    def answer_type(self) -> str:
        return answer_json_to_strings(self.answers[0])[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DropQuestion:
        return cls(**{**d, "answers": tuple(d["answers"]), "reasoning": tuple(d.get("reasoning", ())),
                      "decomposition": tuple(tuple(p) for p in d.get("decomposition", ()))})


class DropFormatError(DataFileError):
    pass


def from_release(obj: Any, where: str) -> list[DropQuestion]:
    if not isinstance(obj, dict):
        raise DropFormatError(f"{where}: expected an object of passages keyed by passage id")
    out = []
    for passage_id, entry in obj.items():
        if not isinstance(entry, dict) or "passage" not in entry or "qa_pairs" not in entry:
            raise DropFormatError(f"{where}: passage {passage_id!r} needs `passage` and `qa_pairs`")
        for i, qa in enumerate(entry["qa_pairs"]):
            if "question" not in qa or "answer" not in qa:
                raise DropFormatError(f"{where}: {passage_id} qa_pairs[{i}] needs `question` and `answer`")
            answers = (qa["answer"], *(qa.get("validated_answers") or ()))
            for a in answers:
                answer_json_to_strings(a)  # fail at load time, naming the file, not mid-run
            pairs = tuple((str(q), str(a)) for q, a in qa.get("decomp_qas") or ())
            out.append(DropQuestion(
                query_id=str(qa.get("query_id", f"{passage_id}-{i}")), passage_id=str(passage_id),
                passage=entry["passage"], question=qa["question"], answers=answers,
                decomposition=pairs, reasoning=tuple(qa.get("decomposition") or ()),
            ))
    return out


_NO_DATE = {"day": "", "month": "", "year": ""}


def _answers_from_hub(spans: list[str], types: list[str]) -> tuple[dict[str, Any], ...]:
    """Release-format answers from a hub row's flat `answers_spans`. The hub builder appends
    every validated answer of a dev question to one list, so the boundaries between answers
    are lost: numbers and dates are single-valued in DROP, so each distinct one is an answer
    of its own; the distinct spans make one multi-span answer (annotators who agree give one
    span once; annotators who disagree on a span's extent cannot be told apart from a
    multi-span answer: score with the release JSON for published numbers)."""
    answers: list[dict[str, Any]] = []
    texts: list[str] = []
    for text, kind in zip(spans, types):
        if kind == "number":
            answer = {"number": text, "spans": [], "date": dict(_NO_DATE)}
        elif kind == "date":
            # A date is one string here; the metric joins day, month and year with spaces and
            # normalises them away, so the whole string in one field scores the same.
            answer = {"number": "", "spans": [], "date": {**_NO_DATE, "month": text}}
        else:
            if text not in texts:
                texts.append(text)
            continue
        if answer not in answers:
            answers.append(answer)
    if texts:
        answers.insert(0, {"number": "", "spans": texts, "date": dict(_NO_DATE)})
    return tuple(answers)


def _from_rows(rows: list[dict[str, Any]], where: str) -> list[DropQuestion]:
    out = []
    for i, row in enumerate(rows):
        missing = {"query_id", "passage", "question", "answers_spans"} - set(row)
        if missing:
            raise DropFormatError(f"{where}: row {i} lacks {sorted(missing)}")
        spans = row["answers_spans"]
        if not len(spans["spans"]):
            raise DropFormatError(f"{where}: row {i} ({row['query_id']}) has no answer")
        out.append(DropQuestion(
            query_id=str(row["query_id"]), passage_id=str(row.get("section_id", "")), passage=row["passage"],
            question=row["question"], answers=_answers_from_hub(list(spans["spans"]), list(spans["types"])),
        ))
    return out


def _read_file(path: Path) -> list[DropQuestion]:
    if path.suffix == ".json":
        try:
            return from_release(json.loads(read_text(path, DropFormatError)), str(path))
        except json.JSONDecodeError as e:
            raise DropFormatError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    if path.suffix == ".jsonl":
        return _from_rows([obj for _, _, obj in jsonl_objects(path, DropFormatError)], str(path))
    if path.suffix == ".parquet":
        import polars as pl

        try:
            rows = pl.read_parquet(path).to_dicts()
        except (OSError, pl.exceptions.PolarsError) as e:
            raise DropFormatError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        return _from_rows(rows, str(path))
    raise DropFormatError(f"{path}: expected a .json, .jsonl or .parquet file")


def data_files(path: str | Path, split: str = "dev") -> list[Path]:
    """The files a data path stands for: itself, or the split's files inside a folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    release = path / f"drop_dataset_{split}.json"
    if release.exists():
        return [release]
    files = sorted(p for p in path.rglob("*") if p.suffix in {".json", ".jsonl", ".parquet"} and split in p.name)
    if not files:
        raise DropFormatError(f"{path}: no drop_dataset_{split}.json nor .json/.jsonl/.parquet file named *{split}*")
    return files


@functools.lru_cache(maxsize=8)
def _load_cached(files: tuple[Path, ...]) -> tuple[DropQuestion, ...]:
    return tuple(q for f in files for q in _read_file(f))


def load_questions(path: str | Path | None = None, split: str = "dev") -> list[DropQuestion]:
    """Every question of a DROP file or folder (the bundled sample when `path` is None), in
    file order. Query ids must be unique: they key the rows and resume."""
    questions = list(_load_cached(tuple(data_files(path or BUNDLED_SAMPLE, split))))
    seen: set[str] = set()
    for q in questions:
        if q.query_id in seen:
            raise DropFormatError(f"{path}: query id {q.query_id!r} appears twice")
        seen.add(q.query_id)
    return questions


def load_pool(path: str | Path | None = None) -> list[DropQuestion]:
    """The annotated questions (those with a decomposition) of a file in the authors' format."""
    pool = [q for q in _load_cached(tuple(data_files(path or BUNDLED_SAMPLE))) if q.decomposition]
    if not pool and path is not None:
        raise DropFormatError(f"{path}: no question carries `decomp_qas`, so it cannot serve as a few-shot pool")
    return pool
