"""What a sweep may set on the `hf` engine (`engine_options:`); all of it only sets speed."""
from __future__ import annotations

from typing import ClassVar

from actors.engines.options import EngineOptions, option


class HFOptions(EngineOptions):
    engine: ClassVar[str] = "hf"
    device: str | None = option(None, changes_outputs=False,
                                description="torch device (cpu, cuda, cuda:1); default: cuda when available")
    max_batch_size: int = option(64, changes_outputs=False, gt=0, description="rows decoded together at most")
    batch_wait_ms: float = option(2.0, changes_outputs=False, ge=0,
                                  description="how long a lone request waits for others to batch with")
    threads: int | None = option(None, changes_outputs=False, gt=0,
                                 description="torch CPU threads of the replica's process; default: what Ray "
                                 "gives it (num_cpus), or on an embedded Ray the machine's cores shared "
                                 "among the sweep's CPU replicas")
