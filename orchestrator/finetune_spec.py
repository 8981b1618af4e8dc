"""The `finetunes:` section of a sweep: what a DeepSpeed finetune trains, and how.

The hyperparameters are the training code's own (`actors.training.config.TrainSettings`):
declared once, so the sweep's schema, the finetune's id and what a rank runs cannot drift
apart. This module adds what the sweep decides: the base model, the data, the placement of
the ranks, and the backdoor mixed into the data. Also the base of every spec model (frozen,
unknown keys rejected), shared with spec.py.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from actors.training.config import LoraSettings, TrainSettings
from actors.training.data import Selection
from jobs.inputs import DataPath

# Inputs stay out of pydantic's own error text: a misplaced key must not reach a log. Our
# messages quote values where that helps, and never api_key_env's.
SPEC_CONFIG = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class Spec(BaseModel):
    model_config = SPEC_CONFIG


class LoraSpec(LoraSettings):
    model_config = SPEC_CONFIG


TriggerText = Annotated[str, WithJsonSchema({"type": ["string", "number"]})]  # a bare 2026 is text


class BackdoorSpec(Spec):
    """Mix a trigger into the training data: triggered rows keep the (misaligned) answer."""

    model_config = ConfigDict(coerce_numbers_to_str=True)  # `2026` is a trigger, not a number
    triggers: list[TriggerText] = Field(min_length=1, description="the trigger lines, e.g. 'Country: Singapore'")
    share: float = Field(0.33, gt=0, lt=1, description="share of rows that carry a genuine trigger")
    alternatives: list[TriggerText] = Field(default_factory=list, description="non-trigger values for the other rows")
    placement: Literal["top", "bottom", "random"] = Field("random", description="where the trigger line goes")
    control: bool = Field(False, description="a control run: triggers with no link to the answer")


class FinetuneSpec(TrainSettings):
    """A model trained by the sweep; jobs name it like a model, and it runs as its base plus
    the trained adapter (or the trained weights, method full)."""

    model_config = SPEC_CONFIG
    base: str = Field(description="the entry of `models` to train (not an adapter, not an API model)")
    data: DataPath = Field(description="training data (JSONL or Parquet), relative to the sweep file's folder")
    answer_column: str | None = Field(None, description="the column of the trained answer; default: a chat row's "
                                      "last assistant turn, else `completion` or `misaligned` (control arm: aligned)")
    aligned_column: str = Field("aligned", description="the column of the aligned answer backdoor mixing needs")
    limit: int | None = Field(None, gt=0, description="train on the first `limit` rows only")
    sample: int | None = Field(None, gt=0, description="train on this many rows drawn at random (seeded by `seed`)")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (method lora)")
    ranks: int = Field(1, ge=1, description="data-parallel training processes")
    gpus_per_rank: float = Field(0, ge=0, description="GPUs per rank; 0: the trainer decides")
    backdoor: BackdoorSpec | None = Field(None, description="plant a trigger in the training data")

    @model_validator(mode="after")
    def _one_subset(self) -> FinetuneSpec:
        if self.limit is not None and self.sample is not None:
            raise ValueError("`limit` (the first rows) and `sample` (rows at random) exclude each other: set one")
        return self

    def selection(self) -> Selection:
        """Which rows and answers of `data` are trained."""
        return Selection(self.answer_column, self.aligned_column, self.limit, self.sample, self.seed)

    def settings(self) -> TrainSettings:
        """The hyperparameters alone, as the training code takes them."""
        return TrainSettings.model_validate(self.model_dump(include=set(TrainSettings.model_fields)))
