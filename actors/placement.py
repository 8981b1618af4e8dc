"""Where a tensor-parallel replica's GPUs are: one Ray placement group per replica.

One node (the usual case): a single bundle holding all TP GPUs and the replica's CPUs. The
replica actor takes that bundle, Ray sets CUDA_VISIBLE_DEVICES to its GPUs, and vLLM starts
its TP workers as local processes (the `mp` backend).

Several nodes (a model no single free node can hold): one bundle per GPU, ordered by node and
pinned to it by Ray's `ray.io/node-id` label, so consecutive ranks share a node and only the
node boundaries cross the network. vLLM's `ray` backend starts one worker per bundle inside
the group it finds itself in; the replica actor sits in bundle 0 for its CPUs and holds no GPU
itself. vLLM refuses bundles with more than one GPU in this mode, hence one per bundle.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

NODE_ID_LABEL = "ray.io/node-id"


@dataclass(frozen=True)
class GPUNode:
    node_id: str
    gpus: int  # GPUs free for new placement groups


def plan_ranks(tp: int, nodes: Sequence[GPUNode]) -> list[str]:
    """The node of each TP rank. One node when any can hold all ranks (the fullest such node,
    keeping emptier ones whole for larger replicas); otherwise the nodes with the most free
    GPUs, filled in turn, so the group spans as few nodes as possible."""
    assert tp > 0, f"tensor parallel size must be positive, got {tp}"
    fitting = [n for n in nodes if n.gpus >= tp]
    if fitting:
        best = min(fitting, key=lambda n: (n.gpus, n.node_id))
        return [best.node_id] * tp
    ranks: list[str] = []
    for node in sorted(nodes, key=lambda n: (-n.gpus, n.node_id)):
        ranks += [node.node_id] * min(node.gpus, tp - len(ranks))
        if len(ranks) == tp:
            return ranks
    raise ValueError(f"tensor parallel size {tp} needs {tp} free GPUs; the cluster has {sum(n.gpus for n in nodes)}")


def gpu_nodes(*, free: bool) -> list[GPUNode]:
    """Live nodes with GPUs: all of them (free=False) or those free now (free=True)."""
    if free:
        from ray._private.state import (
            available_resources_per_node,  # what vLLM's own placement reads
        )

        resources = available_resources_per_node()
    else:
        resources = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    return [GPUNode(node, int(res.get("GPU", 0))) for node, res in sorted(resources.items()) if res.get("GPU", 0) >= 1]


@dataclass(frozen=True)
class TensorParallelPlacement:
    placement_group: PlacementGroup
    rank_nodes: tuple[str, ...]  # node id of each TP rank, in bundle order
    num_cpus: float

    @property
    def tp(self) -> int:
        return len(self.rank_nodes)

    @property
    def single_node(self) -> bool:
        return len(set(self.rank_nodes)) == 1

    def actor_options(self) -> dict[str, Any]:
        """Options for the replica actor (`ModelReplica.options(**...)`): bundle 0."""
        return {
            "num_cpus": self.num_cpus,
            "num_gpus": self.tp if self.single_node else 0,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.placement_group, placement_group_bundle_index=0,
                # vLLM's ray workers must land in this group's bundles, not anywhere.
                placement_group_capture_child_tasks=not self.single_node,
            ),
        }

    def engine_options(self) -> dict[str, Any]:
        """vLLM engine options that match the placement."""
        if self.tp == 1:
            return {}
        return {"distributed_executor_backend": "mp" if self.single_node else "ray"}

    def bundle_nodes(self) -> list[str]:
        """The node each bundle was placed on, as Ray reports it."""
        table = ray.util.placement_group_table(self.placement_group)
        return [table["bundles_to_node_id"][i] for i in range(len(table["bundles"]))]

    def remove(self) -> None:
        remove_placement_group(self.placement_group)


def reserve_tensor_parallel(
    tp: int, *, num_cpus: float = 1.0, nodes: Sequence[GPUNode] | None = None, name: str = "",
    timeout_s: float = 600.0,
) -> TensorParallelPlacement:
    """Reserve TP GPUs for one replica and wait until Ray has placed them. nodes: the GPUs of
    each node to plan with (default: Ray's view; free GPUs first, all GPUs when too few are
    free now, and the group then waits for them)."""
    if nodes is None:
        free = gpu_nodes(free=True)
        whole = gpu_nodes(free=False)
        nodes = free if sum(n.gpus for n in free) >= tp else whole
        one_node = any(n.gpus >= tp for n in whole)
    else:
        one_node = any(n.gpus >= tp for n in nodes)
    if one_node:
        # Any node with room will do: Ray picks it, and waits for one when all are busy.
        bundles = [{"GPU": float(tp), "CPU": float(num_cpus)}]
        group = placement_group(bundles, strategy="STRICT_PACK", name=name)
        _wait(group, timeout_s)
        ranks = [ray.util.placement_group_table(group)["bundles_to_node_id"][0]] * tp
    else:
        ranks = plan_ranks(tp, nodes)
        bundles = [{"GPU": 1.0, **({"CPU": float(num_cpus)} if i == 0 else {})} for i in range(tp)]
        group = placement_group(
            bundles, strategy="PACK", name=name, bundle_label_selector=[{NODE_ID_LABEL: node} for node in ranks],
        )
        _wait(group, timeout_s)
    return TensorParallelPlacement(group, tuple(ranks), num_cpus)


def replica_placement(spec: dict[str, Any], *, num_cpus: float, num_gpus: float, name: str = "",
                      timeout_s: float = 600.0) -> TensorParallelPlacement | None:
    """The placement group a replica of `spec` (a model spec as a dict) needs: one for a vllm
    replica sharded over several GPUs, None when plain actor options do (one GPU or none)."""
    tp = int(spec.get("tensor_parallel", 1))
    if spec.get("engine") != "vllm" or tp <= 1 or num_gpus <= 0:
        return None
    return reserve_tensor_parallel(tp, num_cpus=num_cpus, name=name, timeout_s=timeout_s)


def _wait(group: PlacementGroup, timeout_s: float) -> None:
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except BaseException:
        remove_placement_group(group)
        raise
