"""`orchestrate submit`: plan the sweep, run the stages not on disk yet, summarise and log cells.

What is done is decided from the store alone (a shard file exists or it does not), so a
submission can stop anywhere and the next one picks up the rest; a finished sweep resubmitted
starts no Ray and loads no model (its summaries are recomputed: see
`orchestrator.summaries`). The state of the last submission is kept in
`<output>/<sweep>/submission.json` for `orchestrate status`, with the MLflow run that holds its
cells (`mlflow_run_id`, `tracking_uri`) for `orchestrate report`, and where it meant to log
(`tracking`) for `orchestrate sync`, which logs the cells a submission could not (MLflow down).
A submission holds the sweep's lock (`orchestrator.lock`) from planning to its last write.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console

from orchestrator.errors import StoreError
from orchestrator.lock import sweep_lock
from orchestrator.plan import ShardSelection, make_plan
from orchestrator.progress import SweepProgress
from orchestrator.report import SubmitReport
from orchestrator.scheduler import Scheduler
from orchestrator.spec import Sweep
from orchestrator.store import SweepStore, read_json, write_json
from orchestrator.summaries import TrackerSource, TrackingGate, finish_cell_or_say_why, summary_code, sync_cells
from orchestrator.tracking import Tracker, check_reachable, default_tracking_uri


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
           ray_temp_dir: str | None = None, wait: bool = False) -> SubmitReport:
    """Plan the sweep, run the stages not on disk yet, summarise every complete cell. A sweep
    whose stages are all on disk starts no Ray and loads no model: its summaries are
    recomputed with the sweep's summary parameters and logged when they changed.

    One submission per sweep at a time (`orchestrator.lock`): another one running makes this
    one raise SweepBusy naming it, or with `wait` start when it ends. Ctrl-C stops it: the
    shards being computed are dropped (a shard being written is finished whole), Ray is shut
    down, submission.json says "interrupted", and KeyboardInterrupt goes on up."""
    console = console or Console(stderr=True)
    store = SweepStore(output or sweep.output, sweep.name)
    with sweep_lock(store.root, "submit", sweep_file, wait=wait,
                    on_wait=lambda holder: console.print(f"waiting for {holder.describe() if holder else 'another run'}"
                                                         f" to finish ...")) as held:
        if stray := store.remove_stray_temps(older_than=held.since_epoch):
            console.print(f"removed {len(stray)} temporary file(s) of writes that never finished (a killed run's)")
        return _submit(sweep, store, sweep_file, address, console, progress, max_retries, track, ray_temp_dir)


def _submit(sweep: Sweep, store: SweepStore, sweep_file: str | None, address: str | None, console: Console,
            progress: bool, max_retries: int, track: bool, ray_temp_dir: str | None) -> SubmitReport:
    from cluster.connect import ray_session

    started = time.perf_counter()
    planned = make_plan(sweep)
    plan = store.settle_plan(planned)
    for cell, asked in zip(plan.cells, planned.cells):
        if cell.shard_size != asked.shard_size:
            said = "the sweep says" if sweep.jobs[cell.job_index].shard_size else "the default for its size is"
            console.print(f"{cell.kind}/{cell.model} {cell.id}: keeps the shard_size {cell.shard_size} it started "
                          f"with ({said} {asked.shard_size}; changing it mid-cell would repeat samples)")
    pending: dict[str, ShardSelection] = {}
    for cell in plan.cells:
        write_json(store.cell_dir(cell.kind, cell.id) / "cell.json", cell.manifest(), unless_same=True)
        missing = store.missing(cell, cell.last_stage)  # a missing earlier stage misses its last one too
        if missing:
            pending[cell.id] = missing
    complete = [c for c in plan.cells if c.id not in pending]
    uri = sweep.tracking.uri or default_tracking_uri(store.root)
    experiment = sweep.tracking.experiment or sweep.name
    n_shards = sum(len(c.shards) for c in plan.cells)
    n_pending = sum(len(v) for v in pending.values())
    report = SubmitReport(sweep=sweep.name, store_root=store.root, tracking_uri=uri, cells=len(plan.cells),
                          shards_total=n_shards, shards_skipped=n_shards - n_pending)
    if left := store.left_behind():
        console.print(f"[yellow]{len(left)} cell folder(s) from before stages are not read (their rows stay on "
                      f"disk; this sweep computes them under their new ids): {', '.join(p.name for p in left[:5])}"
                      + (" ..." if len(left) > 5 else ""))

    status = "FAILED"
    submission: dict[str, object] = {
        "state": "running", "pid": os.getpid(), "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sweep_file": str(Path(sweep_file).resolve()) if sweep_file else "",  # found by a report run anywhere
        "pending_shards": n_pending, "tracking": {"uri": uri, "experiment": experiment},
        **last_parent_run(store, uri)}
    write_json(store.root / "submission.json", submission)

    def start_tracker() -> Tracker:
        """MLflow, started the first time something is logged: a summary that did not change
        opens no run (and the parent run of the last submission that logged stays the one
        recorded)."""
        check_reachable(uri)
        tracker = Tracker(uri, experiment, sweep.name, store_root=store.root, finetunes=sweep.finetunes)
        run_id = tracker.start_submission(sweep_file, len(plan.cells), n_pending)
        submission.update(mlflow_run_id=run_id, tracking_uri=uri)  # known even if this run dies
        write_json(store.root / "submission.json", submission)
        return tracker

    for kind in sorted({c.kind for c in plan.cells}):  # syntax trees read here, not beside MLflow's import
        summary_code(kind)
    gate = TrackingGate(start_tracker, console, uri, later=f"orchestrate sync {sweep_file or store.root}")
    tracker: TrackerSource = gate if track else None
    early: threading.Thread | None = None
    try:
        for cell in complete:  # the summary stage: recomputed, logged when it changed
            finish_cell_or_say_why(store, tracker, cell, report, console, earlier_rows=True)
        if pending:
            if track:  # shards will finish and log: MLflow's start (seconds) overlaps Ray's
                early = threading.Thread(target=gate, name="mlflow-start", daemon=True)
                early.start()
            sigterm_stops = signal.getsignal(signal.SIGTERM) is _terminated  # the CLI asked for it
            c = sweep.cluster
            with ray_session(address=address or c.address, namespace=c.namespace or f"orchestrate-{sweep.name}",
                             num_cpus=c.num_cpus, num_gpus=c.num_gpus, dashboard=c.dashboard, temp_dir=ray_temp_dir,
                             py_modules=project_packages()) as session:
                if sigterm_stops:  # again: ray.init puts in a handler of its own that exits at once
                    stop_on_sigterm()
                report.dashboard_url = session.dashboard_url
                if c.keep_replicas and session.embedded:
                    console.print("[yellow]cluster.keep_replicas: an embedded Ray ends with this submit, so no "
                                  "replica is kept; start one with `ray start --head` and submit with --address auto")
                if session.dashboard_url:
                    console.print(f"Ray dashboard: [link]{session.dashboard_url}[/link]")
                n_samples = sum(v.n_samples for v in pending.values())
                with SweepProgress(console, n_pending, n_samples, enabled=progress) as bar:
                    scheduler = Scheduler(sweep, plan, store, tracker, console, report, max_retries,
                                          fixed_cluster=not (address or c.address or os.environ.get("RAY_ADDRESS")))
                    scheduler.started = started
                    work = scheduler.run(pending, bar)
                    asyncio.run(_cancelled_by_sigterm(work) if sigterm_stops else work)
        elif not report.cells_logged:
            console.print(f"[green]{sweep.name}: all {n_shards} shards of {len(plan.cells)} cells are done; "
                          "summaries recomputed, nothing to run.")
        status = "FINISHED" if report.ok else "FAILED"
    except KeyboardInterrupt as stop:
        status = "INTERRUPTED"
        submission["stopped_by"] = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
        raise
    finally:
        if early is not None:
            early.join()  # the parent run exists (or MLflow was skipped) before it is ended
        report.seconds = time.perf_counter() - started
        report.mlflow_skipped = gate.skipped
        _record_end(store, submission, status, report, console)
        if gate.tracker is not None and not gate.skipped:
            try:  # MLflow's name for a run stopped by the user is KILLED
                gate.tracker.end_submission("KILLED" if status == "INTERRUPTED" else status, {
                    "shards_run": report.shards_run, "shards_failed": len(report.shards_failed),
                    "seconds": report.seconds, "retries": report.retries})
            except Exception as e:
                gate.skip(e)
    return report


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler preempting the job, `kill`): stopped as cleanly as by Ctrl-C."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


async def _cancelled_by_sigterm(work: Coroutine[Any, Any, None]) -> None:
    """Run `work`; SIGTERM cancels it from inside the event loop, as asyncio.run does for
    Ctrl-C, then raises Terminated. A handler that raises where the signal lands can land
    inside Ray's or asyncio's own code, and leave a lock held that the shutdown then waits
    on forever."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None, "called outside a task"
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        await work
    except asyncio.CancelledError:
        if terminated:
            raise Terminated() from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        stop_on_sigterm()  # remove_signal_handler left the default (die at once) in its place


def stop_on_sigterm() -> None:
    """Make SIGTERM end a submission the way Ctrl-C does (the main thread only)."""
    signal.signal(signal.SIGTERM, _terminated)


def _record_end(store: SweepStore, submission: dict[str, object], status: str, report: SubmitReport,
                console: Console) -> None:
    """submission.json as the submission ended. Its own failure (a full disk) is said, not
    raised: it would hide why the submission ended."""
    try:
        write_json(store.root / "submission.json", {
            **submission, "state": status.lower(), "failed_shards": report.shards_failed, "seconds": report.seconds,
            "mlflow_skipped": report.mlflow_skipped})
    except StoreError as e:
        console.print(f"[red]{e}")


def sync(store: SweepStore, *, sweep: Sweep | None = None, uri: str | None = None, console: Console | None = None,
         wait: bool = False) -> dict[str, int]:
    """`orchestrate sync`: log to MLflow the complete cells on disk that a submission could
    not log (MLflow was down): counts per outcome ("logged", "adopted", "present", "skipped").
    Given the sweep, its cells and tracking settings; else the cells on disk and the
    tracking the last submission recorded. Running it again logs nothing."""
    console = console or Console(stderr=True)
    if not store.root.is_dir():
        raise StoreError(f"no results for this sweep under {store.root}")
    with sweep_lock(store.root, "sync", wait=wait):
        path = store.root / "submission.json"
        submission: dict[str, object] = read_json(path) if path.exists() else {}
        recorded = submission.get("tracking") if isinstance(submission.get("tracking"), dict) else {}
        assert isinstance(recorded, dict)
        only = None
        if sweep is not None:
            only = {c.id for c in store.settle_plan(make_plan(sweep)).cells}
            uri = uri or sweep.tracking.uri
            experiment = sweep.tracking.experiment or sweep.name
        else:
            experiment = str(recorded.get("experiment") or store.sweep)
        uri = uri or str(recorded.get("uri") or default_tracking_uri(store.root))

        def start_tracker() -> Tracker:
            check_reachable(uri)
            tracker = Tracker(uri, experiment, store.sweep, store_root=store.root,
                              finetunes=set(sweep.finetunes) if sweep else ())
            cells = len(only) if only is not None else len(store.cells())
            run_id = tracker.start_submission(str(submission.get("sweep_file") or ""), cells, 0,
                                              extra_tags={"synced": "true"})
            if submission:  # `orchestrate report` attaches the page to the run that holds the cells
                write_json(path, {**submission, "mlflow_run_id": run_id, "tracking_uri": uri})
            return tracker

        gate = TrackingGate(start_tracker, console, uri, later="orchestrate sync again")
        try:
            return sync_cells(store, gate, only)
        finally:
            if gate.tracker is not None and not gate.skipped:
                gate.tracker.end_submission("FINISHED")
