"""FinetuneGroup: DeepSpeed ranks as Ray actors, one per rank, placed together.

The group reserves one bundle per rank up front (a placement group, so a finetune that the
cluster cannot fit fails fast instead of hanging), asks rank 0's node for the rendezvous
address and a free port, and gives every rank its RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT. On GPUs the ranks of one node see all of the group's GPUs on that node
(as torchrun sets it up), so LOCAL_RANK indexes a visible device and NCCL can reach its
peers; on CPU the ranks use gloo. The step loop itself is `actors.training.loop`, which knows
nothing of Ray.

A rank that raises ends the run: the others would wait in a collective until its timeout,
so the group kills them at once. `RankDied` (a process lost) is worth a retry, which resumes
from the last checkpoint; `FinetuneFailed` (the code raised) is not.

A node-local config (results on an object store, no folder the nodes share) puts each rank's
work folder under its own node's scratch folder; when training is done rank 0 uploads the
output to the store and every rank drops its node's work folder (`FinetuneGroup.run`).
"""
from __future__ import annotations

import os
import shutil
import socket
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal, cast

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.errors import FinetuneFailed, RankDied
from actors.fetch import node_scratch, upload_folder
from actors.training.config import TrainConfig
from actors.training.data import MixedRow
from actors.training.loop import DistEnv, TrainResult

PLACEMENT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RankInfo:
    node_id: str
    ip: str
    gpu_ids: tuple[str, ...]


@ray.remote(max_restarts=0, max_task_retries=0)
class RankActor:
    """One training process. Holds nothing between calls but its environment."""

    def info(self) -> RankInfo:
        ctx = ray.get_runtime_context()
        return RankInfo(ctx.get_node_id(), ray.util.get_node_ip_address(),
                        tuple(str(g) for g in ray.get_gpu_ids()))

    def free_port(self) -> int:
        # Bound then released: another process could take it in between, but the group
        # starts the rendezvous right away, the same trade-off torchrun makes.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def train(self, config: TrainConfig, rows: list[MixedRow], env: DistEnv,
              visible_gpus: str | None) -> TrainResult:
        if visible_gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpus
        from actors.training.loop import train

        return train(on_this_node(config), rows, env)

    def upload(self, config: TrainConfig, uri: str) -> None:
        """The finished output of this node's work folder to the folder `uri` (rank 0's job)."""
        upload_folder(on_this_node(config).output_dir, uri)

    def clean(self, config: TrainConfig) -> None:
        """Drop this node's work folder (checkpoints, output) once the output is uploaded."""
        shutil.rmtree(on_this_node(config).work_dir, ignore_errors=True)

    def pid(self) -> int:
        return os.getpid()


def on_this_node(config: TrainConfig) -> TrainConfig:
    """A node-local config's folders under this node's scratch folder (they are given relative
    to it: the driver cannot know another node's temp folder); any other config as it is."""
    if not config.node_local:
        return config
    scratch = node_scratch()
    return config.model_copy(update={"work_dir": str(scratch / config.work_dir),
                                     "output_dir": str(scratch / config.output_dir)})


def rank_envs(infos: list[RankInfo], master_addr: str, master_port: int) -> list[tuple[DistEnv, str | None]]:
    """(DistEnv, CUDA_VISIBLE_DEVICES or None) per rank, ranks in the order given. LOCAL_RANK
    counts a rank's place among the group's ranks on its node; with GPUs, every rank of a
    node sees the group's GPUs of that node and LOCAL_RANK is its own GPU's index there."""
    on_node: dict[str, list[int]] = defaultdict(list)
    for rank, info in enumerate(infos):
        on_node[info.node_id].append(rank)
    out = []
    device: Literal["cpu", "cuda"]
    for rank, info in enumerate(infos):
        if info.gpu_ids:
            node_gpus = sorted({g for r in on_node[info.node_id] for g in infos[r].gpu_ids}, key=_gpu_order)
            local, visible, device = node_gpus.index(info.gpu_ids[0]), ",".join(node_gpus), "cuda"
        else:
            local, visible, device = on_node[info.node_id].index(rank), None, "cpu"
        out.append((DistEnv(rank, len(infos), local, master_addr, master_port, device), visible))
    return out


def _gpu_order(gpu_id: str) -> tuple[int, str]:
    return (int(gpu_id), "") if gpu_id.isdigit() else (1 << 30, gpu_id)


class FinetuneGroup:
    """`ranks` actors reserved together; `run` trains them on one config and returns rank
    0's result. Use as a context manager, or call `shutdown`."""

    def __init__(self, ranks: int, *, num_cpus_per_rank: float = 1, num_gpus_per_rank: float = 0,
                 name: str | None = None, placement_timeout_s: float = PLACEMENT_TIMEOUT_S) -> None:
        assert ranks >= 1, f"a finetune needs at least one rank, got {ranks}"
        self.ranks = ranks
        bundle: dict[str, float] = {"CPU": num_cpus_per_rank}
        if num_gpus_per_rank:
            bundle["GPU"] = num_gpus_per_rank
        self._pg = placement_group([dict(bundle) for _ in range(ranks)], strategy="PACK",
                                   name=f"{name}-finetune" if name else "")
        ready, _ = ray.wait([self._pg.ready()], timeout=placement_timeout_s)
        if not ready:
            remove_placement_group(self._pg)
            raise FinetuneFailed(
                f"the cluster cannot place {ranks} rank(s) of {bundle} within {placement_timeout_s:.0f}s "
                f"(available: {ray.available_resources()})")
        self.actors = [
            cast(Any, RankActor).options(  # Ray's actor class API is invisible to mypy
                num_cpus=num_cpus_per_rank, num_gpus=num_gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i),
                name=f"{name}-rank{i}" if name else None,
            ).remote()
            for i in range(ranks)
        ]

    def run(self, config: TrainConfig, rows: list[MixedRow], upload_to: str | None = None) -> TrainResult:
        """Train to the end on every rank; the first failure kills the whole group. upload_to:
        with a node-local config, the folder URI rank 0 uploads the output to when training
        is done (then every node's work folder is dropped)."""
        assert (upload_to is not None) == config.node_local, "a node-local output must be uploaded, and only one"
        try:
            infos = ray.get([a.info.remote() for a in self.actors])
            port = ray.get(self.actors[0].free_port.remote())
        except RayActorError as e:
            self.shutdown()
            raise RankDied(f"a rank was lost before training started: {e}") from e
        rows_ref = ray.put(rows)
        refs = [actor.train.remote(config, rows_ref, env, visible)
                for actor, (env, visible) in zip(self.actors, rank_envs(infos, infos[0].ip, port))]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except RayTaskError as e:
                self.shutdown()
                raise FinetuneFailed(f"rank {refs.index(done[0])} failed: {e.cause!r}") from e.cause
            except RayActorError as e:  # died or unreachable
                self.shutdown()
                raise RankDied(f"rank {refs.index(done[0])} died: {e}") from e
        result = ray.get(refs[0])
        if upload_to is not None:
            try:
                ray.get(self.actors[0].upload.remote(config, upload_to))
                ray.get([actor.clean.remote(config) for actor in self.actors])
            except RayTaskError as e:
                raise FinetuneFailed(f"uploading the output to {upload_to.split('?')[0]}: {e.cause!r}") from e.cause
            except RayActorError as e:
                raise RankDied(f"rank 0 died before its output was uploaded: {e}") from e
        return result

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self._pg is not None:
            remove_placement_group(self._pg)
            self._pg = None

    def __enter__(self) -> FinetuneGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
