"""Roles are explicit: every model a job's protocol calls is named in the sweep, and can do
what the protocol asks of it.

For each job entry and each point of its grid, the job says what it needs of each role
(`Job.needs`: required or not, a think block, a prefill, logprobs, temperature 0). A
required role the sweep does not name is a problem at the job's `roles`; the subject judges
itself only when the sweep says so in words (`roles: {judge: subject}`). A model named for
a role (or a subject) that cannot do what the role needs is a problem at that role, with
the reason and the remedy (`orchestrator.conventions.refusals`).
"""
from __future__ import annotations

from typing import Any

from jobs.job import SUBJECT
from jobs.registry import get_job
from orchestrator.conventions import refusals
from orchestrator.errors import Loc, OrchestrateError
from orchestrator.grid import REPEAT, expand_grid, grid_problems
from orchestrator.spec import JobSpec, ModelSpec, Sweep


def role_problems(sweep: Sweep) -> list[tuple[Loc, str]]:
    found: dict[tuple[Loc, str], None] = {}
    for j, job in enumerate(sweep.jobs):
        if grid_problems(job):  # reported already; no grid to read needs from
            continue
        for loc, message in _job_problems(sweep, j, job):
            found[(loc, message)] = None
    return list(found)


def _job_problems(sweep: Sweep, j: int, spec: JobSpec) -> list[tuple[Loc, str]]:
    job = get_job(spec.kind)
    out: list[tuple[Loc, str]] = []
    for point in expand_grid(spec):
        try:
            params = job.Params.model_validate({k: v for k, v in point.items() if k != REPEAT},
                                               context={"base_dir": spec.base_dir})
            needs = job.needs(params)
        except (ValueError, OrchestrateError):  # a data file the grid check could not read: planning says
            continue
        for role, need in needs.items():
            named = spec.roles.get(role)
            if role != SUBJECT and named is None:
                if need.required:
                    out.append((("jobs", j, "roles"),
                                f"job kind '{spec.kind}' needs a {role} here ({need.purpose}): name its model, "
                                f"roles: {{{role}: <model>}}, or `{role}: subject` for the subject itself"))
                continue
            models = spec.models if role == SUBJECT or named == SUBJECT else [named]
            loc: Loc = ("jobs", j, "models") if role == SUBJECT else ("jobs", j, "roles", role)
            for name in models:
                model = _served_as(sweep, name)
                if model is None:
                    continue
                for reason in refusals(model, need):
                    what = f"the {role} {name!r}" if role != SUBJECT else f"the subject {name!r}"
                    why = f" ({need.purpose})" if role == SUBJECT and need.purpose else ""
                    out.append((loc, f"{what} cannot serve {spec.kind}'s {_asked(need)}{why}: {reason}"))
    return out


def _served_as(sweep: Sweep, name: str | None) -> ModelSpec | None:
    """The model entry whose serving a name stands for (a finetune or an adapter: its base)."""
    if name is None:
        return None
    if name in sweep.finetunes:
        name = sweep.finetunes[name].base
    model = sweep.models.get(name)
    if model is not None and model.base is not None:
        model = sweep.models.get(model.base)
    return model


def _asked(need: Any) -> str:
    asked = [what for flag, what in ((need.chat_template, "chat prompts"), (need.thinks, "CoT arm"),
                                     (need.prefill, "prefilled requests"), (need.logprobs, "logprob reading"),
                                     (need.greedy, "greedy sampling")) if flag]
    return " and ".join(asked) or "requests"
