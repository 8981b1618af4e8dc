"""What a sweep may set on the `hf` engine (`engine_options:`); all of it only sets speed."""
from __future__ import annotations

from typing import ClassVar

from actors.engines.options import EngineOptions, option

# On a CPU a small model's decode step reads the weights once for every row, so 128 rows cost
# about what 64 do (benchmarks/RESULTS.md, "the floor at its best batch"); on an accelerator
# each row's KV cache is device memory that long reasoning traces fill, and an out-of-memory
# error fails the whole batch, so the default stays at 64 there.
BATCH_ON_CPU = 128
BATCH_ON_ACCELERATOR = 64


def default_batch_size(device_type: str) -> int:
    """The rows an hf engine decodes together when the sweep does not say: by its device."""
    return BATCH_ON_CPU if device_type == "cpu" else BATCH_ON_ACCELERATOR


class HFOptions(EngineOptions):
    engine: ClassVar[str] = "hf"
    device: str | None = option(None, changes_outputs=False,
                                description="torch device (cpu, cuda, cuda:1); default: cuda when available")
    max_batch_size: int | None = option(None, changes_outputs=False, gt=0,
                                        description="rows decoded together at most; default: "
                                        f"{BATCH_ON_CPU} on a CPU, {BATCH_ON_ACCELERATOR} on an accelerator")
    batch_wait_ms: float = option(2.0, changes_outputs=False, ge=0,
                                  description="how long a lone request waits for others to batch with")
    threads: int | None = option(None, changes_outputs=False, gt=0,
                                 description="torch CPU threads of the replica's process; default: what Ray "
                                 "gives it (num_cpus), or on an embedded Ray the machine's cores shared "
                                 "among the sweep's CPU replicas")
