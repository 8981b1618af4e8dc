"""`orchestrate submit`: plan the sweep, run the stages not on disk yet, summarise and log cells.

What is done is decided from the store alone (a shard file exists or it does not), so a
submission can stop anywhere and the next one picks up the rest; a finished sweep resubmitted
starts no Ray and loads no model (its summaries are recomputed: see
`orchestrator.summaries`). The state of the last submission is kept in
`<output>/<sweep>/submission.json` for `orchestrate status`, with the MLflow run that holds its
cells (`mlflow_run_id`, `tracking_uri`) for `orchestrate report`.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from types import ModuleType

from rich.console import Console

from orchestrator.plan import Shard, make_plan
from orchestrator.progress import SweepProgress
from orchestrator.report import SubmitReport
from orchestrator.scheduler import Scheduler
from orchestrator.spec import Sweep
from orchestrator.store import SweepStore, read_json, write_json
from orchestrator.summaries import finish_cell_or_say_why
from orchestrator.tracking import Tracker, default_tracking_uri


def project_packages() -> list[ModuleType]:
    """The project's packages, which a joined cluster's workers get from the driver."""
    import actors
    import cluster
    import jobs
    import orchestrator

    return [actors, cluster, jobs, orchestrator]


def last_parent_run(store: SweepStore, uri: str) -> dict[str, str]:
    """The MLflow parent run the previous submission recorded, when it logged to the same
    tracking URI: a submission that logs nothing new leaves the cells' runs where they are."""
    path = store.root / "submission.json"
    last = read_json(path) if path.exists() else {}
    if last.get("mlflow_run_id") and last.get("tracking_uri") == uri:
        return {"mlflow_run_id": last["mlflow_run_id"], "tracking_uri": uri}
    return {}


def submit(sweep: Sweep, *, sweep_file: str | None = None, address: str | None = None, output: str | None = None,
           console: Console | None = None, progress: bool = True, max_retries: int = 2, track: bool = True,
           ray_temp_dir: str | None = None) -> SubmitReport:
    """Plan the sweep, run the stages not on disk yet, summarise every complete cell. A sweep
    whose stages are all on disk starts no Ray and loads no model: its summaries are
    recomputed with the sweep's summary parameters and logged when they changed."""
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
        missing = store.missing(cell, cell.last_stage)  # a missing earlier stage misses its last one too
        if missing:
            pending[cell.id] = missing
    complete = [c for c in plan.cells if c.id not in pending]
    uri = sweep.tracking.uri or default_tracking_uri(store.root)
    n_shards = sum(len(c.shards) for c in plan.cells)
    n_pending = sum(len(v) for v in pending.values())
    report = SubmitReport(sweep=sweep.name, store_root=store.root, tracking_uri=uri, cells=len(plan.cells),
                          shards_total=n_shards, shards_skipped=n_shards - n_pending)
    if left := store.left_behind():
        console.print(f"[yellow]{len(left)} cell folder(s) from before stages are not read (their rows stay on "
                      f"disk; this sweep computes them under their new ids): {', '.join(p.name for p in left[:5])}"
                      + (" ..." if len(left) > 5 else ""))
    store.root.mkdir(parents=True, exist_ok=True)
    tracking: dict[str, Tracker | None] = {}
    starting = threading.Lock()  # cells finish in worker threads, two at a time

    status = "FAILED"
    submission: dict[str, object] = {
        "state": "running", "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sweep_file": str(sweep_file or ""), "pending_shards": n_pending, **last_parent_run(store, uri)}
    write_json(store.root / "submission.json", submission)

    def tracker() -> Tracker | None:
        """MLflow, started the first time something is logged: a summary that did not change
        opens no run (and the parent run of the last submission that logged stays the one
        recorded)."""
        with starting:
            if "t" not in tracking:
                tracking["t"] = Tracker(uri, sweep.tracking.experiment or sweep.name, sweep.name,
                                        store_root=store.root, finetunes=sweep.finetunes) if track else None
                if tracking["t"] is not None:
                    run_id = tracking["t"].start_submission(sweep_file, len(plan.cells), n_pending)
                    submission.update(mlflow_run_id=run_id, tracking_uri=uri)  # known even if this run dies
                    write_json(store.root / "submission.json", submission)
            return tracking["t"]

    try:
        for cell in complete:  # the summary stage: recomputed, logged when it changed
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
                with SweepProgress(console, n_pending, n_samples, enabled=progress) as bar:
                    scheduler = Scheduler(sweep, plan, store, tracker, console, report, max_retries,
                                          fixed_cluster=not (address or c.address or os.environ.get("RAY_ADDRESS")))
                    scheduler.started = started
                    asyncio.run(scheduler.run(pending, bar))
        elif not report.cells_logged:
            console.print(f"[green]{sweep.name}: all {n_shards} shards of {len(plan.cells)} cells are done; "
                          "summaries recomputed, nothing to run.")
        status = "FINISHED" if report.ok else "FAILED"
    finally:
        report.seconds = time.perf_counter() - started
        write_json(store.root / "submission.json", {**submission, "state": status.lower(),
                                                    "failed_shards": report.shards_failed, "seconds": report.seconds})
        if tracking.get("t") is not None:
            tracking["t"].end_submission(status, {  # type: ignore[union-attr]
                "shards_run": report.shards_run, "shards_failed": len(report.shards_failed),
                "seconds": report.seconds, "retries": report.retries})
    return report
