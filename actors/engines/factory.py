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
    raise EngineError(f"engine {engine!r} is not available in this build (available: hf)")
