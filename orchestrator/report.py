"""What one submission did: counts for the command line, the tests and the benchmarks."""
from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.storage import StorePath


@dataclass
class SubmitReport:
    sweep: str
    store_root: StorePath  # a local folder or an object store's (orchestrator.storage)
    tracking_uri: str
    cells: int
    shards_total: int
    shards_skipped: int
    shards_run: int = 0
    shards_failed: list[str] = field(default_factory=list)
    cells_unfinished: list[str] = field(default_factory=list)  # all rows on disk, summary or MLflow failed
    retries: int = 0
    replica_restarts: int = 0
    generate_calls: int = 0
    calls_by_model: dict[str, int] = field(default_factory=dict)  # requests each pool served
    replicas_started: int = 0
    replicas_reused: int = 0  # of those, kept replicas found running (cluster.keep_replicas)
    models_started: list[str] = field(default_factory=list)  # the pools this submission started
    replica_threads: dict[str, int | None] = field(default_factory=dict)  # pool -> torch threads of a replica
    stage_shards_run: dict[str, int] = field(default_factory=dict)  # stage -> shards of it computed
    cells_summarised: int = 0
    rows_written: int = 0
    cells_logged: int = 0
    mlflow_skipped: str = ""  # why MLflow could not be reached (`orchestrate sync` logs the cells later)
    finetunes_trained: int = 0
    dashboard_url: str | None = None
    seconds: float = 0.0
    startup_seconds: float = 0.0  # submit start -> Ray up, finetunes done and every replica loaded
    shards_seconds: float = 0.0  # end of startup -> the last shard written (the requests themselves)

    @property
    def ok(self) -> bool:
        return not self.shards_failed and not self.cells_unfinished
