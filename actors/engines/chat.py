"""Chat rendering, in one place: every engine turns a Request into prompt text here, so the
same request yields the same prompt tokens on vLLM, HF and a served endpoint."""
from __future__ import annotations

from typing import Any

from actors.engines.protocol import Request

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EMPTY_THINK = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"  # Qwen3's "thinking off" block


def render_prompt(tokenizer: Any, request: Request) -> str:
    """The exact text fed to the model: the chat template with a generation prompt, the
    thinking switch, then the assistant prefill. A raw prompt passes through untouched."""
    if request.prompt is not None:
        return request.prompt
    messages = [m.model_dump() for m in request.messages or ()]
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=request.thinking
    )
    if not request.thinking and EMPTY_THINK not in text[-len(EMPTY_THINK) - 2 :]:
        # A template without the enable_thinking switch: add the empty block ourselves so
        # "thinking off" means the same thing for every model.
        text += EMPTY_THINK
    return text + request.prefill


def tokenize_prompt(tokenizer: Any, request: Request) -> list[int]:
    """The exact prompt tokens the model sees: the rendering above with no added special
    tokens (the chat template already wrote them)."""
    return list(tokenizer(render_prompt(tokenizer, request), add_special_tokens=False)["input_ids"])


def split_thinking(text: str) -> tuple[str | None, str]:
    """Split a completion (including any prefill) into (CoT, answer). CoT is None when the
    text holds no think block; an unclosed block is all CoT and an empty answer."""
    start = text.find(THINK_OPEN)
    if start < 0:
        end = text.find(THINK_CLOSE)  # the prefill held the open tag
        if end < 0:
            return None, text.strip()
        return text[:end].strip(), text[end + len(THINK_CLOSE) :].strip()
    end = text.find(THINK_CLOSE, start)
    if end < 0:
        return text[start + len(THINK_OPEN) :].strip(), ""
    return text[start + len(THINK_OPEN) : end].strip(), text[end + len(THINK_CLOSE) :].strip()
