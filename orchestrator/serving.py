"""How a sweep's models become replica pools: one pool per base model (adapters and LoRA
finetunes ride on their base's replicas), each replica's spec as it builds its engine, and
the resources and threads it gets."""
from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from actors.engines.hf.options import default_batch_size
from jobs.organisms.build import resolve_model_path
from orchestrator.ids import content_id
from orchestrator.spec import ModelSpec, Sweep

Pools = dict[str, tuple[dict[str, Any], dict[str, str]]]  # pool name -> (replica spec, adapter name -> path)
Served = dict[str, tuple[str, str | None]]  # model name -> (pool name, adapter)


def serving_spec(m: ModelSpec) -> dict[str, Any]:
    """A model entry as a replica builds it: JSON, with an organism's name turned into its
    built folder (built or copied from the bundle here, on the driver, before any replica
    starts), in `path` and in a `tokenizer_path` option alike."""
    spec = m.model_dump(mode="json")
    spec["path"] = resolve_model_path(spec["path"])
    if m.chat_template is not None:  # its text: a replica on another node has no such file
        spec["chat_template"] = Path(m.chat_template).read_text(encoding="utf-8")
    tokenizer = spec["engine_options"].get("tokenizer_path")
    if isinstance(tokenizer, str):
        spec["engine_options"] = {**spec["engine_options"], "tokenizer_path": resolve_model_path(tokenizer)}
    return spec


def pool_resources(spec: dict[str, Any], cluster_gpus: float) -> tuple[float, float]:
    num_gpus = spec.get("num_gpus")
    if num_gpus is None:  # an engine that can use GPUs takes one per tensor-parallel rank
        num_gpus = float(spec.get("tensor_parallel", 1)) if cluster_gpus and spec["engine"] in ("hf", "vllm") else 0.0
    return float(spec.get("num_cpus", 1)), float(num_gpus)


def share_cores(pools: Pools, cores: float) -> None:
    """On a cluster that is the driver's machine alone (an embedded Ray, or a `ray start
    --head` here) without GPUs, give each hf replica whose threads the sweep leaves unset an
    equal share of the machine's cores. Ray would give it num_cpus threads (1 by default),
    which left one of two cores idle on a one-model sweep; the CPUs Ray counts for placement
    stay as they are."""
    local = [spec for spec, _ in pools.values() if spec["engine"] in ("hf", "vllm")]
    share = max(1, int(cores // max(1, sum(spec["replicas"] for spec in local))))
    for spec in local:
        options = spec.get("engine_options") or {}
        if spec["engine"] == "hf" and options.get("threads") is None:
            spec["engine_options"] = {**options, "threads": share}


def pool_layout(sweep: Sweep, models: set[str], finetuned: dict[str, Any]) -> tuple[Pools, Served]:
    """The pools serving `models` (finetunes already trained: `finetuned` holds their results)
    and, per model, the pool and adapter that answer for it. N finetuned variants of one base
    cost one base load."""
    pools: Pools = {}
    served: Served = {}
    for name in sorted(models):
        if name in finetuned:
            result, base = finetuned[name], sweep.finetunes[name].base
            if result.method == "lora":
                pools.setdefault(base, (serving_spec(sweep.models[base]), {}))[1][name] = result.weights_location
                served[name] = (base, name)
            else:  # a full finetune is a model of its own
                pools[name] = ({**serving_spec(sweep.models[base]), "path": result.weights_location}, {})
                served[name] = (name, None)
            continue
        m = sweep.models[name]
        if m.adapter and m.base:  # an adapter entry names its base (checked by the spec)
            pools.setdefault(m.base, (serving_spec(sweep.models[m.base]), {}))[1][name] = m.adapter
            served[name] = (m.base, name)
        else:
            pools.setdefault(name, (serving_spec(m), {}))
            served[name] = (name, None)
    return pools, served


def pool_specs(sweep: Sweep, models: set[str]) -> dict[str, dict[str, Any]]:
    """The replica pools `models` will need, by pool name, known before any finetune trains
    (for the capacity check): a LoRA finetune or an adapter rides on its base's pool, a full
    finetune gets its own."""
    pools: dict[str, dict[str, Any]] = {}
    for name in sorted(models):
        if name in sweep.finetunes:
            ft = sweep.finetunes[name]
            pools.setdefault(ft.base if ft.method == "lora" else name, serving_spec(sweep.models[ft.base]))
            continue
        m = sweep.models[name]
        pool = m.base if m.adapter and m.base else name
        pools.setdefault(pool, serving_spec(sweep.models[pool]))
    return pools


def shards_in_flight(pools: list[tuple[dict[str, Any], int, float]], samples_per_shard: int) -> int:
    """How many shards run at once: enough that every replica has a full batch decoding and as
    many requests queued to join it as rows finish, at least two per replica. Counting shards
    alone (two per replica) left a replica of batch 64 with 64 requests of two 32-sample
    shards, its batch draining at every shard's end. Samples stand for requests here: a job
    that sends several per sample only queues more. pools: (replica spec, replicas, GPUs of
    each replica)."""
    replicas = sum(n for _, n, _ in pools)
    batch = sum(n * _batch_of(spec, gpus) for spec, n, gpus in pools)
    return max(2, 2 * replicas, -(-2 * batch // max(1, samples_per_shard)))


def _batch_of(spec: dict[str, Any], gpus: float) -> int:
    """The requests a replica of `spec` works on at once: the hf engine's batch (its own
    default for the device it will use), else the replica's max_concurrency (the openai
    engine's requests in flight; vLLM schedules its own)."""
    if spec["engine"] == "hf":
        options = spec.get("engine_options") or {}
        if options.get("max_batch_size") is not None:
            return int(options["max_batch_size"])
        device = options.get("device") or ("cuda" if gpus else "cpu")  # no GPU granted: Ray hides them all
        return default_batch_size(str(device).split(":")[0])  # "cuda:1" is a cuda device
    return int(spec.get("max_concurrency", ModelSpec.model_fields["max_concurrency"].default))


def warm_key(spec: dict[str, Any], adapters: dict[str, str], cpus: float, gpus: float) -> str:
    """What a kept replica is (`cluster.keep_replicas`): its spec, the files it loads (names,
    sizes and times: a replaced checkpoint makes a new key without hashing gigabytes), its
    adapters, its resources and the replica code itself. A driver reuses a running replica
    only under the same key."""
    return content_id({"spec": spec, "files": _listing(spec["path"]),
                       "adapters": {name: _listing(path) for name, path in sorted(adapters.items())},
                       "cpus": cpus, "gpus": gpus, "code": _replica_code()}, length=12)


def _listing(path: str) -> list[tuple[str, int, int]] | str:
    folder = Path(path)
    if not folder.is_dir():
        return path  # a hub id or a remote location: its name (and the spec's revision)
    return sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                  for f in folder.rglob("*") if f.is_file())


@cache
def _replica_code() -> str:
    import actors

    root = Path(actors.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()
