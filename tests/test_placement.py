"""Tensor-parallel placement on a real (logical) two-node Ray cluster: GPUs are declared,
not present, which is all placement needs."""
from __future__ import annotations

import pytest
import ray

from actors.placement import (
    GPUNode,
    TensorParallelPlacement,
    plan_ranks,
    replica_placement,
    reserve_tensor_parallel,
)
from tests.conftest import logical_gpu_cluster


def test_plan_prefers_one_node_and_the_fullest_that_fits():
    nodes = [GPUNode("a", 8), GPUNode("b", 2), GPUNode("c", 4)]
    assert plan_ranks(2, nodes) == ["b", "b"]
    assert plan_ranks(4, nodes) == ["c"] * 4
    assert plan_ranks(8, nodes) == ["a"] * 8


def test_plan_spans_fewest_nodes_with_ranks_grouped_by_node():
    nodes = [GPUNode("a", 2), GPUNode("b", 3), GPUNode("c", 1)]
    assert plan_ranks(5, nodes) == ["b", "b", "b", "a", "a"]
    assert plan_ranks(6, nodes) == ["b", "b", "b", "a", "a", "c"]
    with pytest.raises(ValueError, match="needs 7 free GPUs"):
        plan_ranks(7, nodes)


@pytest.fixture(scope="module")
def two_gpu_nodes():
    with logical_gpu_cluster(nodes=2, gpus=2, cpus=1) as cluster:
        yield cluster


@ray.remote
class Probe:
    def where(self) -> dict:
        group = ray.util.get_current_placement_group()  # how vLLM finds the group it runs in
        return {"node": ray.get_runtime_context().get_node_id(), "gpus": sorted(ray.get_gpu_ids()),
                "group": group.id.hex() if group else None}


def place_probe(placement: TensorParallelPlacement) -> dict:
    probe = Probe.options(**placement.actor_options()).remote()
    try:
        return ray.get(probe.where.remote(), timeout=60)
    finally:
        ray.kill(probe)


def test_single_node_replica_holds_all_its_gpus_in_one_bundle(two_gpu_nodes):
    placement = reserve_tensor_parallel(2, num_cpus=0.5, timeout_s=60)
    try:
        assert placement.single_node and len(placement.bundle_nodes()) == 1
        assert placement.engine_options() == {"distributed_executor_backend": "mp"}
        seen = place_probe(placement)
        assert seen["node"] == placement.rank_nodes[0], "the replica runs where its GPUs are"
        assert len(seen["gpus"]) == 2, f"the replica should see both its GPUs, saw {seen['gpus']}"
    finally:
        placement.remove()


def test_multi_node_bundles_are_ordered_by_node(two_gpu_nodes):
    placement = reserve_tensor_parallel(4, num_cpus=0.5, timeout_s=60)
    try:
        placed = placement.bundle_nodes()
        assert placed == list(placement.rank_nodes), "each bundle sits on its planned node"
        assert len(set(placed)) == 2 and placed[0] == placed[1] and placed[2] == placed[3], (
            f"ranks must be grouped by node, got {placed}"
        )
        assert placement.engine_options() == {"distributed_executor_backend": "ray"}
        seen = place_probe(placement)
        assert seen["node"] == placed[0] and seen["gpus"] == [], "the replica takes bundle 0's CPUs, no GPU"
        assert seen["group"] == placement.placement_group.id.hex(), "vLLM finds its group from inside the replica"
    finally:
        placement.remove()


def test_the_pool_asks_for_a_group_only_for_a_sharded_vllm_replica(two_gpu_nodes):
    """What ReplicaPool._spawn calls: a vllm replica over 3 GPUs spans both nodes (2 + 1,
    grouped), anything smaller or not vllm gets plain actor options."""
    vllm = {"engine": "vllm", "tensor_parallel": 3}
    assert replica_placement({**vllm, "tensor_parallel": 1}, num_cpus=0.5, num_gpus=1) is None
    assert replica_placement({**vllm, "engine": "hf"}, num_cpus=0.5, num_gpus=3) is None
    assert replica_placement(vllm, num_cpus=0.5, num_gpus=0) is None, "no GPUs in the sweep: vLLM's CPU ranks"
    placement = replica_placement(vllm, num_cpus=0.5, num_gpus=3, timeout_s=60)
    try:
        placed = placement.bundle_nodes()
        assert len(placed) == 3 and len(set(placed)) == 2 and placed[0] == placed[1], placed
        assert placement.engine_options() == {"distributed_executor_backend": "ray"}
        assert placement.actor_options()["num_gpus"] == 0
    finally:
        placement.remove()
