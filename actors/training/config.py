"""What a finetune trains and how: the hyperparameters, declared once.

`TrainSettings` is what a sweep's `finetunes:` entry sets (the orchestrator's FinetuneSpec
extends it with the base model, the data and the placement); `TrainConfig` adds what one rank
needs to run (where the base is, where checkpoints and the result go). Both are pydantic
models, frozen and strict about unknown keys, so a config travels to a rank as JSON and back
unchanged (`python -m actors.training.loop config.json rows.parquet`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraSettings(_Frozen):
    rank: int = Field(32, gt=0, description="LoRA rank r")
    alpha: int = Field(64, gt=0, description="LoRA alpha")
    rslora: bool = Field(True, description="rank-stabilised scaling (alpha / sqrt(r))")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or 'all-linear'")


class TrainSettings(_Frozen):
    """The hyperparameters of a finetune; every one of them changes the trained weights."""

    method: Literal["lora", "full"] = Field("lora", description="train a LoRA adapter or all weights")
    cot: Literal["off", "on"] = Field("off", description="off: train with an empty think block before answers")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (method lora)")
    lr: float = Field(4e-5, gt=0, description="peak learning rate (linear schedule)")
    epochs: float = Field(1, gt=0, description="passes over the data")
    batch_size: int = Field(2, gt=0, description="sequences per rank per step")
    grad_accum: int = Field(8, gt=0, description="gradient accumulation steps")
    warmup_steps: int = Field(5, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    max_length: int = Field(2048, gt=0, description="tokens per sequence; longer ones are truncated")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    bf16: bool | None = Field(None, description="train in bf16; default: when the hardware supports it")
    seed: int = Field(0, description="data order and initialisation seed")


class TrainConfig(TrainSettings):
    """Everything one rank needs: the settings, and where things are."""

    base_path: str = Field(description="the base model's folder")
    work_dir: str = Field(description="checkpoints; shared by the ranks, unless node_local")
    output_dir: str = Field(description="rank 0 writes the adapter or model here")
    node_local: bool = Field(False, description="work_dir and output_dir are folders of each rank's own node "
                             "(results on an object store): every node keeps the checkpoint of its own ranks")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints; 0: about ten per run")
    threads: int | None = Field(None, gt=0, description="torch CPU threads of this rank")
