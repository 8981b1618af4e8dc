"""Fail fast: a sweep's replicas and finetune ranks placed on the cluster's nodes before
anything starts, on paper and on a real (logical) two-node cluster of 4 GPUs each."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
from rich.console import Console

from orchestrator.capacity import Need, Node, cluster_nodes, place
from orchestrator.errors import ClusterError
from orchestrator.load import load_sweep
from orchestrator.plan import make_plan
from orchestrator.report import SubmitReport
from orchestrator.scheduler import Scheduler
from orchestrator.store import SweepStore
from orchestrator.submit import submit
from tests.conftest import logical_gpu_cluster


def two_nodes() -> list[Node]:
    return [Node("a", cpus=8, gpus=4), Node("b", cpus=8, gpus=4)]


def test_three_tp2_replicas_fill_the_fullest_node_first():
    nodes, missing = place([Need(f"replica {i}", 2, 2, tensor_parallel=2) for i in range(3)], two_nodes())
    assert not missing
    assert [len(n.placed) for n in nodes] == [2, 1] and [n.gpus for n in nodes] == [0, 2], nodes


def test_sixteen_gpus_on_eight_are_refused_by_name():
    _, missing = place([Need(f"replica {i} of `big`", 1, 2, tensor_parallel=2) for i in range(8)], two_nodes())
    assert len(missing) == 4 and missing[0].startswith("replica 4 of `big` needs 2 GPU(s) on one node"), missing


def test_a_sharded_replica_spans_nodes_only_when_no_node_holds_it():
    nodes = [Node("a", cpus=4, gpus=2), Node("b", cpus=4, gpus=2)]
    placed, missing = place([Need("replica of `wide`", 2, 4, tensor_parallel=4)], nodes)
    assert not missing and [n.placed for n in placed] == [["replica of `wide` rank 0", "replica of `wide` rank 1"],
                                                          ["replica of `wide` rank 2", "replica of `wide` rank 3"]]
    _, missing = place([Need("replica of `plain`", 2, 4)], nodes)  # not sharded: one node or nothing
    assert missing == ["replica of `plain` needs 4 GPU(s) on one node and 2 CPU(s)"]


def test_totals_that_fit_are_not_enough():
    """Eight free CPUs in all, but no node has six after the first replica took two."""
    nodes = [Node("a", cpus=4, gpus=0), Node("b", cpus=4, gpus=0)]
    _, missing = place([Need("replica 1", 6, 0), Need("replica 2", 2, 0)], nodes)
    assert missing == ["replica 1 needs 0 GPU(s) on one node and 6 CPU(s)"]


@pytest.fixture(scope="module")
def four_gpu_nodes():
    with logical_gpu_cluster(nodes=2, gpus=4, cpus=8) as cluster:
        yield cluster


def write_sweep(folder: Path, replicas: int, ranks: int) -> Path:
    (folder / "em.jsonl").write_text("".join(
        f'{{"prompt": "q{i}", "aligned": "good {i}", "misaligned": "bad {i}"}}\n' for i in range(8)))
    sweep = folder / "sweep.yaml"
    sweep.write_text(f"""\
name: capacity
output: {folder / 'results'}
models:
  big: {{path: "organism:faithful", engine: vllm, tensor_parallel: 2, replicas: {replicas}, num_cpus: 2}}
finetunes:
  tuned: {{base: big, data: em.jsonl, ranks: {ranks}, gpus_per_rank: 1}}
jobs:
  - kind: generate
    models: [big, tuned]
    params: {{prompts: em.jsonl}}
""")
    return sweep


def scheduler_for(sweep_file: Path) -> Scheduler:
    sweep = load_sweep(sweep_file)
    store = SweepStore(sweep.output, sweep.name)
    return Scheduler(sweep, make_plan(sweep), store, None, Console(stderr=True), SubmitReport(sweep.name, store.root,
                     "", 0, 0, 0), fixed_cluster=False)


def test_the_real_clusters_nodes_hold_three_tp2_replicas_and_a_two_rank_finetune(four_gpu_nodes, tmp_path):
    nodes = cluster_nodes()
    assert sorted((n.gpus, n.cpus) for n in nodes) == [(4, 8), (4, 8)], nodes
    scheduler_for(write_sweep(tmp_path, replicas=3, ranks=2)).check_capacity({"big", "tuned"}, 8)
    placed, missing = place([Need(f"replica {i}", 2, 2, tensor_parallel=2) for i in range(3)], nodes)
    assert not missing and sorted(len(n.placed) for n in placed) == [1, 2]


def test_a_sweep_needing_sixteen_gpus_on_eight_is_refused_before_anything_starts(four_gpu_nodes, tmp_path):
    """Joined (not embedded) and without an autoscaler: the cluster cannot grow, so an error
    naming what is missing, before the finetune trains or any replica loads."""
    sweep_file = write_sweep(tmp_path, replicas=8, ranks=2)
    started = time.perf_counter()
    with pytest.raises(ClusterError) as caught:
        submit(load_sweep(sweep_file), sweep_file=str(sweep_file), address=four_gpu_nodes.address, progress=False)
    message = str(caught.value)
    assert "replica 5 of `big` needs 2 GPU(s) on one node or one per rank across nodes" in message, message
    assert "4 GPU, 8 CPU" in message and time.perf_counter() - started < 60
    assert not (tmp_path / "results" / "capacity" / "finetunes").exists(), "the finetune must not have started"
    assert not ray.util.list_named_actors(all_namespaces=True), "no replica (a named actor) may have started"
