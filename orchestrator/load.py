"""Loading a sweep file: YAML with line numbers, the models in spec.py, the checks across
entries, and the roles each job's grid needs (roles.py), every problem at once as
`file:line: field: message`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from jobs.inputs import NotUtf8, decode_utf8
from orchestrator.errors import Loc, Problem, SpecError, dotted, problems_from_validation, show
from orchestrator.finetune_spec import FinetuneSpec
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
    context = {"base_dir": str(base), DEFER_CHECKS: True}
    found: list[tuple[Loc, str]] = []
    sweep: Sweep | None = None
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
