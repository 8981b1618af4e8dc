"""What a sweep may set on the `vllm` engine (`engine_options:`). A field left at None keeps
vLLM's own default (or the CPU defaults in `arguments`); `engine_args` passes any other
vllm.EngineArgs field as is, and counts as changing outputs, since nothing here can tell."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from actors.engines.options import EngineOptions, option


class VLLMOptions(EngineOptions):
    engine: ClassVar[str] = "vllm"
    seed: int = option(0, changes_outputs=True, description="vLLM's seed for requests that carry none")
    quantization: str | None = option(None, changes_outputs=True, description="weight quantization (fp8, awq, ...)")
    kv_cache_dtype: str | None = option(None, changes_outputs=True, description="KV cache dtype (auto, fp8, ...)")
    engine_args: dict[str, Any] = option({}, changes_outputs=True,
                                         description="other vllm.EngineArgs fields, passed as they are")
    enable_prefix_caching: bool = option(True, changes_outputs=False,
                                         description="reuse the KV cache of shared prefixes")
    block_size: int | None = option(None, changes_outputs=False, gt=0,
                                    description="KV cache block size (CPU default 32)")
    max_adapters: int | None = option(None, changes_outputs=False, ge=0,
                                      description="adapters the engine can ever hold (default: those it starts with)")
    max_lora_rank: int | None = option(None, changes_outputs=False, gt=0,
                                       description="largest LoRA rank to allow (default: the largest loaded)")
    max_loras: int | None = option(None, changes_outputs=False, gt=0,
                                   description="LoRA slots; must exceed max_adapters (one stays empty)")
    max_cpu_loras: int | None = option(None, changes_outputs=False, gt=0, description="adapters cached on the CPU")
    in_process: bool | None = option(None, changes_outputs=False,
                                     description="run vLLM's engine core in the replica's process (default: on CPU)")
    gpu_memory_utilization: float | None = option(None, changes_outputs=False, gt=0, le=1,
                                                  description="share of each GPU's memory vLLM may take")
    kv_cache_memory_bytes: int | None = option(None, changes_outputs=False, gt=0, description="KV cache size")
    swap_space: float | None = option(None, changes_outputs=False, ge=0, description="CPU swap space per GPU (GiB)")
    max_num_seqs: int | None = option(None, changes_outputs=False, gt=0, description="sequences per step at most")
    max_num_batched_tokens: int | None = option(None, changes_outputs=False, gt=0,
                                                description="tokens per step at most")
    enforce_eager: bool | None = option(None, changes_outputs=False, description="no CUDA graphs")
    distributed_executor_backend: Literal["mp", "ray", "uni"] | None = option(
        None, changes_outputs=False, description="how tensor-parallel ranks run (set by the placement)")
    disable_log_stats: bool | None = option(None, changes_outputs=False, description="vLLM's periodic stats log")
