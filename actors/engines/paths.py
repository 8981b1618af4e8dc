"""Where a model's weights are. `organism:<name>` names a tiny organism built by the project
(built on first use, cached by recipe hash); anything else is a local folder or a hub id."""
from __future__ import annotations

ORGANISM_PREFIX = "organism:"


def resolve_model_path(path: str) -> str:
    if path.startswith(ORGANISM_PREFIX):
        from jobs.organisms import organism_path

        return str(organism_path(path[len(ORGANISM_PREFIX):]))
    return path
