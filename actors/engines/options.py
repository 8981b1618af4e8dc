"""Engine options: typed per engine, each declaring whether it changes what the model says.

A sweep's `engine_options:` are validated against the engine's options model (hf, vllm,
openai), so a typo is a file:line error before anything starts, and the sweep's JSON Schema
completes them. Every field says, in its declaration, whether it changes outputs:
`option(..., changes_outputs=False)` for speed knobs (batch sizes, memory, timeouts), which
then never enter a cell's id, so tuning throughput re-runs nothing; `changes_outputs=True`
for the rest (quantization, a seed), which do. A subclass that forgets to say is refused
when it is defined.

Engines validate their own keyword options with the same model, so the defaults live here
and nowhere else.
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

CHANGES_OUTPUTS = "changes_outputs"


def option(default: Any, *, changes_outputs: bool, description: str, **constraints: Any) -> Any:
    """A field of an options model, with its effect on outputs declared."""
    return Field(default, description=description, json_schema_extra={CHANGES_OUTPUTS: changes_outputs},
                 **constraints)


class EngineOptions(BaseModel):
    """Base of the per-engine options models."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    engine: ClassVar[str]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        undeclared = [name for name, field in cls.model_fields.items()
                      if not isinstance(field.json_schema_extra, dict)
                      or CHANGES_OUTPUTS not in field.json_schema_extra]
        assert not undeclared, f"{cls.__name__}: declare changes_outputs for {undeclared} (use option(...))"

    @classmethod
    def output_fields(cls) -> frozenset[str]:
        """The options that change what the model says."""
        return frozenset(name for name, field in cls.model_fields.items()
                         if isinstance(field.json_schema_extra, dict) and field.json_schema_extra[CHANGES_OUTPUTS])

    def identity(self) -> dict[str, Any]:
        """The output-changing options that differ from their defaults: what enters a model's
        identity (an option at its default, written or not, is the same model)."""
        values = self.model_dump(mode="json")
        defaults = type(self)().model_dump(mode="json")
        return {k: values[k] for k in sorted(self.output_fields()) if values[k] != defaults[k]}

    def engine_kwargs(self) -> dict[str, Any]:
        """The options as the engine's keyword arguments: those set, the engine's defaults
        (the same declarations) for the rest."""
        return self.model_dump(exclude_unset=True)
