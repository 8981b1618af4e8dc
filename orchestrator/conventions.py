"""What planning can tell about a model before it loads: its reasoning convention (from the
sweep, its chat template file, its local folder or the organisms' template) and, for an API
model, which server it is. The sweep's validation uses them to refuse, with the reason and
the remedy, a job that asks a model for what it cannot do: a CoT arm of a model without a
think block, an assistant prefill or logprobs from OpenAI's API.

Nothing here loads a model: templates are read from files as text and rendered with Jinja
(actors.engines.chat.detect_reasoning). A hub id with no local copy has no known
convention until it loads; the engine then decides, and refuses what it cannot render.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from actors.engines.chat import Reasoning, detect_reasoning
from actors.engines.openai.api import Flavour, flavour_of, is_reasoning_model
from actors.engines.registry import options_model
from jobs.job import RoleNeeds
from jobs.organisms.chat import CHAT_TEMPLATE
from jobs.organisms.recipes import organism_name
from orchestrator.spec import ModelSpec


def template_text(path: str | Path) -> str | None:
    """The chat template a model folder ships: chat_template.jinja, else the one in
    tokenizer_config.json (a string, or the template named `default` of a list)."""
    folder = Path(path)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


@functools.lru_cache(maxsize=128)
def _folder_reasoning(path: str) -> Reasoning:
    return detect_reasoning(template_text(path))


def model_reasoning(spec: ModelSpec) -> Reasoning | None:
    """The model's reasoning convention as planning sees it; None: unknown until it loads."""
    if spec.reasoning != "auto":
        return spec.reasoning
    if spec.chat_template is not None:
        return detect_reasoning(Path(spec.chat_template).read_text(encoding="utf-8"))
    if spec.engine == "openai":
        tokenizer = spec.engine_options.get("tokenizer_path")
        if isinstance(tokenizer, str):
            return _local_reasoning(tokenizer)
        # OpenAI's models show no think block (its reasoning models think out of sight).
        return "none" if api_flavour(spec) == "openai" else None
    return _local_reasoning(spec.path)


def _local_reasoning(path: str) -> Reasoning | None:
    if organism_name(path) is not None:
        return detect_reasoning(CHAT_TEMPLATE)
    return _folder_reasoning(path) if Path(path).is_dir() else None


def has_chat_template(spec: ModelSpec) -> bool | None:
    """Whether the model has a chat template as planning sees it; None: unknown until it loads
    (a hub id, or a server that renders chat itself)."""
    if spec.chat_template is not None:
        return True
    path = spec.path
    if spec.engine == "openai":
        tokenizer = spec.engine_options.get("tokenizer_path")
        if not isinstance(tokenizer, str):
            return None
        path = tokenizer
    if organism_name(path) is not None:
        return True
    return template_text(path) is not None if Path(path).is_dir() else None


def api_flavour(spec: ModelSpec) -> Flavour | None:
    """Which kind of server an API model is (None for a model served by our engines)."""
    if spec.engine != "openai" or spec.base_url is None:
        return None
    declared = options_model("openai").model_validate(spec.engine_options).model_dump().get("flavour")
    return flavour_of(spec.base_url, declared)


def refusals(spec: ModelSpec, need: RoleNeeds) -> list[str]:
    """Why `spec` cannot do what `need` asks, each with what to do about it; empty when it can
    (or when planning cannot tell: the engine checks again when the model loads)."""
    found = []
    if api_flavour(spec) == "openai":
        if need.prefill:
            found.append("OpenAI's API cannot continue an assistant prefill; serve the model with vLLM "
                         "(engine vllm, or engine openai with flavour vllm) or run the job without one")
        if is_reasoning_model(spec.path):
            if need.logprobs:
                found.append(f"{spec.path} gives no logprobs (an OpenAI reasoning model): read its scores from "
                             "text instead (judge_logprobs: false)")
            if need.greedy:
                found.append(f"{spec.path} takes only temperature 1 (an OpenAI reasoning model), and this role "
                             "samples at temperature 0: choose another model for it")
    if need.chat_template and has_chat_template(spec) is False:
        found.append("the model has no chat template (no chat_template.jinja, none in tokenizer_config.json), so "
                     "its requests cannot be rendered as chat: give it one (`chat_template:` on the model) or "
                     "prompt it as a base model (the decompose job's `prompting: completion`)")
    if need.thinks and model_reasoning(spec) == "none":
        found.append("the model has no think block (its chat template neither switches nor opens one), so it "
                     "cannot be asked to reason in one: turn this CoT arm off, or set the model's `reasoning:` "
                     "(switch, opens, tags) if it does think")
    return found
