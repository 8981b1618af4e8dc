"""vllm.EngineArgs for the `vllm` engine: LoRA slot sizing, CPU defaults, CPU rank binding.

LoRA on vLLM's CPU backend has a slot bug: a row without an adapter indexes the stacked LoRA
weights at -1, the last slot, so once that slot holds an adapter, base rows that share its
batch get it applied. The engine therefore keeps one slot more than it can ever hold adapters
(max_loras = max_adapters + 1) and never evicts one, so the last slot stays empty. It does so
on GPUs too: one rank-r slot is cheap, and their kernels' handling of -1 was not checked here.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from actors.errors import EngineError

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM allocates LoRA slots for
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM's CPU default takes 92% of memory, and fails to start beside anything
CPU_BLOCK_SIZE = 32  # CPU default 128 caches no prefix of a short prompt; 16 is refused


def engine_args(options: dict[str, Any], adapter_paths: list[str], max_adapters: int | None,
                   max_lora_rank: int | None, on_cpu: bool, enable_prefix_caching: bool,
                   ) -> tuple[dict[str, Any], int, int]:
    """(EngineArgs options, how many adapters the engine may hold, the LoRA rank its slots
    hold): `options` completed with the LoRA slots the adapters need (one spare, see above)
    and the CPU defaults, any of which the caller's options override."""
    options = dict(options)
    most_adapters = max(max_adapters or 0, len(adapter_paths))
    ranks = [lora_rank(p) for p in adapter_paths]
    slot = slot_rank(max(ranks + [max_lora_rank or 0]) or LORA_RANKS[1])
    if most_adapters:
        spare = options.pop("max_loras", None)
        if spare is not None and spare <= most_adapters:
            raise EngineError(f"max_loras={spare} leaves no empty LoRA slot for base rows (vLLM CPU applies the "
                              f"last slot's adapter to them); it must exceed max_adapters={most_adapters}")
        options.update(
            enable_lora=True, max_loras=spare or most_adapters + 1, max_lora_rank=slot,
            max_cpu_loras=max(options.get("max_cpu_loras") or 0, spare or most_adapters + 1),
        )
    if on_cpu:
        if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            options.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
        if enable_prefix_caching:
            options.setdefault("block_size", CPU_BLOCK_SIZE)
        options.setdefault("enforce_eager", True)
    options.setdefault("disable_log_stats", True)
    return options, most_adapters, slot


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables set for the block only. vLLM caches what it read once an
    engine is up, so the cache is dropped on the way in (a second engine in this process must
    see them) and on the way out (a later one must not)."""
    if not values:
        yield
        return
    from vllm import envs

    before = {k: os.environ.get(k) for k in values}
    envs.disable_envs_cache()
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        envs.disable_envs_cache()


def cpu_rank_binding(ranks: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `ranks` tensor-parallel CPU workers: this process's CPUs
    split evenly, "0,1|2,3". vLLM's own "auto" binds one NUMA node per rank and refuses
    tensor parallelism on a machine with fewer nodes than ranks (most single-socket hosts)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < ranks:
        raise EngineError(f"tensor_parallel={ranks} on CPU needs a CPU per rank; this process may use {len(cpus)}")
    share = len(cpus) // ranks
    return "|".join(",".join(map(str, cpus[r * share:(r + 1) * share])) for r in range(ranks))


def lora_rank(path: str) -> int:
    """The largest rank in a peft LoRA adapter folder (`r`, or a per-module rank_pattern)."""
    config_file = Path(path) / "adapter_config.json"
    if not config_file.is_file():
        raise EngineError(f"{path} holds no adapter_config.json: not a peft adapter folder")
    config = json.loads(config_file.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise EngineError(f"{path} is a {config['peft_type']} adapter; the vllm engine serves LoRA only")
    return max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])


def slot_rank(rank: int) -> int:
    """The smallest rank vLLM allocates slots for that holds `rank`."""
    fitting = [r for r in LORA_RANKS if r >= rank]
    if not fitting:
        raise EngineError(f"LoRA rank {rank} exceeds vLLM's largest ({LORA_RANKS[-1]})")
    return fitting[0]
