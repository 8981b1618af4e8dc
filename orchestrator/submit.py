"""`orchestrate submit`: plan the sweep, run what is not on disk yet, log finished cells.

What is done is decided from the store alone (a shard file exists or it does not), so a
submission can stop anywhere and the next one picks up the rest; a finished sweep resubmitted
starts no Ray and loads no model. The state of the last submission is kept in
`<output>/<sweep>/submission.json` for `orchestrate status`.
"""
from __future__ import annotations

import asyncio
import os
import time
from types import ModuleType

from rich.console import Console

from orchestrator.plan import Shard, make_plan
from orchestrator.progress import SweepProgress
from orchestrator.scheduler import Scheduler, SubmitReport, finish_cell_or_say_why
from orchestrator.spec import Sweep
from orchestrator.store import SweepStore, write_json
from orchestrator.tracking import Tracker, default_tracking_uri


def project_packages() -> list[ModuleType]:
    """The project's packages, which a joined cluster's workers get from the driver."""
    import actors
    import cluster
    import jobs
    import orchestrator

    return [actors, cluster, jobs, orchestrator]


def submit(sweep: Sweep, *, sweep_file: str | None = None, address: str | None = None, output: str | None = None,
           console: Console | None = None, progress: bool = True, max_retries: int = 2, track: bool = True,
           ray_temp_dir: str | None = None) -> SubmitReport:
    """Plan the sweep, run what is not on disk yet, log finished cells. Resubmitting a finished
    sweep starts no Ray and loads no model."""
    from cluster.connect import ray_session

    started = time.perf_counter()
    console = console or Console(stderr=True)
    store = SweepStore(output or sweep.output, sweep.name)
    planned = make_plan(sweep)
    plan = store.settle_plan(planned)
    for cell, asked in zip(plan.cells, planned.cells):
        if cell.shard_size != asked.shard_size:
            console.print(f"{cell.kind}/{cell.model} {cell.id}: keeps the shard_size {cell.shard_size} it started "
                          f"with (the sweep says {asked.shard_size}; changing it mid-cell would repeat samples)")
    pending: dict[str, list[Shard]] = {}
    for cell in plan.cells:
        write_json(store.cell_dir(cell.kind, cell.id) / "cell.json", cell.manifest())
        missing = [s for s in cell.shards if not store.has_shard(cell.kind, cell.id, s.id)]
        if missing:
            pending[cell.id] = missing
    unlogged = [c for c in plan.cells
                if c.id not in pending and not (store.cell_dir(c.kind, c.id) / "mlflow.json").exists()]
    uri = sweep.tracking.uri or default_tracking_uri(store.root)
    n_shards = sum(len(c.shards) for c in plan.cells)
    report = SubmitReport(sweep=sweep.name, store_root=store.root, tracking_uri=uri, cells=len(plan.cells),
                          shards_total=n_shards, shards_skipped=n_shards - sum(len(v) for v in pending.values()))
    if not pending and not unlogged:
        console.print(f"[green]{sweep.name}: all {n_shards} shards of {len(plan.cells)} cells are done; "
                      "nothing to run.")
        report.seconds = time.perf_counter() - started
        return report
    store.root.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(uri, sweep.tracking.experiment or sweep.name, sweep.name) if track else None
    if tracker:
        tracker.start_submission(sweep_file, len(plan.cells), sum(len(v) for v in pending.values()))
    status = "FAILED"
    submission = {"state": "running", "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "sweep_file": str(sweep_file or ""), "pending_shards": sum(len(v) for v in pending.values())}
    write_json(store.root / "submission.json", submission)
    try:
        for cell in unlogged:  # complete on disk from an earlier run that stopped before logging
            finish_cell_or_say_why(store, tracker, cell, report, console, earlier_rows=True)
        if pending:
            c = sweep.cluster
            with ray_session(address=address or c.address, namespace=c.namespace or f"orchestrate-{sweep.name}",
                             num_cpus=c.num_cpus, num_gpus=c.num_gpus, dashboard=c.dashboard, temp_dir=ray_temp_dir,
                             py_modules=project_packages()) as session:
                report.dashboard_url = session.dashboard_url
                if session.dashboard_url:
                    console.print(f"Ray dashboard: [link]{session.dashboard_url}[/link]")
                n_samples = sum(len(s.sample_ids) for v in pending.values() for s in v)
                with SweepProgress(console, sum(len(v) for v in pending.values()), n_samples, enabled=progress) as bar:
                    scheduler = Scheduler(sweep, plan, store, tracker, console, report, max_retries,
                                          fixed_cluster=not (address or c.address or os.environ.get("RAY_ADDRESS")))
                    scheduler.started = started
                    asyncio.run(scheduler.run(pending, bar))
        status = "FINISHED" if report.ok else "FAILED"
    finally:
        report.seconds = time.perf_counter() - started
        write_json(store.root / "submission.json", {**submission, "state": status.lower(),
                                                    "failed_shards": report.shards_failed, "seconds": report.seconds})
        if tracker:
            tracker.end_submission(status, {"shards_run": report.shards_run, "shards_failed": len(report.shards_failed),
                                            "seconds": report.seconds, "retries": report.retries})
    return report
