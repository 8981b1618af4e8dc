"""Loading a sweep file: YAML with line numbers, the models in spec.py, the checks across
entries, and the roles each job's grid needs (roles.py), every problem at once as
`file:line: field: message`. Then its data, before anything starts: each job's samples at
each grid point and each finetune's training rows, a problem as
`sweep.yaml:line: field: data-file:line: what` (`check_data`; `make_plan` reads through the
same functions, so validate, plan and submit refuse the same files alike)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from actors.errors import DataError
from actors.training.data import load_rows, mix_backdoor
from jobs.errors import DataFileError, JobError, UnknownRole
from jobs.inputs import NotUtf8, decode_utf8
from jobs.job import JobParams
from jobs.registry import get_job
from orchestrator.errors import (
    Loc,
    PlanError,
    Problem,
    SpecError,
    bools_for_numbers,
    dotted,
    problems_from_validation,
    show,
)
from orchestrator.finetune_spec import FinetuneSpec
from orchestrator.grid import REPEAT, expand_grid, swept_params
from orchestrator.roles import role_problems
from orchestrator.spec import DEFER_CHECKS, JobSpec, ModelSpec, Sweep, reference_problems
from orchestrator.yaml_lines import load_yaml


def parse_sweep(text: str, filename: str = "sweep.yaml", base_dir: str | Path | None = None) -> Sweep:
    """Validate a sweep file's text. `base_dir` (default: the current directory) is where
    relative data paths resolve: the sweep file's folder. Raises SpecError with every problem."""
    base = Path(base_dir) if base_dir is not None else Path(".")
    loaded = load_yaml(text, filename)
    data = loaded.data
    if data is None:
        raise SpecError([Problem(filename, 1, "", "the file is empty; a sweep needs `name`, `models` and `jobs`")])
    if not isinstance(data, dict):
        raise SpecError([Problem(filename, loaded.line_of(()), "",
                                 f"expected a mapping at the top level (name, models, jobs, ...), got {show(data)}")])
    context = {"base_dir": str(base), DEFER_CHECKS: True, "source": (filename, loaded.lines)}
    found: list[tuple[Loc, str]] = []
    sweep: Sweep | None = None
    found += bools_for_numbers(Sweep, data)
    try:
        sweep = Sweep.model_validate(data, context=context)
    except ValidationError as e:
        found += problems_from_validation(e, data, Sweep)
    if sweep is not None:
        found += reference_problems(sweep.models, sweep.finetunes, sweep.jobs)
        found += role_problems(sweep)
    else:
        found += reference_problems(_entries(data.get("models"), ModelSpec, context),
                                    _entries(data.get("finetunes"), FinetuneSpec, context),
                                    _jobs(data.get("jobs"), context))
    problems = [*loaded.problems,
                *(Problem(filename, loaded.line_of(loc), dotted(loc), message) for loc, message in found)]
    if problems:
        problems = sorted(dict.fromkeys(problems), key=lambda p: (p.line or 0, p.field))
        raise SpecError(problems)
    assert sweep is not None
    return sweep


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; relative data paths resolve against its folder."""
    path = Path(path)
    try:
        text = decode_utf8(path.read_bytes())
    except NotUtf8 as e:
        raise SpecError([Problem(str(path), e.line, "", str(e).split(": ", 1)[1])]) from None
    except OSError as e:
        reason = "file not found" if isinstance(e, FileNotFoundError) else f"cannot read the file ({e.strerror})"
        raise SpecError([Problem(str(path), None, "", reason)]) from None
    return parse_sweep(text, str(path), path.parent.resolve())


def _entries(section: Any, model: type[BaseModel], context: dict[str, Any]) -> dict[str, Any]:
    """Each entry of a broken file's section validated alone. A broken entry is checked
    further without its broken keys (their defaults in their place); None when that fails
    too (a broken required key): its name still counts as defined."""
    if not isinstance(section, dict):
        return {}
    out: dict[str, Any] = {}
    for name, raw in section.items():
        out[name] = None
        try:
            out[name] = model.model_validate(raw, context=context)
        except ValidationError as e:
            broken = {err["loc"][0] for err in e.errors() if err["loc"]}
            if isinstance(raw, dict) and broken and all(err["loc"] for err in e.errors()):
                try:
                    out[name] = model.model_validate({k: v for k, v in raw.items() if k not in broken}, context=context)
                except ValidationError:
                    pass
    return out


def _jobs(section: Any, context: dict[str, Any]) -> list[JobSpec | None]:
    if not isinstance(section, list):
        return []
    return list(_entries(dict(enumerate(section)), JobSpec, context).values())


_UNIQUE: dict[int, Sequence[str]] = {}  # id() -> id lists found unique (kept, so an id() names one list)
_UNIQUE_KEPT = 64


def sample_ids(sweep: Sweep, job_index: int, params: JobParams, point: Mapping[str, Any]) -> Sequence[str]:
    """The ids of a job's samples at one grid point, read from its data (`Job.sample_ids`:
    no sample is built, and the cells that read one file share one list, checked once).
    Raises the reader's error (DataFileError, DataError: exit 2) prefixed with where the
    sweep names the file, or PlanError for data that gives no samples or repeats an id."""
    spec = sweep.jobs[job_index]
    try:
        ids = get_job(spec.kind).sample_ids(params)
    except (JobError, DataError) as e:
        if isinstance(e, UnknownRole):
            raise
        raise type(e)(f"{_where(sweep, job_index, params, str(e))}: {e}") from None
    except UnicodeDecodeError as e:  # a reader that does not name the line itself
        raise DataFileError(f"{_where(sweep, job_index, params, '')}: a data file is not UTF-8 text "
                            f"(byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise DataFileError(f"{_where(sweep, job_index, params, str(e.filename))}: {e.strerror or e}: "
                            f"{e.filename}") from None
    swept = [*swept_params(spec), REPEAT]
    at = f" at {text}" if (text := ", ".join(f"{k}={point[k]}" for k in swept if k in point)) else ""
    if not ids:
        raise PlanError(f"{_where(sweep, job_index, params, '')}: the parameters give no samples{at} "
                        "(an empty data file, or filters that keep nothing)")
    if _UNIQUE.get(id(ids)) is ids:
        return ids
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        raise PlanError(f"{_where(sweep, job_index, params, '')}: sample ids must be unique{at}; repeated: "
                        f"{', '.join(duplicates[:5])}{more}")
    if isinstance(ids, tuple):  # immutable: another cell handed the same tuple needs no second check
        if len(_UNIQUE) >= _UNIQUE_KEPT:
            del _UNIQUE[next(iter(_UNIQUE))]
        _UNIQUE[id(ids)] = ids
    return ids


def check_finetune_data(sweep: Sweep) -> None:
    """Read every finetune's training rows as they would be trained (selection, backdoor
    mix), so a malformed file stops the command before any Ray starts. Raises DataError."""
    for name, ft in sweep.finetunes.items():
        try:
            rows = load_rows(ft.data, ft.selection())
            if ft.backdoor is not None:
                mix_backdoor(rows, ft.backdoor.triggers, ft.backdoor.share, ft.backdoor.alternatives,
                             ft.backdoor.placement, ft.backdoor.control, ft.seed, source=ft.data)
        except DataError as e:
            raise DataError(f"{sweep.where(('finetunes', name, 'data'))}: {e}") from None


def check_data(sweep: Sweep) -> None:
    """Read all of a sweep's data (`orchestrate validate`): the finetunes' rows, then every
    job's samples at every point of its grid (each distinct set of parameters once)."""
    check_finetune_data(sweep)
    for j, spec in enumerate(sweep.jobs):
        params_model = get_job(spec.kind).Params
        seen: set[str] = set()
        for point in expand_grid(spec, sweep.base_dir):
            params = params_model.model_validate({k: v for k, v in point.items() if k != REPEAT},
                                                 context={"base_dir": str(sweep.base_dir)})
            key = params.model_dump_json()
            if key not in seen:
                seen.add(key)
                sample_ids(sweep, j, params, point)


def _where(sweep: Sweep, job_index: int, params: JobParams, message: str) -> str:
    """`file:line: jobs[j].params.<p>` of the parameter naming the data file `message` is
    about (or the job's only data file), else of the job's params."""
    files = {name: [v for v in (value if isinstance(value, list) else [value])
                    if isinstance(v, str) and Path(v).is_absolute()]
             for name, value in params.model_dump().items()}
    files = {name: paths for name, paths in files.items() if paths}
    named = [name for name, paths in files.items() if any(p in message for p in paths)]
    chosen = named[0] if named else (next(iter(files)) if len(files) == 1 else None)
    return sweep.where(("jobs", job_index, "params", *([chosen] if chosen else [])))
