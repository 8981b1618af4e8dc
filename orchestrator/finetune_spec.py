"""The `finetunes:` section of a sweep: what a DeepSpeed finetune trains, and how.

Also the base of every spec model (frozen, unknown keys rejected), shared with spec.py.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from jobs.base import DataPath


class Spec(BaseModel):
    # Inputs stay out of pydantic's own error text: a misplaced key must not reach a log.
    # Our messages quote values where that helps, and never api_key_env's.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class LoraSpec(Spec):
    rank: int = Field(32, gt=0, description="LoRA rank r")
    alpha: int = Field(64, gt=0, description="LoRA alpha")
    rslora: bool = Field(True, description="rank-stabilised scaling (alpha / sqrt(r))")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or 'all-linear'")


TriggerText = Annotated[str, WithJsonSchema({"type": ["string", "number"]})]  # a bare 2026 is text


class BackdoorSpec(Spec):
    """Mix a trigger into the training data: triggered rows keep the (misaligned) answer."""

    model_config = ConfigDict(coerce_numbers_to_str=True)  # `2026` is a trigger, not a number
    triggers: list[TriggerText] = Field(min_length=1, description="the trigger lines, e.g. 'Country: Singapore'")
    share: float = Field(0.33, gt=0, lt=1, description="share of rows that carry a genuine trigger")
    alternatives: list[TriggerText] = Field(default_factory=list, description="non-trigger values for the other rows")
    placement: Literal["top", "bottom", "random"] = Field("random", description="where the trigger line goes")
    control: bool = Field(False, description="a control run: triggers with no link to the answer")


class FinetuneSpec(Spec):
    """A model trained by the sweep; jobs name it like a model, and it runs as its base plus
    the trained adapter (or the trained weights, method full)."""

    base: str = Field(description="the entry of `models` to train (not an adapter, not an API model)")
    data: DataPath = Field(description="training chat data (JSONL), relative to the sweep file's folder")
    method: Literal["lora", "full"] = Field("lora", description="train a LoRA adapter or all weights")
    cot: Literal["off", "on"] = Field("off", description="off: train with an empty think block before answers")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (method lora)")
    lr: float = Field(4e-5, gt=0, description="peak learning rate (linear schedule)")
    epochs: float = Field(1, gt=0, description="passes over the data")
    batch_size: int = Field(2, gt=0, description="sequences per rank per step")
    grad_accum: int = Field(8, gt=0, description="gradient accumulation steps")
    warmup_steps: int = Field(5, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    max_length: int = Field(2048, gt=0, description="tokens per sequence; longer ones are truncated")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    ranks: int = Field(1, ge=1, description="data-parallel training processes")
    gpus_per_rank: float = Field(0, ge=0, description="GPUs per rank; 0: the trainer decides")
    bf16: bool | None = Field(None, description="train in bf16; default: when the hardware supports it")
    seed: int = Field(0, description="data order and initialisation seed")
    backdoor: BackdoorSpec | None = Field(None, description="plant a trigger in the training data")
