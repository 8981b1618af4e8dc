"""Chat rendering, in one place: every engine turns a Request into prompt text here, so the
same request yields the same prompt tokens on vLLM, HF and a served endpoint.

Models reason in a think block (`<think>` ... `</think>`) in one of four ways, their
*reasoning convention*, read from the chat template (`detect_reasoning`) or set in the sweep
(`reasoning:` on a model):

    switch   the template takes a thinking switch: `enable_thinking=False` ends the
             generation prompt in an empty think block (Qwen3)
    opens    the generation prompt opens the think block itself, with no switch
             (DeepSeek-R1-Distill: `<｜Assistant｜><think>\\n`)
    tags     the model writes its own think block; the template neither opens nor
             switches it (it only knows the tags, e.g. to strip past reasoning)
    none     no think block at all (Llama 3)

Whatever the convention, a rendering holds exactly one think block (none for `none`): a
request with thinking on and the protocol's prefill (`<think>\\nOkay`) continues the block
the template opened instead of opening a second; thinking off closes it empty right away.
A model without a convention cannot be asked to think: a prefill that opens a think block
is refused (the sweep's validation refuses such arms before anything runs, where it can
read the template).
"""
from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, Literal

from actors.engines.protocol import Request
from actors.errors import RequestError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EMPTY_THINK = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"  # Qwen3's "thinking off" block

Reasoning = Literal["switch", "opens", "tags", "none"]
REASONING: tuple[Reasoning, ...] = ("switch", "opens", "tags", "none")


def render_prompt(tokenizer: Any, request: Request, reasoning: Reasoning | None = None) -> str:
    """The exact text fed to the model: the chat template with a generation prompt, the
    thinking switch as the model's convention has it (`reasoning`; default: detected from
    the tokenizer's template), then the assistant prefill. A raw prompt passes through."""
    if request.prompt is not None:
        return request.prompt
    if not getattr(tokenizer, "chat_template", None):  # transformers' own error names no remedy
        raise RequestError("the model has no chat template, so chat messages cannot be rendered for it: give it "
                           "one (the sweep's `chat_template:` on the model) or send it a raw prompt (the decompose "
                           "job's `prompting: completion`)")
    reasoning = reasoning or reasoning_of(tokenizer)
    messages = [m.model_dump() for m in request.messages or ()]
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=request.thinking
    )
    return text + _assistant_start(text, request, reasoning)


def _assistant_start(text: str, request: Request, reasoning: Reasoning) -> str:
    """What follows the template's generation prompt: the closing or empty think block the
    convention needs, then the prefill (without a second `<think>`)."""
    prefill = request.prefill
    if reasoning == "none":
        if THINK_OPEN in prefill:
            raise RequestError("the model has no think block (reasoning convention `none`): a prefill that opens "
                               "one would be text it never saw; set the model's `reasoning:` if it has one")
        return prefill
    if reasoning == "opens":
        if prefill.startswith(THINK_OPEN):  # the template opened the block already
            prefill = prefill[len(THINK_OPEN):]
            if text.endswith("\n") and prefill.startswith("\n"):
                prefill = prefill[1:]
        return prefill if request.thinking else f"{THINK_CLOSE}\n\n{prefill}"
    if not request.thinking and not text.endswith(EMPTY_THINK):
        # `tags`, or a switch the template ignored: the empty block, written here.
        return EMPTY_THINK + prefill
    return prefill


def tokenize_prompt(tokenizer: Any, request: Request, reasoning: Reasoning | None = None) -> list[int]:
    """The exact prompt tokens the model sees: the rendering above with no added special
    tokens (the chat template already wrote them)."""
    text = render_prompt(tokenizer, request, reasoning)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def split_thinking(text: str) -> tuple[str | None, str]:
    """Split a completion (including any prefill) into (CoT, answer). CoT is None when the
    text holds no think block; an unclosed block is all CoT and an empty answer."""
    start = text.find(THINK_OPEN)
    if start < 0:
        end = text.find(THINK_CLOSE)  # the prefill or the template held the open tag
        if end < 0:
            return None, text.strip()
        return text[:end].strip(), text[end + len(THINK_CLOSE) :].strip()
    end = text.find(THINK_CLOSE, start)
    if end < 0:
        return text[start + len(THINK_OPEN) :].strip(), ""
    return text[start + len(THINK_OPEN) : end].strip(), text[end + len(THINK_CLOSE) :].strip()


# --- reading a template's convention -------------------------------------------------------

def reasoning_of(tokenizer: Any) -> Reasoning:
    """The reasoning convention of a tokenizer's chat template."""
    return detect_reasoning(getattr(tokenizer, "chat_template", None))


@functools.lru_cache(maxsize=64)
def detect_reasoning(template: str | None) -> Reasoning:
    """The reasoning convention of a chat template (Jinja source), found by rendering one
    user turn with a generation prompt, the thinking switch on and off, as transformers
    renders templates (a sandboxed Jinja environment). A template that fails to render
    that turn is read from its text alone."""
    if not template:
        return "none"
    try:
        on, off = _render(template, True), _render(template, False)
    except Exception:  # a template that needs more than one user turn to render
        return "tags" if THINK_OPEN in template or THINK_CLOSE in template else "none"
    if on != off and THINK_CLOSE in off[len(_common_prefix(on, off)):]:
        return "switch"
    if on.rstrip().endswith(THINK_OPEN):
        return "opens"
    return "tags" if THINK_OPEN in template or THINK_CLOSE in template else "none"


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _render(template: str, thinking: bool) -> str:
    return _compile(template).render(
        messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=True, enable_thinking=thinking,
        bos_token="", eos_token="", tools=None, documents=None)


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    env.filters["tojson"] = json.dumps
    return env.from_string(template)
