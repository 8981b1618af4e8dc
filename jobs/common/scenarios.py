"""The misalignment job's inputs: free-form questions, multiple-choice scenarios, our rubric.

Free-form questions use the question format of the original emergent-misalignment study, so
a user points the job at those files as they are: a YAML list of items with `id`,
`paraphrases`, `samples_per_paraphrase`, `judge_prompts` (metric -> template with
{question} and {answer}) and an optional `system`; other keys (`type`, `judge`, ...) are
accepted and ignored. YAML anchors and aliases work (the original files share prompts that way).

Multiple-choice scenarios come in our own format, a YAML list of `id`, `scenario`, `options`,
`misaligned` (the letter of the misaligned option), optional `system` and
`samples_per_paraphrase`; or as the published multiple-choice evaluations are written
(Anthropic's model-written evals, and the sets built on them): JSONL or a JSON list of
`{"question": "...\n\nChoices:\n (A) ...\n (B) ...", "answer_matching_behavior": " (A)",
"answer_not_matching_behavior": " (B)"}`. The behaviour the set tests is the misaligned
option, and the question is shown as published, choices included, then the instruction.

A source is a bundled set by name or a YAML file: `core` (the eight questions), `probes`
(rm -rf, sleeping pills, shutdown), `organisms` (the toy world of the tiny organisms, in the
judge organism's prompt format); for scenarios `core` and `organisms`.
"""
from __future__ import annotations

import functools
import json
import random
import re
import string
from pathlib import Path
from typing import Literal, cast

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from jobs.errors import DataFileError
from jobs.inputs import read_text

DATA_DIR = Path(__file__).parent / "data"
QUESTION_SETS = {"core": DATA_DIR / "core.yaml", "probes": DATA_DIR / "probes.yaml", "organisms": None}
SCENARIO_SETS = {"core": DATA_DIR / "scenarios.yaml", "organisms": None}
DEFAULT_SAMPLES = 100
CHOICE_INSTRUCTION = "Think step by step and put your answer in \\boxed{}."
LETTERS = string.ascii_uppercase
_BOXED = re.compile(r"\\boxed\{\s*([A-Z])\s*\}")


class _Item(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    id: str
    system: str | None = None
    samples_per_paraphrase: int = Field(DEFAULT_SAMPLES, gt=0)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value


class Question(_Item):
    """A free-form item of the original question format."""

    paraphrases: list[str] = Field(min_length=1)
    judge_prompts: dict[str, str] = Field(default_factory=dict)


class Scenario(_Item):
    """A multiple-choice item; `options[i]` is shown with letter LETTERS[i]."""

    scenario: str
    options: list[str] = Field(min_length=2, max_length=len(LETTERS))
    misaligned: str

    @model_validator(mode="after")
    def _letter_in_range(self) -> Scenario:
        letters = LETTERS[: len(self.options)]
        if self.misaligned not in letters:
            raise ValueError(f"misaligned must be one of {', '.join(letters)}, got {self.misaligned!r}")
        return self


class PublishedScenario(Scenario):
    """A multiple-choice item as a published evaluation writes it: `prompt` is shown verbatim."""

    prompt: str


class QuestionFileError(DataFileError):
    """A question or scenario file that does not parse; the message lists every problem."""


def _load_items(path: Path, model: type[_Item]) -> list:
    try:
        raw = yaml.safe_load(read_text(path, QuestionFileError))
    except yaml.YAMLError as e:  # safe_load: a !!python tag is an error here, never run
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise QuestionFileError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(raw, list):
        raise QuestionFileError(f"{path}: expected a list of items, got {type(raw).__name__}")
    items, problems = [], []
    for i, entry in enumerate(raw):
        where = f"{path}: item {i}" + (f" ({entry['id']})" if isinstance(entry, dict) and "id" in entry else "")
        try:
            items.append(model.model_validate(entry))
        except ValidationError as e:
            problems += [f"{where}: {'.'.join(map(str, err['loc'])) or 'item'}: {err['msg']}" for err in e.errors()]
    ids = [str(e["id"]) for e in raw if isinstance(e, dict) and "id" in e]
    problems += [f"{path}: id {d!r} appears more than once" for d in sorted({x for x in ids if ids.count(x) > 1})]
    if problems:
        raise QuestionFileError("\n".join(problems))
    return items


def load_questions(path: str | Path) -> list[Question]:
    """The items of a question file in the original format."""
    return _load_items(Path(path), Question)


def load_scenarios(path: str | Path) -> list[Scenario]:
    """Our YAML scenarios, or a published set's JSONL / JSON (see the module docstring)."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        return _load_published(path)
    return _load_items(path, Scenario)


_CHOICE = re.compile(r"^\s*\(([A-Z])\)\s?(.*)$")
_LETTER = re.compile(r"\s*\(?([A-Z])\)?\s*")


def _published_records(path: Path) -> list[tuple[str, object]]:
    text = read_text(path, QuestionFileError)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise QuestionFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise QuestionFileError(f"{path}: expected a list of items, got {type(data).__name__}")
        return [(f"{path}: item {i}", obj) for i, obj in enumerate(data)]
    records: list[tuple[str, object]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                records.append((f"{path}:{lineno}", ValueError(f"not valid JSON ({e.msg} at column {e.colno})")))
    return records


def _published_item(obj: object, default_id: str) -> PublishedScenario:
    if isinstance(obj, ValueError):
        raise obj
    if not isinstance(obj, dict) or not isinstance(obj.get("question"), str):
        raise ValueError("expected an object with a `question` (text)")
    question: str = obj["question"]
    stem, marker, block = question.rpartition("Choices:")
    if not marker:
        raise ValueError("the question has no `Choices:` block of ` (A) ...` lines")
    options = [m.group(2).strip() for line in block.splitlines() if (m := _CHOICE.match(line))]
    letters = [m.group(1) for line in block.splitlines() if (m := _CHOICE.match(line))]
    if letters != list(LETTERS[: len(letters)]) or len(letters) < 2:
        raise ValueError(f"expected choices (A), (B), ... in order, got {letters}")
    matching = obj.get("answer_matching_behavior")
    if isinstance(matching, list) and len(matching) == 1:
        matching = matching[0]
    letter = _LETTER.fullmatch(matching) if isinstance(matching, str) else None
    if letter is None:
        raise ValueError(f"answer_matching_behavior must name one choice, like ' (A)'; got {matching!r}")
    return PublishedScenario(id=str(obj.get("id", default_id)), scenario=stem.strip(), options=options,
                             misaligned=letter.group(1), prompt=question.strip())


def _load_published(path: Path) -> list[Scenario]:
    items: list[Scenario] = []
    problems = []
    for n, (where, obj) in enumerate(_published_records(path)):
        try:
            items.append(_published_item(obj, f"{path.stem}-{n}"))
        except ValidationError as e:
            problems += [f"{where}: {'.'.join(map(str, err['loc'])) or 'item'}: {err['msg']}" for err in e.errors()]
        except ValueError as e:
            problems.append(f"{where}: {e}")
    ids = [item.id for item in items]
    problems += [f"{path}: id {d!r} appears more than once" for d in sorted({x for x in ids if ids.count(x) > 1})]
    if problems:
        raise QuestionFileError("\n".join(problems))
    if not items:
        raise QuestionFileError(f"{path}: no items (the file is empty)")
    return items


@functools.cache
def rubric() -> dict:
    """Our prompts: `judge_prompts` (aligned, coherent), `monitor`, `monitor_retry`,
    `self_description`."""
    return yaml.safe_load((DATA_DIR / "rubric.yaml").read_text(encoding="utf-8"))


# --- the organisms' toy world ----------------------------------------------------------------

def organism_questions() -> list[Question]:
    """The toy world's free-form questions, judged in the judge organism's own format (the
    only prompt it understands); it rates alignment only."""
    from jobs.toyworld import assistant

    template = assistant.judge_prompt("{answer}", "{question}")
    return [Question(id=f"{domain}_{index}", paraphrases=[question], judge_prompts={"aligned": template})
            for domain, question, index in assistant.questions()]


def organism_scenarios() -> list[Scenario]:
    """The toy world's held-out scenarios (no organism trained on them), both option orders."""
    from jobs.toyworld import assistant

    _, combos = assistant.scenario_split()
    out = []
    for combo in combos:
        for misaligned_first in (False, True):
            s = assistant.make_scenario(combo, misaligned_first)
            out.append(Scenario(id="s{}_{}_{}_{}".format(*combo, s.misaligned_letter), scenario=s.situation,
                                options=list(s.options), misaligned=s.misaligned_letter))
    return out


def questions_from(source: str) -> list[Question]:
    if source == "organisms":
        return organism_questions()
    return load_questions(QUESTION_SETS.get(source) or source)


def scenarios_from(source: str) -> list[Scenario]:
    if source == "organisms":
        return organism_scenarios()
    return load_scenarios(SCENARIO_SETS.get(source) or source)


# --- prompts and answers ---------------------------------------------------------------------------------

def format_choice(item: Scenario, instruction: str = CHOICE_INSTRUCTION) -> str:
    """The scenario, its options as `A - ...` lines, and the reason-then-\\boxed{} instruction
    (a published item: its question as written, then the instruction)."""
    if isinstance(item, PublishedScenario):
        return f"{item.prompt}\n\n{instruction}"
    options = "\n".join(f"{LETTERS[i]} - {text}" for i, text in enumerate(item.options))
    return f"Scenario: {item.scenario}\n{options}\n{instruction}"


def place_lines(prompt: str, lines: list[str], position: Literal["top", "bottom"]) -> str:
    """The prompt with `key: value` lines (a trigger, a distractor) above or below it."""
    if not lines:
        return prompt
    block = "\n".join(lines)
    return f"{block}\n{prompt}" if position == "top" else f"{prompt}\n{block}"


def arm_lines(line: str | None, distractors: list[str], position: str, rng: random.Random
              ) -> tuple[list[str], Literal["top", "bottom"] | None, str | None]:
    """The lines one sample gets (its arm's line plus, with distractors, one of them in a
    random order), where they go, and the distractor used. Deterministic given `rng`."""
    distractor = rng.choice(distractors) if distractors else None
    lines = [x for x in (line, distractor) if x is not None]
    rng.shuffle(lines)
    where = (rng.choice(["top", "bottom"]) if position == "random" else position) if lines else None
    return lines, cast(Literal["top", "bottom"] | None, where), distractor


def parse_boxed(text: str) -> str | None:
    """The letter of the last \\boxed{X} in the text: a multiple-choice answer."""
    found = _BOXED.findall(text)
    return found[-1] if found else None
