"""What a sweep may set on the `openai` engine (`engine_options:`)."""
from __future__ import annotations

from typing import Any, ClassVar

from actors.engines.openai.api import Flavour
from actors.engines.options import EngineOptions, option


class OpenAIOptions(EngineOptions):
    engine: ClassVar[str] = "openai"
    flavour: Flavour | None = option(
        None, changes_outputs=True, description="the kind of server: openai (OpenAI's own API: only its documented "
        "fields, its reasoning models' rules), vllm or sglang (their extra fields: prefill, thinking switch); "
        "default: openai for an api.openai.com URL, else vllm")
    tokenizer_path: str | None = option(
        None, changes_outputs=True, description="a local copy of the served model's tokenizer: prompts are then "
        "rendered here and sent as token ids, exactly as the hf and vllm engines see them")
    extra_body: dict[str, Any] = option({}, changes_outputs=True, description="fields added to every request")
    timeout_s: float = option(60.0, changes_outputs=False, gt=0, description="seconds one attempt may take")
    max_retries: int = option(5, changes_outputs=False, ge=0, description="retries of a failure another attempt may "
                              "fix (408, 429, 5xx but 501, a timeout, a dropped connection, a 200 that is not a "
                              "completion); still failing, a judge's score is a null with the reason, a subject's "
                              "shard is retried later")
    backoff_s: float = option(0.5, changes_outputs=False, ge=0, description="first retry's wait; doubles each time, "
                              "each wait drawn from [1/2, 1] of its step, and never shorter than Retry-After")
    max_backoff_s: float = option(30.0, changes_outputs=False, ge=0, description="longest wait between retries")
