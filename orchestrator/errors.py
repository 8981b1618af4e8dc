"""The orchestrator's exception tree, and how problems are worded.

    OrchestrateError        everything the user can fix; the CLI prints it and exits with
     |                      `exit_code` (2), no traceback
     +-- SpecError          a sweep file is wrong: one Problem per mistake, all at once
     +-- PlanError          the sweep validates but cannot be planned (no samples, repeated
     |                      sample ids)
     +-- ClusterError       the cluster cannot hold what the sweep needs at once
     +-- StoreError         results on disk that cannot be used as they are

The layers below have trees of their own, which the CLI maps to exit codes the same way:
`jobs.errors` (a data file a job reads, parameters that cannot run together: exit 2) and
`actors.errors` (engines and training; training data that cannot be used: exit 2; a failed
finetune ends the run: exit 1). A run that finishes with failed shards exits 1.
"""
from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

Loc = tuple[str | int, ...]


class OrchestrateError(Exception):
    """A user error: printed as is, exits with `exit_code`."""

    exit_code: int = 2


class PlanError(OrchestrateError):
    """The sweep cannot be planned as it stands; the message says where and why."""


class ClusterError(OrchestrateError):
    """The cluster cannot hold what the sweep needs; the message says what is missing."""


class StoreError(OrchestrateError):
    """Results on disk that cannot be used as they are; the message names the folder."""


@dataclass(frozen=True, order=True)
class Problem:
    """One mistake in a sweep file: where (file, 1-based line, dotted field) and what was
    expected. `line` is None when no file position applies (a spec built in code)."""

    file: str | None
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        head = ":".join(str(part) for part in (self.file, self.line) if part not in (None, ""))
        return ": ".join([part for part in (head, self.field) if part] + [self.message])


class SpecError(OrchestrateError):
    """Every problem of a sweep file; str() is one `file:line: field: message` per line."""

    exit_code = 2

    def __init__(self, problems: Sequence[Problem]) -> None:
        assert problems, "a SpecError needs at least one problem"
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def dotted(loc: Loc) -> str:
    """('jobs', 0, 'params', 'temperature') -> 'jobs[0].params.temperature'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def show(value: Any) -> str:
    """A value as the user wrote it in YAML, short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "list_type": "a list",
}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def expected(err: ErrorDetails) -> str | None:
    """What the field wanted, in the user's words; None when the error is not about a type."""
    kind, ctx = err["type"], err.get("ctx", {})
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        return f"a number {op} {show(ctx[key])}"
    if kind == "literal_error":
        return f"one of {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        return f"a string matching {ctx['pattern']}"
    if kind in ("too_short", "too_long"):
        bound = ctx["min_length"] if kind == "too_short" else ctx["max_length"]
        return f"{'at least' if kind == 'too_short' else 'at most'} {bound} item{'s' * (bound != 1)}"
    if kind in ("string_too_short", "string_too_long"):
        bound = ctx["min_length"] if kind == "string_too_short" else ctx["max_length"]
        return f"a string of {'at least' if kind == 'string_too_short' else 'at most'} {bound} characters"
    return None


def describe(err: ErrorDetails, allowed_keys: Sequence[str] = ()) -> str:
    """One pydantic error as a sentence that says what was expected and what was found."""
    kind, ctx = err["type"], err.get("ctx", {})
    if kind == "extra_forbidden":
        key = err["loc"][-1]
        close = difflib.get_close_matches(str(key), list(allowed_keys), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else (
            f" (allowed: {', '.join(allowed_keys)})" if allowed_keys else "")
        return f"unknown key '{key}'{hint}"
    if kind == "missing":
        return f"missing required key '{err['loc'][-1]}'"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    want = expected(err)
    if want is None:
        return err["msg"]
    if kind in ("too_short", "too_long"):
        got = ctx.get("actual_length")
    elif kind in ("string_too_short", "string_too_long") and isinstance(err["input"], str):
        got = f"{len(err['input'])} characters"
    else:
        got = show(err["input"])
    return f"expected {want}, got {got}"


def problems_from_validation(exc: ValidationError, data: Any,
                             model: type[BaseModel] | None = None) -> list[tuple[Loc, str]]:
    """(location in `data`, message) per mistake in `exc`, raised validating `data` as `model`.

    Pydantic adds union member tags to locations ('prompts', 'list[str]', 1); they name no
    place in the file, so they are dropped, and of the union's alternatives only those that
    got past their type check are reported: for a string naming a missing file the user needs
    "file not found", not also "expected a list". `model` gives unknown keys a did-you-mean.
    """
    def message(loc: Loc, err: ErrorDetails) -> str:
        allowed = allowed_keys(model, loc[:-1]) if model and err["type"] == "extra_forbidden" else []
        return describe(err, allowed)

    out: list[tuple[Loc, str]] = []
    unions: dict[Loc, list[tuple[Loc, ErrorDetails]]] = {}
    for err in exc.errors():
        loc, union_at = _data_loc(err, data)
        if union_at is None:
            out.append((loc, message(loc, err)))
        else:
            unions.setdefault(union_at, []).append((loc, err))
    for union_at, members in unions.items():
        # An alternative that failed only its own type check is not what the user meant.
        meant = [(loc, err) for loc, err in members if len(loc) > len(union_at) or err["type"] not in _EXPECTED]
        if meant:
            out.extend((loc, message(loc, err)) for loc, err in meant)
        else:
            wants = dict.fromkeys(str(expected(err)) for _, err in members)
            out.append((union_at, f"expected {' or '.join(wants)}, got {show(members[0][1]['input'])}"))
    return list(dict.fromkeys(out))


def _data_loc(err: ErrorDetails, data: Any) -> tuple[Loc, Loc | None]:
    """The error's location with union tags removed, and the location of the first union."""
    loc: list[str | int] = []
    union_at: Loc | None = None
    node = data
    parts = err["loc"]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif last and err["type"] == "missing":
            node = None
        elif isinstance(part, str):  # a union member's tag, or pydantic's '[key]' marker
            if union_at is None and part != "[key]":
                union_at = tuple(loc)
            continue
        else:
            node = None
        loc.append(part)
    return tuple(loc), union_at


def allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys `model`'s schema allows in the mapping at `loc` (empty when not a model)."""
    node: Any = model
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            node = field.annotation if field else None
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        elif get_origin(node) is list:
            node = get_args(node)[0]
        else:
            return []
    node = _unwrap(node)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _unwrap(tp: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def bools_for_numbers(model: type[BaseModel], data: Any, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Where `data` gives true or false to a number field of `model`. Pydantic reads `true` as 1
    there (its lax mode), but a sweep that writes `temperature: true` meant something else."""
    found: list[tuple[Loc, str]] = []
    if not isinstance(data, dict):
        return found
    for name, value in data.items():
        field = model.model_fields.get(str(name))
        if field is None:
            continue
        want = _number_kind(field.annotation)
        inner = _unwrap(field.annotation)
        if isinstance(value, bool) and want is not None:
            found.append(((*loc, name), f"expected {want}, got {show(value)}"))
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            found += bools_for_numbers(inner, value, (*loc, name))
        elif get_origin(inner) is dict and isinstance(value, dict):
            entry = _unwrap(get_args(inner)[1])
            if isinstance(entry, type) and issubclass(entry, BaseModel):
                for key, item in value.items():
                    found += bools_for_numbers(entry, item, (*loc, name, key))
    return found


def _number_kind(tp: Any) -> str | None:
    """'an integer' or 'a number' for a field that takes only numbers (None allowed), else None."""
    tp = _unwrap(tp)
    members = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (Union, types.UnionType) else [tp]
    members = [_unwrap(m) for m in members]
    if not members or any(m not in (int, float) for m in members):
        return None
    return "an integer" if members == [int] else "a number"
