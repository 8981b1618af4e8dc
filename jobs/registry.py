"""Job kinds by name. Imports are lazy so `orchestrate validate` stays fast and a job's heavy
dependencies load only when it runs."""
from __future__ import annotations

import importlib
from typing import Any

from jobs.job import Job

_KINDS: dict[str, str] = {
    "generate": "jobs.generate.job:GenerateJob",
    "ariadne": "jobs.ariadne.job:AriadneJob",
    "misalignment": "jobs.misalignment.job:MisalignmentJob",
    "trigger_scan": "jobs.trigger_scan.job:TriggerScanJob",
    "decompose": "jobs.decompose.job:DecomposeJob",
}


def kinds() -> list[str]:
    return sorted(_KINDS)


def get_job(kind: str) -> Job[Any]:
    if kind not in _KINDS:
        raise KeyError(f"unknown job kind {kind!r}; known kinds: {', '.join(kinds())}")
    module, _, cls = _KINDS[kind].partition(":")
    job: Job[Any] = getattr(importlib.import_module(module), cls)()
    assert job.kind == kind, f"{_KINDS[kind]} declares kind {job.kind!r}, registered as {kind!r}"
    return job
