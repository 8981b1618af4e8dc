"""Content ids: what makes a result, hashed, and nothing else.

A cell's work is stored in stages (`jobs.stages`), each under an id of what changes its output:
the job kind and that stage's code version, the identities of the models that stage calls, the
stage's parameters with each data file replaced by the digest of its bytes, the digest of the
data it reads, and (judging) the id of the generation it judges. The summary stage has no id:
it is recomputed from the rows (`orchestrator.plan`). A model's identity covers its weights (a digest of the folder, or,
for an organism, the digest of the recipe that determines its weights, so planning never
builds one), and how it is served as far as that changes outputs: engine, dtype, context
length and the engine options declared to change outputs (`actors.engines.options`). Names,
shard sizes, concurrency, replicas and speed options never enter an id: renaming or tuning
re-runs nothing. Bump HASH_SCHEME when the recipe itself changes in a way that could make old
and new ids collide silently.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from actors.engines.registry import options_model
from jobs.inputs import file_digest
from jobs.organisms.recipes import organism_digest, organism_name
from orchestrator.spec import ModelSpec, Sweep

HASH_SCHEME = "orchestrate-ids-v1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".txt", ".jinja")
# Bump when the data path or the step loop change what an unchanged finetune entry trains
# (2: the training order no longer replays the backdoor mix's shuffle, 4b33419).
FINETUNE_VERSION = 2
# Finetune fields that place the work without changing the weights.
PLACEMENT_ONLY = ("gpus_per_rank",)


def content_id(obj: Any, length: int = 16) -> str:
    blob = json.dumps({"scheme": HASH_SCHEME, "content": obj}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@lru_cache(maxsize=256)
def _folder_digest(folder: str, mtimes: tuple[tuple[str, int], ...]) -> str:
    files = [Path(folder) / name for name, _ in mtimes]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + file_digest(f).encode())
    return h.hexdigest()


def weights_digest(path: str) -> str:
    """Digest of a model's weights: of a local folder's weights, config and tokenizer files;
    an organism by its recipe digest (no build); a hub id by its name (with its revision in
    the identity)."""
    if (name := organism_name(path)) is not None:
        return f"organism:{name}:{organism_digest(name)}"
    p = Path(path)
    if not p.is_dir():
        return f"ref:{path}"
    files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    return _folder_digest(str(p), tuple((f.name, f.stat().st_mtime_ns) for f in files))


def serving_identity(m: ModelSpec) -> dict[str, Any]:
    """How a model is served, as far as it changes outputs: a prompt that does not fit
    max_model_len is an error row, and options like quantization change the tokens."""
    options = options_model(m.engine).model_validate(m.engine_options).identity()
    ident: dict[str, Any] = {"engine": m.engine, "dtype": m.dtype, "max_model_len": m.max_model_len,
                             "engine_options": options}
    # How prompts are rendered, when the sweep says (absent: the model's own, covered by its weights).
    if m.reasoning != "auto":
        ident["reasoning"] = m.reasoning
    if m.chat_template is not None:
        ident["chat_template"] = file_digest(m.chat_template)
    return ident


def model_identity(name: str, sweep: Sweep) -> dict[str, Any]:
    """What determines a model's outputs. The name is not part of it: renaming a model in the
    sweep must not rerun anything."""
    if name in sweep.finetunes:
        # The finetune's id covers base weights, data bytes and hyperparameters; its trained
        # weights are a function of those (a died run resumes from checkpoints of that id).
        # It is served the way its base is: the base's serving settings count too.
        return {"finetune": finetune_id(sweep, name), **serving_identity(sweep.models[sweep.finetunes[name].base])}
    m = sweep.models[name]
    ident: dict[str, Any] = {**serving_identity(m), "revision": m.revision}
    if m.engine == "openai":
        ident.update(api_model=m.path, base_url=m.base_url)
    elif m.adapter:
        assert m.base is not None, "an adapter entry names its base (checked by the spec)"
        ident.update(base=model_identity(m.base, sweep), adapter=weights_digest(m.adapter))
    else:
        ident["weights"] = weights_digest(m.path)
    return ident


def base_identity(sweep: Sweep, name: str) -> dict[str, Any]:
    """The weights a finetune starts from."""
    base = sweep.models[sweep.finetunes[name].base]
    return {"weights": weights_digest(base.path), "revision": base.revision}


def replicate_group(name: str, sweep: Sweep) -> str:
    """Models that differ only in their training seed share a group: finetune replicas, which
    a comparison pools (their spread is part of the finetune's effect). Any other model is
    a group of its own."""
    if name not in sweep.finetunes:
        return name
    spec = sweep.finetunes[name].model_dump(mode="json", exclude={"seed"})
    return "finetune:" + content_id({"base": base_identity(sweep, name), "spec": spec})


DATA_SELECTION = ("answer_column", "aligned_column", "limit", "sample")


def finetune_id(sweep: Sweep, name: str) -> str:
    """Content id of a finetune: what it trains on and how, not what it is called, where its
    data file lives or how many GPUs each rank gets."""
    ft = sweep.finetunes[name]
    spec = ft.model_dump(mode="json", exclude={*DATA_SELECTION, *PLACEMENT_ONLY})
    # The rows it trains on: the file's content, and the selection where it is not the whole
    # file as written (so ids from before the selection existed still hold).
    chosen = ft.model_dump(mode="json", include=set(DATA_SELECTION), exclude_defaults=True)
    spec["data"] = {"file_sha256": file_digest(ft.data), **chosen}
    return content_id({"finetune": spec, "base": base_identity(sweep, name), "version": FINETUNE_VERSION})


def hashable(values: dict[str, Any]) -> dict[str, Any]:
    """Parameter values as they enter an id: data files by content, not by location, wherever
    they sit (a list of question files too)."""

    def by_content(value: Any) -> Any:
        if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_file():
            return {"file_sha256": file_digest(value)}
        if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_dir():
            return {"folder": "by data_digest"}  # a job that reads a folder digests what it read
        if isinstance(value, list):
            return [by_content(v) for v in value]
        if isinstance(value, dict):
            return {k: by_content(v) for k, v in value.items()}
        return value

    return by_content(values)
