"""Build an engine from a model spec (a plain dict, so it crosses process boundaries).

The spec is a sweep's model entry as JSON, its `path` already a folder or a hub id (the
driver resolves the project's organism names before a replica starts). Its
`engine_options` are checked against the engine's options model here too, so a spec built
in code gets the same errors a sweep file does.

A `path` or an adapter folder given as a URI (a finetune's output with the sweep's results on
an object store) is fetched into this node's cache first (`actors.fetch.fetched`) and loaded
from there; the openai engine's `path` is a model name and is left alone."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from actors.engines.protocol import Engine
from actors.engines.registry import ENGINES, options_model
from actors.errors import EngineError
from actors.fetch import fetched


def build_engine(spec: dict[str, Any], adapters: dict[str, str] | None = None) -> Engine:
    """spec: a ModelSpec dumped to a dict. adapters: LoRA adapters to serve, name -> folder."""
    engine = spec.get("engine", "hf")
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r} (available: {', '.join(ENGINES)})")
    try:
        options = options_model(engine).model_validate(spec.get("engine_options") or {}).engine_kwargs()
    except ValidationError as e:
        raise EngineError(f"engine_options of {spec['path']!r} ({engine}): {e}") from None
    # How prompts are rendered: the sweep's own template (its text) and reasoning convention.
    chat = {"chat_template": spec.get("chat_template"),
            "reasoning": None if spec.get("reasoning", "auto") == "auto" else spec["reasoning"]}
    if engine in ("hf", "vllm"):  # they load folders: from this node's disk
        spec = {**spec, "path": fetched(spec["path"])}
        adapters = {name: fetched(path) for name, path in (adapters or {}).items()}
    if engine == "hf":
        from actors.engines.hf.engine import HFEngine

        return HFEngine(
            spec["path"], dtype=spec.get("dtype", "auto"), max_model_len=spec.get("max_model_len"),
            adapters=adapters, revision=spec.get("revision"), trust_remote_code=spec.get("trust_remote_code", False),
            **chat, **options,
        )
    if engine == "vllm":
        from actors.engines.vllm.engine import VLLMEngine

        return VLLMEngine(
            spec["path"], dtype=spec.get("dtype", "auto"), max_model_len=spec.get("max_model_len"),
            tensor_parallel=spec.get("tensor_parallel", 1), adapters=adapters, revision=spec.get("revision"),
            trust_remote_code=spec.get("trust_remote_code", False), **chat, **options,
        )
    from actors.engines.openai.engine import OpenAIEngine

    if not spec.get("base_url"):
        raise EngineError(f"engine openai needs base_url (model {spec['path']!r})")
    return OpenAIEngine(spec["path"], spec["base_url"], spec.get("api_key_env"),
                        max_concurrency=spec.get("max_concurrency", 64), **chat, **options)
