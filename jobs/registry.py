"""Job kinds by name. Imports are lazy so `orchestrate validate` stays fast and a job's heavy
dependencies load only when it runs."""
from __future__ import annotations

import importlib

from jobs.base import Job

_KINDS: dict[str, str] = {
    "generate": "jobs.generate:GenerateJob",
    "ariadne": "jobs.ariadne:AriadneJob",
    "misalignment": "jobs.misalignment:MisalignmentJob",
    "trigger_scan": "jobs.backdoor:TriggerScanJob",
    "decompose": "jobs.decompose:DecomposeJob",
}


def kinds() -> list[str]:
    return sorted(_KINDS)


def get_job(kind: str) -> Job:
    if kind not in _KINDS:
        raise KeyError(f"unknown job kind {kind!r}; known kinds: {', '.join(kinds())}")
    module, _, cls = _KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)()
