"""Stages: a job's work in parts, each keyed by exactly what changes its output.

- `generate`: the subject's samples (and the roles whose output feeds them, such as Ariadne's
  critic). Stored under an id of the subject, those roles, the items and the generation
  parameters.
- `judge`: what other models make of those samples (judge scores, monitor flags, similarity).
  Stored under an id of the generation it reads, the judging roles and the judging
  parameters: swapping the judge runs the judge and nothing else.
- `summary`: thresholds, rules and statistics (`misaligned_below`, `tau`, `fdr`, bootstrap).
  Never stored under an id: recomputed from the rows on every submit and by
  `orchestrate results`, so changing them costs seconds and loads no model.

A parameter declares its stage where it is defined, `judging(...)` or `summary(...)` in
place of pydantic's `Field(...)`; one that declares nothing belongs to `generate`, the side
where a wrong guess costs time, never a stale result.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Stage = Literal["generate", "judge", "summary"]
STORED: tuple[Stage, ...] = ("generate", "judge")  # the stages with rows on disk
STAGE_KEY = "stage"


def judging(default: Any = ..., **field: Any) -> Any:
    """A parameter of the judging stage (its value changes scores, not samples)."""
    return Field(default, json_schema_extra={STAGE_KEY: "judge"}, **field)


def summary(default: Any = ..., **field: Any) -> Any:
    """A parameter of the summary stage (its value changes what is computed from the rows)."""
    return Field(default, json_schema_extra={STAGE_KEY: "summary"}, **field)


def stage_of(params: type[BaseModel], name: str) -> Stage:
    """The stage a parameter of `params` belongs to."""
    extra = params.model_fields[name].json_schema_extra
    stage = extra.get(STAGE_KEY, "generate") if isinstance(extra, dict) else "generate"
    assert stage in ("generate", "judge", "summary"), f"{params.__name__}.{name}: unknown stage {stage!r}"
    return stage  # type: ignore[return-value]


def stage_values(params: BaseModel, stage: Stage) -> dict[str, Any]:
    """The parameters of one stage that differ from their defaults, as JSON values: what
    enters the stage's id. A parameter added later with a default that keeps the old
    behaviour then leaves every stored id as it was; a changed default is a change of the
    job's code, which bumps its version (tests.code_versions holds the job to that)."""
    values = params.model_dump(mode="json", exclude_defaults=True)
    return {name: values[name] for name in type(params).model_fields
            if name in values and stage_of(type(params), name) == stage}
