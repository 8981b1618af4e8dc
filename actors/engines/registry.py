"""The engines by name, and each one's options model: what the sweep's schema, its
validation and the ids read, without importing any engine."""
from __future__ import annotations

from actors.engines.hf.options import HFOptions
from actors.engines.openai.options import OpenAIOptions
from actors.engines.options import EngineOptions
from actors.engines.vllm.options import VLLMOptions

OPTIONS: dict[str, type[EngineOptions]] = {m.engine: m for m in (HFOptions, VLLMOptions, OpenAIOptions)}
ENGINES = tuple(OPTIONS)


def options_model(engine: str) -> type[EngineOptions]:
    """The options model of an engine by name (hf, vllm, openai)."""
    if engine not in OPTIONS:
        raise KeyError(f"unknown engine {engine!r} (available: {', '.join(ENGINES)})")
    return OPTIONS[engine]
