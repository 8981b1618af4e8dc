"""The sweep.yaml schema, and loading it with every problem reported at once by file:line.

The models are frozen and reject unknown keys. Checks that span entries (a job naming a
model, an adapter naming its base, a job's roles and parameter grid) run after the fields
validate. `parse_sweep` runs them even where other parts of the file are broken, so one
`orchestrate validate` lists every mistake by file:line; `Sweep.model_validate` in code runs
the same checks and raises pydantic's ValidationError. The `finetunes:` entries' own fields
are in finetune_spec.py; reading a file, and the checks that need each job's grid and each
model's conventions (roles), are in load.py.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from actors.engines.registry import options_model
from jobs.inputs import DataPath
from jobs.job import SUBJECT
from jobs.organisms.recipes import ORGANISM_PREFIX
from jobs.registry import get_job, kinds
from orchestrator.errors import (
    Loc,
    Problem,
    dotted,
    problems_from_validation,
    show,
)
from orchestrator.finetune_spec import FinetuneSpec, Spec
from orchestrator.grid import grid_problems

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Names become folder and file names (<output>/<sweep>/, finetunes/<name>-<id>/, .work-<name>-<id>)
# and Ray actor names: one path component each (no separator, no leading dot, so never `..`),
# short enough for a 255-byte file name with the prefixes and ids around it.
NAME_MAX_LENGTH = 100
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)]
ENV_VAR_PATTERN = r"^[A-Z_][A-Z0-9_]*$"

# Validation context key: parse_sweep runs the cross-entry checks itself, so that it can
# run them on the parts of a broken file that did validate.
DEFER_CHECKS = "orchestrate_defer_checks"


def _context(info: ValidationInfo) -> dict[str, Any]:
    return info.context or {}


def _base_dir(info: ValidationInfo) -> Path:
    return Path(_context(info).get("base_dir", "."))


def _raise_if(problems: Sequence[tuple[Loc, str]]) -> None:
    if problems:
        raise ValueError("; ".join(f"{dotted(loc) or '(top)'}: {message}" for loc, message in problems))


class TrackingSpec(Spec):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<output>/<name>/mlflow.db")
    experiment: str | None = Field(None, min_length=1, description="MLflow experiment; default: the sweep's name")


class ClusterSpec(Spec):
    address: str | None = Field(
        None, description="Ray cluster: 'auto' (the running one), 'ray://host:port' (Ray Client) or "
        "'host:port' (the head's GCS); omit for an embedded local Ray")
    num_cpus: int | None = Field(None, ge=0, description="CPUs of an embedded local Ray (default: all)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of an embedded local Ray (default: all)")
    dashboard: bool = Field(True, description="start the Ray dashboard with an embedded Ray")
    namespace: str | None = Field(None, description="Ray namespace; default derived from the sweep's name")
    keep_replicas: bool = Field(
        False, description="on a cluster the driver joins (`address`), leave the model replicas running when the "
        "sweep ends, so the next submit of the same models finds them loaded; `orchestrate replicas --stop` ends them")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or value == "auto" or value.startswith("ray://"):
            return value
        host, sep, port = value.rpartition(":")
        if not (sep and host and port.isdigit()):
            raise ValueError(f"expected 'auto', 'ray://host:port' or 'host:port', got {show(value)}")
        return value


class ModelSpec(Spec):
    """A model the sweep calls: served by replicas of an engine, or an API endpoint."""

    path: str = Field(description="HF hub id, a local folder (relative to the sweep file's folder), "
                      "'organism:<name>' for a built organism, or the API model name for engine openai")
    engine: Literal["hf", "vllm", "openai"] = Field("hf", description="inference engine")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype")
    max_model_len: int | None = Field(None, gt=0, description="context length; default: the model's")
    tensor_parallel: int = Field(1, ge=1, description="GPUs one replica shards the model over (vllm)")
    replicas: int = Field(1, ge=1, description="engine copies serving this model")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per replica; default: tensor_parallel for vllm on a GPU cluster, else 0")
    num_cpus: float = Field(1, gt=0, description="CPUs per replica")
    base: str | None = Field(None, description="for an adapter: the entry of `models` it applies to")
    adapter: str | None = Field(None, description="a LoRA adapter folder (relative to the sweep file's "
                                "folder) served on the replicas of `base`")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="run the model repository's own code")
    base_url: str | None = Field(None, description="engine openai: the endpoint, e.g. https://api.openai.com/v1")
    api_key_env: str | None = Field(None, description="engine openai: the NAME of the environment variable "
                                    "that holds the API key (the key never appears in the sweep file)")
    max_concurrency: int = Field(64, gt=0, description="requests in flight per replica")
    reasoning: Literal["auto", "switch", "opens", "tags", "none"] = Field(
        "auto", description="how the model reasons in a think block: auto (read from its chat template), switch "
        "(an enable_thinking switch, as Qwen3), opens (the generation prompt opens the block, as "
        "DeepSeek-R1-Distill), tags (the model writes its own block), none (no think block: CoT arms are refused)")
    chat_template: DataPath | None = Field(None, description="a Jinja chat template file, relative to the sweep "
                                           "file's folder, used instead of the model's own")
    engine_options: dict[str, Any] = Field(
        default_factory=dict, description="the engine's own options (hf, vllm and openai each declare theirs; "
        "`orchestrate schema` lists them): options that only set speed never change a cell's id")

    @model_validator(mode="before")
    @classmethod
    def _resolve_local_folders(cls, data: Any, info: ValidationInfo) -> Any:
        """A relative folder that exists next to the sweep file means that folder, wherever
        the command runs; anything else (a hub id, an organism, an API name) stays as written."""
        if not isinstance(data, dict) or data.get("engine") == "openai":
            return data
        base = _base_dir(info)
        resolved = dict(data)
        for key in ("path", "adapter"):
            value = data.get(key)
            if isinstance(value, str) and value and not value.startswith(ORGANISM_PREFIX):
                local = base / Path(value).expanduser()
                if local.exists():
                    resolved[key] = str(local.resolve())
        return resolved

    @field_validator("path")
    @classmethod
    def _known_organism(cls, value: str) -> str:
        if value.startswith(ORGANISM_PREFIX):
            from jobs.organisms.recipes import ORGANISMS

            name = value[len(ORGANISM_PREFIX):]
            if name not in ORGANISMS:
                raise ValueError(f"unknown organism {show(name)}; known: {', '.join(sorted(ORGANISMS))}")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_var_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(ENV_VAR_PATTERN, value):
            # The value is not echoed: it may be the key itself.
            raise ValueError("expected the name of an environment variable that holds the key "
                             "(like OPENAI_API_KEY), not the key itself")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ModelSpec:
        if not _context(info).get(DEFER_CHECKS):
            _raise_if(self.problems())
        return self

    @property
    def is_adapter(self) -> bool:
        return self.adapter is not None

    def problems(self) -> list[tuple[Loc, str]]:
        """What contradicts itself within this entry, as (field, message)."""
        found: list[tuple[Loc, str]] = []
        if self.adapter and not self.base:
            found.append((("base",), "an adapter needs `base`: the entry of `models` it applies to"))
        if self.base and not self.adapter:
            found.append((("adapter",), f"`base` is set but `adapter` is not: name the LoRA folder to "
                          f"apply to '{self.base}'"))
        if self.engine == "openai":
            if not self.base_url:
                found.append((("base_url",), "engine openai needs `base_url`, the endpoint to call"))
            if self.adapter:
                found.append((("adapter",), "engine openai serves no adapters"))
        else:
            for key in ("base_url", "api_key_env"):
                if getattr(self, key) is not None:
                    found.append(((key,), f"`{key}` is for engine openai, but this model's engine is {self.engine}"))
        found += self._option_problems()
        return found

    def _option_problems(self) -> list[tuple[Loc, str]]:
        """engine_options checked against the engine's own options model."""
        options = options_model(self.engine)
        try:
            options.model_validate(self.engine_options)
        except ValidationError as e:
            return [(("engine_options", *loc), message)
                    for loc, message in problems_from_validation(e, self.engine_options, options)]
        return []


class JobSpec(Spec):
    """One experiment kind run on some models over a grid of parameters."""

    kind: str = Field(description="the job kind, e.g. generate")
    name: Name | None = Field(None, description="an optional name for this entry, unique in the sweep")
    models: list[str] = Field(min_length=1, description="subjects: names from `models` or `finetunes`")
    roles: dict[str, str] = Field(default_factory=dict, description="other roles the job calls (judge, "
                                  "critic, ...) -> a model name, or `subject` for the subject itself")
    params: dict[str, Any] = Field(default_factory=dict, description="the job's parameters; {values: [...]} "
                                   "sweeps one")
    zip: list[Annotated[list[str], Field(min_length=1)]] = Field(
        default_factory=list, description="groups of swept parameters that vary together")
    repeats: int = Field(1, ge=1, description="run every grid point this many times (adds `repeat`)")
    shard_size: int | None = Field(None, gt=0, description="samples per shard (does not change results); unset: "
                                   "32, grown for a large cell to about 64 shards of at most 256")
    concurrency: int = Field(64, gt=0, description="samples in flight per shard (does not change results)")
    _base_dir: Path = PrivateAttr(default_factory=lambda: Path("."))

    def model_post_init(self, context: Any) -> None:
        self._base_dir = Path((context or {}).get("base_dir", "."))

    @property
    def base_dir(self) -> Path:
        """The folder of the sweep file: relative data paths in `params` resolve against it."""
        return self._base_dir

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in kinds():
            raise ValueError(f"unknown job kind {show(value)} (known: {', '.join(kinds())})")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> JobSpec:
        if not _context(info).get(DEFER_CHECKS):
            _raise_if(self.problems())
        return self

    def problems(self) -> list[tuple[Loc, str]]:
        """Roles the kind doesn't call, and everything wrong with the grid."""
        allowed = get_job(self.kind).roles
        found: list[tuple[Loc, str]] = [
            (("roles", role), f"unknown role {show(role)} for job kind '{self.kind}' "
             f"(its roles: {', '.join(allowed) or 'none besides the subjects in `models`'})")
            for role in self.roles if role not in allowed
        ]
        return found + grid_problems(self)


class Sweep(Spec):
    """A sweep file: models, finetunes, and jobs over parameter grids."""

    name: Name = Field(description="the sweep's name: results go to <output>/<name>")
    output: str = Field("results", min_length=1, description="results root, relative to the current "
                        "directory (not the sweep file's)")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="MLflow tracking")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="where Ray runs")
    models: dict[Name, ModelSpec] = Field(min_length=1, description="models by name")
    finetunes: dict[Name, FinetuneSpec] = Field(default_factory=dict, description="models the sweep "
                                                "trains, by name; jobs use them like models")
    jobs: list[JobSpec] = Field(min_length=1, description="experiments to run")
    _base_dir: Path = PrivateAttr(default_factory=lambda: Path("."))
    # Where each entry was written (validation context `source`: the file and its LoadedYaml
    # lines), so problems found later, reading the data, name the sweep file's line too.
    _file: str | None = PrivateAttr(default=None)
    _lines: Mapping[Loc, int] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        self._base_dir = Path((context or {}).get("base_dir", "."))
        self._file, self._lines = (context or {}).get("source", (None, {}))

    def where(self, loc: Loc) -> str:
        """`file:line: field` of `loc` in the sweep file (the deepest written part of it), as
        problems are printed; just the field for a sweep built in code."""
        line = next((self._lines[loc[:end]] for end in range(len(loc), 0, -1) if loc[:end] in self._lines), None)
        return str(Problem(self._file, line, dotted(loc), "")).removesuffix(": ")

    @property
    def base_dir(self) -> Path:
        """The folder of the sweep file: relative data paths resolve against it."""
        return self._base_dir

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Sweep:
        if not _context(info).get(DEFER_CHECKS):
            # The entries checked themselves when they validated.
            _raise_if(reference_problems(self.models, self.finetunes, list(self.jobs), own=False))
        return self


def reference_problems(models: Mapping[str, ModelSpec | None], finetunes: Mapping[str, FinetuneSpec | None],
                       jobs: Sequence[JobSpec | None], own: bool = True) -> list[tuple[Loc, str]]:
    """Problems across entries. None stands for an entry that is named but failed to
    validate: its name counts as defined, nothing else is checked. `own`: include each
    entry's checks of itself (its `problems()`)."""
    found: list[tuple[Loc, str]] = []
    model_names, all_names = list(models), [*models, *finetunes]

    def undefined(name: str, names: list[str], where: str) -> str:
        return f"model {show(name)} is not defined in {where} (defined: {', '.join(map(str, names)) or 'none'})"

    def servable_base(loc: Loc, base: str, what: str) -> None:
        if base == loc[1]:
            others = ", ".join(n for n in model_names if n != base)
            found.append((loc, f"{show(base)} names itself as its base; the base of {what} must be another "
                          f"entry of `models`, a plain model (defined: {others})"))
        elif base not in models:
            hint = " (a finetune cannot be the base of another)" if base in finetunes else ""
            found.append((loc, undefined(base, model_names, "`models`") + hint))
        elif (spec := models[base]) is not None and spec.is_adapter:
            found.append((loc, f"model {show(base)} is itself an adapter; the base of {what} must be a plain model"))
        elif spec is not None and spec.engine == "openai":
            found.append((loc, f"model {show(base)} is an API model (engine openai); {what} needs local weights"))

    for name, spec in models.items():
        if name == SUBJECT:
            found.append((("models", name), f"'{SUBJECT}' is reserved: `roles: {{judge: {SUBJECT}}}` names the job's "
                          "subject; call this model something else"))
        if spec is None:
            continue
        if own:
            found += [(("models", name, *loc), message) for loc, message in spec.problems()]
        if spec.base is not None:
            servable_base(("models", name, "base"), spec.base, "an adapter")
    for name, ft in finetunes.items():
        if name in models:
            found.append((("finetunes", name), f"{show(name)} is also defined in `models`; names must be unique"))
        if ft is not None:
            servable_base(("finetunes", name, "base"), ft.base, "a finetune")
    job_names: dict[str, int] = {}
    for j, job in enumerate(jobs):
        if job is None:
            continue
        for k, model in enumerate(job.models):
            if model not in all_names:
                found.append((("jobs", j, "models", k), undefined(model, all_names, "`models` or `finetunes`")))
            elif model in job.models[:k]:
                found.append((("jobs", j, "models", k), f"model {show(model)} is listed twice"))
        for role, model in job.roles.items():
            if model != SUBJECT and model not in all_names:
                found.append((("jobs", j, "roles", role), undefined(model, all_names, "`models` or `finetunes`")))
        if job.name is not None:
            if job.name in job_names:
                found.append((("jobs", j, "name"),
                              f"job name {show(job.name)} is already used by jobs[{job_names[job.name]}]"))
            job_names.setdefault(job.name, j)
        if own:
            found += [(("jobs", j, *loc), message) for loc, message in job.problems()]
    return found
