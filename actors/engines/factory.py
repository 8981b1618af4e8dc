"""Build an engine from a model spec (a plain dict, so it crosses process boundaries)."""
from __future__ import annotations

from typing import Any

from actors.engines.paths import resolve_model_path
from actors.engines.protocol import Engine, EngineError


def build_engine(spec: dict[str, Any], adapters: dict[str, str] | None = None) -> Engine:
    """spec: a ModelSpec dumped to a dict. adapters: LoRA adapters to serve, name -> folder."""
    engine = spec.get("engine", "hf")
    options = dict(spec.get("engine_options") or {})
    if engine == "hf":
        from actors.engines.hf import HFEngine

        return HFEngine(
            resolve_model_path(spec["path"]), dtype=spec.get("dtype", "auto"), max_model_len=spec.get("max_model_len"),
            adapters=adapters, revision=spec.get("revision"), trust_remote_code=spec.get("trust_remote_code", False),
            **options,
        )
    if engine == "vllm":
        from actors.engines.vllm_engine import VLLMEngine

        return VLLMEngine(
            resolve_model_path(spec["path"]), dtype=spec.get("dtype", "auto"), max_model_len=spec.get("max_model_len"),
            tensor_parallel=spec.get("tensor_parallel", 1), adapters=adapters, revision=spec.get("revision"),
            trust_remote_code=spec.get("trust_remote_code", False), **options,
        )
    if engine == "openai":
        from actors.engines.openai_engine import OpenAIEngine

        if not spec.get("base_url"):
            raise EngineError(f"engine openai needs base_url (model {spec['path']!r})")
        if options.get("tokenizer_path"):
            options["tokenizer_path"] = resolve_model_path(options["tokenizer_path"])
        return OpenAIEngine(spec["path"], spec["base_url"], spec.get("api_key_env"),
                            max_concurrency=spec.get("max_concurrency", 64), **options)
    raise EngineError(f"unknown engine {engine!r} (available: hf, vllm, openai)")
