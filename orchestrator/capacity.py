"""Will the sweep fit? Its needs placed on the cluster's nodes before anything starts.

Totals mislead: eight free GPUs on two nodes of four cannot hold a replica sharded over eight
unless it may span nodes, and a replica wanting one GPU and eight CPUs fits no node with eight
CPUs once another replica took two. So each need is placed on a node (or, for a tensor-parallel
replica no single node can hold, rank by rank across nodes, as `actors.placement` will), the
largest first, and whatever cannot be placed is named with what the nodes have left.

A submission has two phases that never overlap: finetunes (one at a time, each with its
ranks at once), then every replica at once. Each phase is placed on the whole cluster.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

EPS = 1e-9


@dataclass(frozen=True)
class Need:
    """What one replica or one training rank takes."""

    what: str  # "replica 2 of `judge`", "rank 1 of finetune `em`"
    cpus: float
    gpus: float  # in all (a tensor-parallel replica: its ranks together)
    tensor_parallel: int = 1  # ranks that may sit on different nodes when no node holds all


@dataclass
class Node:
    node_id: str
    cpus: float
    gpus: float
    placed: list[str] = field(default_factory=list)

    def holds(self, cpus: float, gpus: float) -> bool:
        return self.cpus + EPS >= cpus and self.gpus + EPS >= gpus

    def take(self, what: str, cpus: float, gpus: float) -> None:
        self.cpus -= cpus
        self.gpus -= gpus
        self.placed.append(what)


def _place(need: Need, nodes: list[Node]) -> bool:
    # one node: the fullest that fits, keeping emptier nodes whole for larger needs
    fitting = [n for n in nodes if n.holds(need.cpus, need.gpus)]
    if fitting:
        min(fitting, key=lambda n: (n.gpus, n.cpus, n.node_id)).take(need.what, need.cpus, need.gpus)
        return True
    if need.tensor_parallel < 2 or need.gpus < need.tensor_parallel - EPS:
        return False
    # across nodes, whole GPUs rank by rank on the nodes with the most free (the replica's
    # CPUs beside its first rank), as the placement group will ask
    per_rank = need.gpus / need.tensor_parallel
    order = sorted(nodes, key=lambda n: (-n.gpus, n.node_id))
    ranks = [n for n in order for _ in range(int((n.gpus + EPS) // per_rank))][: need.tensor_parallel]
    if len(ranks) < need.tensor_parallel or not ranks[0].holds(need.cpus, per_rank):
        return False
    for i, node in enumerate(ranks):
        node.take(f"{need.what} rank {i}", need.cpus if i == 0 else 0.0, per_rank)
    return True


def place(needs: Sequence[Need], nodes: Sequence[Node]) -> tuple[list[Node], list[str]]:
    """Place `needs` on copies of `nodes`, largest first: (the nodes with what each holds,
    one line per need that did not fit)."""
    free = [Node(n.node_id, n.cpus, n.gpus) for n in nodes]
    missing = []
    for need in sorted(needs, key=lambda n: (-n.gpus, -n.cpus, n.what)):
        if not _place(need, free):
            shape = (f"{need.gpus:g} GPU(s) on one node" + (" or one per rank across nodes"
                                                            if need.tensor_parallel > 1 else "")
                     + f" and {need.cpus:g} CPU(s)")
            missing.append(f"{need.what} needs {shape}")
    return free, missing


def describe(nodes: Sequence[Node]) -> str:
    return "; ".join(f"{n.node_id[:12]}: {n.gpus:g} GPU, {n.cpus:g} CPU" for n in nodes) or "no nodes"


def cluster_nodes() -> list[Node]:
    """The live nodes of the connected Ray cluster, with their total resources."""
    import ray

    return [Node(n["NodeID"], float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n["Alive"]]


def autoscaling() -> bool | None:
    """Whether an autoscaler reports to the cluster (it may add nodes the check cannot see);
    None when Ray does not say."""
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        return str(status.stats.autoscaler_version) not in ("", "0", "None")
    except Exception:  # an internal API: its absence must not stop a sweep
        return None


def only_this_machine() -> bool:
    """Whether the cluster is the driver's own machine and nothing else: one node, the
    driver's, and no autoscaler that may add others (a `ray start --head` on a workstation).
    Its cores are then this machine's to share, as on an embedded Ray."""
    import ray

    nodes = cluster_nodes()
    return (len(nodes) == 1 and nodes[0].node_id == ray.get_runtime_context().get_node_id()
            and autoscaling() is False)
