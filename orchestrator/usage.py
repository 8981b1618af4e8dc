"""Token usage per role: what each model read and wrote for a cell's rows.

The scheduler hands a job one `CountingHandle` per role and shard attempt; the counts of the
attempt that wrote the shard travel inside the shard file (Parquet key-value metadata, written
in the same atomic rename as the rows), so a resumed or re-summarised cell adds up exactly
the shards it holds. A request counts its prompt once and the tokens of all its samples (an
API that fans n samples out into n calls bills that prompt n times).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from actors.engines.protocol import Completion, Request
from jobs.job import ModelHandle

METADATA_KEY = "orchestrate.usage"  # the shard file's metadata entry


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, completions: list[Completion]) -> None:
        self.requests += 1
        if completions:
            self.prompt_tokens += completions[0].prompt_tokens
            self.completion_tokens += sum(c.completion_tokens for c in completions)


class CountingHandle:
    """A model handle that counts what passes through it into `usage`."""

    def __init__(self, handle: ModelHandle, usage: Usage) -> None:
        self.name = handle.name
        self._handle, self.usage = handle, usage

    async def generate(self, request: Request) -> list[Completion]:
        completions = await self._handle.generate(request)
        self.usage.add(completions)
        return completions


def counted(handles: Mapping[str, ModelHandle]) -> tuple[dict[str, ModelHandle], dict[str, Usage]]:
    """Each role's handle wrapped, and the usage each one fills."""
    usage = {role: Usage() for role in handles}
    return {role: CountingHandle(h, usage[role]) for role, h in handles.items()}, usage


def encode(usage: Mapping[str, Usage]) -> dict[str, str]:
    """The shard file's metadata entry (roles that made no request are left out)."""
    used = {role: asdict(u) for role, u in sorted(usage.items()) if u.requests}
    return {METADATA_KEY: json.dumps(used, sort_keys=True)}


def summary(shard_metadata: Iterable[Mapping[str, str]]) -> dict[str, float]:
    """`usage/<role>/<count>` summed over the shards' metadata (a shard written before usage
    was recorded adds nothing, and the cell then says so with `usage/shards_without`)."""
    totals: dict[str, float] = {}
    missing = 0
    for metadata in shard_metadata:
        if METADATA_KEY not in metadata:
            missing += 1
            continue
        for role, counts in json.loads(metadata[METADATA_KEY]).items():
            for name, value in counts.items():
                key = f"usage/{role}/{name}"
                totals[key] = totals.get(key, 0.0) + float(value)
    if missing:
        totals["usage/shards_without"] = float(missing)
    return totals
