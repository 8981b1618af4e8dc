"""A job's parameter grid: which points a sweep asks for.

A plain value (a plain list included) is fixed. `{values: [...]}` (W&B style) is a swept
dimension. Dimensions multiply, in the order the parameters are written, unless `zip`
groups them to vary together. `repeats: N` (N > 1) adds a last dimension `repeat` = 0..N-1,
which is no job parameter: it stays in the point and is stripped before validation.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from jobs.registry import get_job
from orchestrator.errors import (
    Loc,
    Problem,
    SpecError,
    bools_for_numbers,
    dotted,
    problems_from_validation,
    show,
)

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec

REPEAT = "repeat"
# Grid points of one job. Each is a cell per model with its own MLflow run; a grid past this is
# a typo (a list pasted as {values: ...} six times over), and expanding it would exhaust memory.
MAX_GRID_POINTS = 10_000


@dataclass(frozen=True)
class _Axis:
    """Parameters that vary together, and their values row by row."""

    names: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


def is_swept(value: Any) -> bool:
    """`{values: ...}` marks a dimension; any other mapping is a plain value."""
    return isinstance(value, dict) and "values" in value


def swept_params(job: JobSpec) -> list[str]:
    """The names of the job's swept parameters, in the order they are written."""
    return [name for name, value in job.params.items() if is_swept(value)]


def expand_grid(job: JobSpec, base_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every point of the job's grid as written (data paths unresolved), in a fixed order:
    the first written dimension varies slowest, `repeat` fastest. Each point has been
    validated against the job's Params; relative data paths resolve against `base_dir`,
    by default the folder of the sweep file the job came from. Raises SpecError."""
    points, problems = _expand(job, base_dir)
    if problems:
        raise SpecError([Problem(None, None, dotted(loc), message) for loc, message in problems])
    return [point for point, _ in points]


def grid_problems(job: JobSpec, base_dir: str | Path | None = None) -> list[tuple[Loc, str]]:
    """Everything wrong with the job's grid, as (location within the job, message)."""
    return _expand(job, base_dir)[1]


Point = tuple[dict[str, Any], dict[str, int]]  # a grid point, and the index of each swept value in its list


def _expand(job: JobSpec, base_dir: str | Path | None) -> tuple[list[Point], list[tuple[Loc, str]]]:
    """(point, index of each swept value in its `values` list) per grid point, and problems."""
    values, group_of, problems = _dimensions(job)
    if problems:
        # No grid to expand, but the values that are there can still be checked: each swept
        # value once, so one run reports the bad values along with the broken structure.
        probes = _probe_points(job, values)
        unswept = {name for name, spec in job.params.items() if is_swept(spec) and name not in values}
        found = [(loc, msg) for loc, msg in _validate_points(job, probes, base_dir)
                 if loc[1:2] not in [(n,) for n in unswept]]
        return [], problems + found
    points = []
    axes = _axes(values, group_of)
    size = math.prod(len(axis.rows) for axis in axes) * job.repeats
    if size > MAX_GRID_POINTS:
        factors = [f"{'+'.join(axis.names)}: {len(axis.rows)}" for axis in axes if len(axis.rows) > 1]
        factors += [f"repeats: {job.repeats}"] if job.repeats > 1 else []
        where: Loc = ("repeats",) if job.repeats > MAX_GRID_POINTS else ("params",)
        return [], [(where, f"the grid has {size:,} points ({' x '.join(factors)}); at most "
                     f"{MAX_GRID_POINTS:,} per job: sweep fewer values, or split the job")]
    for combo in itertools.product(*(range(len(axis.rows)) for axis in axes)):
        chosen: dict[str, tuple[Any, int]] = {}
        for axis, row in zip(axes, combo):
            chosen.update({name: (value, row) for name, value in zip(axis.names, axis.rows[row])})
        point = {name: chosen[name][0] if name in chosen else value for name, value in job.params.items()}
        points.append((point, {name: index for name, (_, index) in chosen.items()}))
    if job.repeats > 1:
        points = [({**point, REPEAT: r}, where) for point, where in points for r in range(job.repeats)]
    return points, _validate_points(job, points, base_dir)


def _dimensions(job: JobSpec) -> tuple[dict[str, list[Any]], dict[str, int], list[tuple[Loc, str]]]:
    """The well-formed swept parameters' values, the zip group of each zipped one, problems."""
    problems: list[tuple[Loc, str]] = []
    if REPEAT in job.params:
        problems.append((("params", REPEAT), f"`{REPEAT}` is reserved: it numbers the runs of `repeats: N`; "
                         "set `repeats` on the job instead"))
    values: dict[str, list[Any]] = {}
    for name, spec in job.params.items():
        if not is_swept(spec) or name == REPEAT:
            continue
        extra = [k for k in spec if k != "values"]
        if extra:
            problems.append((("params", name, extra[0]), f"unknown key {show(extra[0])}: a swept parameter "
                             "is written {values: [...]} with no other keys"))
        if not isinstance(spec["values"], list) or not spec["values"]:
            got = "an empty list" if spec["values"] == [] else show(spec["values"])
            problems.append((("params", name, "values"), f"expected a non-empty list of values to sweep, got {got}"))
        elif not extra:
            values[name] = spec["values"]
    group_of: dict[str, int] = {}
    for g, group in enumerate(job.zip):
        for k, name in enumerate(group):
            if name in group_of:
                problems.append((("zip", g, k), f"'{name}' is already in zip group {group_of[name]}"))
            elif name not in job.params:
                problems.append((("zip", g, k), f"'{name}' is not a parameter of this job "
                                 f"(swept: {', '.join(swept_params(job)) or 'none'})"))
            elif not is_swept(job.params[name]):
                problems.append((("zip", g, k), f"'{name}' has a fixed value; only parameters written "
                                 "{values: [...]} can be zipped"))
            else:
                group_of[name] = g
        lengths = {name: len(values[name]) for name in group if name in values and group_of.get(name) == g}
        if len(set(lengths.values())) > 1:
            problems.append((("zip", g), "zipped parameters need `values` lists of one length, got "
                             + ", ".join(f"{name}: {n}" for name, n in lengths.items())))
    return values, group_of, problems


def _axes(values: dict[str, list[Any]], group_of: dict[str, int]) -> list[_Axis]:
    """One axis per unzipped parameter and per zip group, where its first member is written."""
    axes: list[_Axis] = []
    seen_groups: set[int] = set()
    for name in values:
        if name not in group_of:
            axes.append(_Axis((name,), tuple((v,) for v in values[name])))
        elif group_of[name] not in seen_groups:
            seen_groups.add(group_of[name])
            members = tuple(n for n in values if group_of.get(n) == group_of[name])
            axes.append(_Axis(members, tuple(zip(*(values[n] for n in members)))))
    return axes


def _probe_points(job: JobSpec, values: dict[str, list[Any]]) -> list[tuple[dict, dict[str, int]]]:
    """Points that hold every swept value once (the others at their first value)."""
    fixed = {name: spec for name, spec in job.params.items() if not is_swept(spec)}
    first = {name: vs[0] for name, vs in values.items()}
    probes = [({**fixed, **first}, dict.fromkeys(values, 0))]
    for name, vs in values.items():
        for i, value in enumerate(vs[1:], 1):
            probes.append(({**fixed, **first, name: value}, {**dict.fromkeys(values, 0), name: i}))
    return probes


def _validate_points(job: JobSpec, points: list[tuple[dict, dict[str, int]]],
                     base_dir: str | Path | None) -> list[tuple[Loc, str]]:
    params_model = get_job(job.kind).Params
    context = {"base_dir": str(base_dir if base_dir is not None else job.base_dir)}
    problems: dict[tuple[Loc, str], None] = {}
    for point, where in points:
        values = {k: v for k, v in point.items() if k != REPEAT}
        found = bools_for_numbers(params_model, values)
        try:
            params_model.model_validate(values, context=context)
        except ValidationError as e:
            found += problems_from_validation(e, values, params_model)
        for loc, message in found:
            name = loc[0] if loc else None
            if name in where:  # point at the swept value that broke this point
                loc = (name, "values", where[name], *loc[1:])
            problems[(("params", *loc), message)] = None
    return list(problems)
