"""The sweep file's JSON Schema (`orchestrate schema`), for editors and checks.

Pydantic gives the schema of the sweep's own models. Two parts of a sweep are typed by what
they configure, so they are filled in here: a job's `params` take the schema of its kind's
Params (each parameter also written `{values: [...]}`, a swept dimension), and a model's
`engine_options` the schema of its engine's options (each option marked with whether it
changes outputs). Editors (yaml-language-server) pick the right one by `kind` and `engine`.
"""
from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from actors.engines.registry import ENGINES, options_model
from jobs.registry import get_job, kinds
from orchestrator.spec import Sweep

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def sweep_json_schema() -> dict[str, Any]:
    """JSON Schema of a sweep file."""
    schema = Sweep.model_json_schema()
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    job, model = defs["JobSpec"], defs["ModelSpec"]
    job["properties"]["kind"] = {**job["properties"]["kind"], "enum": kinds()}
    job["allOf"] = [_when("kind", kind, "params", _sweepable(_embed(get_job(kind).Params, f"{kind}.", defs)))
                    for kind in kinds()]
    model["allOf"] = [_when("engine", engine, "engine_options", _embed(options_model(engine), f"{engine}.", defs),
                            default=engine == "hf")
                      for engine in ENGINES]
    return {"$schema": DRAFT, **schema}


def _embed(model: type[BaseModel], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """`model`'s schema, its own definitions moved into `defs` under `prefix` (two kinds may
    each have a model of the same name)."""
    schema = model.model_json_schema(ref_template="#/$defs/" + prefix + "{model}")
    for name, definition in schema.pop("$defs", {}).items():
        defs[prefix + name] = definition
    return schema


def _sweepable(params: dict[str, Any]) -> dict[str, Any]:
    """Params whose every value may also be `{values: [...]}` (a dimension of the grid)."""
    out = _lax_booleans(copy.deepcopy(params))
    for name, prop in out.get("properties", {}).items():
        description = prop.get("description")
        one = {k: v for k, v in prop.items() if k not in ("title", "description", "default")}
        swept = {"type": "object", "additionalProperties": False, "required": ["values"],
                 "properties": {"values": {"type": "array", "minItems": 1, "items": one}}}
        out["properties"][name] = {"anyOf": [one, swept], **({"description": description} if description else {}),
                                   **({"default": prop["default"]} if "default" in prop else {})}
    out["additionalProperties"] = False
    out.pop("required", None)  # a required parameter may come from a swept value: checked when planning
    return out


# What validation takes for true and false besides YAML's own booleans (pydantic's lax mode):
# `thinking: {values: [on, off]}` is a common way to sweep a switch.
BOOLEAN_WORDS = ["true", "false", "on", "off", "yes", "no", "t", "f", "y", "n", "1", "0"]


def _lax_booleans(node: Any) -> Any:
    """Every `{"type": "boolean"}` in the schema also accepting the words above."""
    if isinstance(node, dict):
        node = {k: _lax_booleans(v) for k, v in node.items()}
        if node.get("type") == "boolean":
            rest = {k: v for k, v in node.items() if k != "type"}
            return {**rest, "anyOf": [{"type": "boolean"}, {"enum": BOOLEAN_WORDS}]}
    elif isinstance(node, list):
        return [_lax_booleans(v) for v in node]
    return node


def _when(key: str, value: str, field: str, then: dict[str, Any], default: bool = False) -> dict[str, Any]:
    """if `key` is `value` (or absent, for the default) then `field` follows `then`."""
    condition: dict[str, Any] = {"properties": {key: {"const": value}}, "required": [key]}
    if default:
        condition = {"anyOf": [condition, {"not": {"required": [key]}}]}
    return {"if": condition, "then": {"properties": {field: then}}}
