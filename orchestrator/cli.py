"""The `orchestrate` command: validate, schema, plan, submit, sync, status, results; compare and
report (cli_compare), cancel (cli_cluster), data (cli_data), organisms (cli_organisms)."""
from __future__ import annotations

import atexit
import fnmatch
import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from orchestrator.cli_cluster import cancel, ray_job_status, ray_job_submit, replicas
from orchestrator.cli_compare import compare, report, rich_table
from orchestrator.cli_data import data
from orchestrator.cli_organisms import organisms
from orchestrator.errors import OrchestrateError

if TYPE_CHECKING:

    from orchestrator.spec import Sweep
    from orchestrator.store import SweepStore

console = Console(stderr=True)


def _load(path: str) -> Sweep:
    from orchestrator.load import load_sweep

    return load_sweep(path)


def exit_code(error: BaseException) -> int | None:
    """The exit code of an error the user can act on (2: fix the input; 1: the run failed),
    None for anything else: a bug, which keeps its traceback."""
    from actors.errors import DataError, FinetuneFailed, RankDied
    from jobs.errors import JobError, UnknownRole

    if isinstance(error, OrchestrateError):
        return error.exit_code
    if isinstance(error, DataError) or (isinstance(error, JobError) and not isinstance(error, UnknownRole)):
        return 2
    if isinstance(error, FinetuneFailed | RankDied):
        return 1
    return None


def _skip_last_collection() -> None:
    """The interpreter's last garbage collection, as the process ends, walks every object the
    imports made (Ray, MLflow, pyarrow: ~400k): 1.2-1.5 s of every submit's exit on 2 cores.
    Frozen objects are skipped, and the process frees its memory as it ends anyway. Not where
    torch's compiler (triton) is loaded, as by a command that trains in this process: its
    bindings report every object left unfreed at exit as a leak."""
    if "triton" not in sys.modules:
        gc.freeze()


# At exit, not after each command: a process that runs commands in turn (a test) keeps collecting.
atexit.register(_skip_last_collection)


class _Group(click.Group):
    """User errors print one clear message (file:line: field: what was expected) and exit 2;
    a run that failed says why and exits 1; nothing the user can cause prints a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as e:
            code = exit_code(e)
            if code is None:
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(code)


@click.group(cls=_Group)
@click.version_option(package_name="orchestrate")
def main() -> None:
    """Plan and run LLM safety sweeps on Ray; results in Parquet and MLflow."""


@main.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False))
def validate(sweep_file: str) -> None:
    """Check a sweep file and the data it reads; report every problem with its file, line and field."""
    from orchestrator.load import check_data

    sweep = _load(sweep_file)
    check_data(sweep)  # the data files too, as plan and submit read them
    click.echo(f"{sweep_file}: ok ({len(sweep.models)} models, {len(sweep.jobs)} jobs)")


@main.command()
def schema() -> None:
    """Print the sweep file's JSON Schema (for editor completion and checks)."""
    from orchestrator.schema import sweep_json_schema

    click.echo(json.dumps(sweep_json_schema(), indent=2))


@main.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--output", help="results root (default: the sweep's `output`)")
def plan(sweep_file: str, output: str | None) -> None:
    """Print the cells, their shard counts and each stage's done / pending. Starts no Ray."""
    import polars as pl

    from orchestrator.plan import make_plan
    from orchestrator.store import SweepStore

    sweep = _load(sweep_file)
    store = SweepStore(output or sweep.output, sweep.name)
    p = store.settle_plan(make_plan(sweep))
    from jobs.stages import STORED

    rows = []
    pending = 0
    for c in p.cells:
        point = ", ".join(f"{k}={v}" for k, v in c.point.items() if not isinstance(v, (list, dict)))
        # Counted from each stage's listing: no shard id is hashed for a stage with nothing on disk.
        missing = {stage: len(store.missing(c, stage)) for stage in c.stages}
        pending += missing[c.last_stage] > 0
        done: dict[str, str] = {stage: f"{len(c.shards) - missing[stage]}/{len(c.shards)}" if stage in missing
                                else "-" for stage in STORED}
        rows.append({"cell": c.id, "job": c.kind, "model": c.model, "point": point, "samples": c.n_samples,
                     "shards": len(c.shards), **done})
    df = pl.DataFrame(rows)
    title = f"{sweep.name}: {len(p.cells)} cells, {df['shards'].sum()} shards, {pending} cells with work pending"
    Console().print(rich_table(df, title=title))


def _stage_counts(store: SweepStore, manifest: dict) -> dict[str, str]:
    """Per stored stage, `done/total` shards of a cell ("-": the kind has no such stage)."""
    from jobs.stages import STORED

    stages = manifest["stages"]
    return {stage: f"{store.shards_done(manifest, stage)}/{len(stages[stage]['shards'])}" if stage in stages else "-"
            for stage in STORED}


@main.command()
@ray_job_submit  # --address http(s)://HEAD:8265: the sweep runs there as a Ray Job (orchestrator.cli_cluster)
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--address", help="join this Ray cluster (auto, host:port, ray://; also RAY_ADDRESS), or submit a "
              "Ray Job to its dashboard (http://HEAD:8265); default: an embedded local Ray")
@click.option("--output", help="results root (default: the sweep's `output`)")
@click.option("--retries", default=2, show_default=True, type=click.IntRange(min=0),
              help="times a shard is retried after a replica dies")
@click.option("--no-progress", is_flag=True, help="no live progress display")
@click.option("--wait", is_flag=True, help="when another submit of this sweep is running, start when it ends "
              "(default: refuse, exit 2)")
def submit(sweep_file: str, address: str | None, output: str | None, retries: int, no_progress: bool,
           wait: bool) -> None:
    """Run a sweep. Submitting again resumes: shards already on disk are skipped."""
    from orchestrator.submit import Terminated, stop_on_sigterm
    from orchestrator.submit import submit as run_submit

    sweep = _load(sweep_file)
    stop_on_sigterm()  # a preempted job (Slurm, Kubernetes) gets SIGTERM: stop as on Ctrl-C
    try:
        report = run_submit(sweep, sweep_file=sweep_file, address=address, output=output, console=console,
                            progress=not no_progress and sys.stderr.isatty(), max_retries=retries, wait=wait)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the submission stopped cleanly (orchestrator.submit)
        console.print(f"interrupted: the finished shards are kept, the running ones dropped; "
                      f"`orchestrate submit {sweep_file}` resumes")
        sys.exit(143 if isinstance(stop, Terminated) else 130)  # 128 + the signal, as a shell reports it
    tracking = f"skipped ({report.mlflow_skipped}); `orchestrate sync {sweep_file}` logs the cells later" \
        if report.mlflow_skipped else report.tracking_uri
    console.print(
        f"{report.sweep}: {report.shards_run} shards run, {report.shards_skipped} already done, "
        f"{len(report.shards_failed)} failed, {report.rows_written} rows in {report.seconds:.1f}s\n"
        f"results: {report.store_root}\nmlflow:  {tracking}"
    )
    if report.cells_unfinished:
        console.print(f"[red]{len(report.cells_unfinished)} cell(s) have every row on disk but were not summarised "
                      f"(the error is above); submitting again retries that")
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("sweep", metavar="SWEEP_FILE_OR_FOLDER")
@click.option("--output", help="results root for a sweep given by name (default: the sweep's `output`, or ./results)")
@click.option("--tracking-uri", help="log here (default: the sweep's tracking, or what the last submission recorded)")
@click.option("--wait", is_flag=True, help="when a submit of this sweep is running, sync when it ends")
def sync(sweep: str, output: str | None, tracking_uri: str | None, wait: bool) -> None:
    """Log to MLflow the finished cells a submission could not log (MLflow was down). Each
    cell once: running it again logs nothing."""
    from orchestrator.submit import sync as run_sync

    store, spec = _store_for(sweep, output)
    counts = run_sync(store, sweep=spec, uri=tracking_uri, console=console, wait=wait)
    click.echo(f"{store.sweep}: {counts.get('logged', 0)} cell run(s) logged, {counts.get('adopted', 0)} found "
               f"already in MLflow, {counts.get('present', 0)} logged before")
    if counts.get("skipped"):
        sys.exit(1)


def _store_for(sweep_arg: str, output: str | None) -> tuple[SweepStore, Sweep | None]:
    """(the results store, the loaded sweep) of a sweep file; (store, None) of a sweep name."""
    from orchestrator.storage import is_uri, output_root
    from orchestrator.store import SweepStore

    sweep = None
    folder = Path(sweep_arg)
    if is_uri(sweep_arg) and output is None:  # a sweep's results folder on an object store
        uri = output_root(sweep_arg)
        store = SweepStore(uri.parent, uri.name)
    elif sweep_arg.endswith((".yaml", ".yml")) or folder.is_file():
        sweep = _load(sweep_arg)
        store = SweepStore(output or sweep.output, sweep.name)
    elif output is None and (folder / "submission.json").is_file():  # a sweep's results folder
        store = SweepStore(folder.resolve().parent, folder.resolve().name)
    else:
        store = SweepStore(output or "results", sweep_arg)
    return store, sweep


@main.command()
@ray_job_status  # --address http(s)://HEAD:8265: the Ray job's state too
@click.argument("sweep", metavar="SWEEP_FILE_OR_NAME")
@click.option("--output", help="results root (default: the sweep's `output`, or ./results)")
def status(sweep: str, output: str | None) -> None:
    """What is done, running and failed."""
    import polars as pl

    store, spec = _store_for(sweep, output)
    if not store.root.exists():
        raise OrchestrateError(f"no results for this sweep under {store.root}")
    planned = None
    if spec is not None:  # cells on disk that the sweep no longer asks for are not pending work
        from orchestrator.plan import make_plan

        planned = {c.id for c in make_plan(spec).cells}
    click.echo(_submission_state(store))
    rows = []
    unlogged = 0
    for cell in store.cells():
        state = "done" if store.is_complete(cell) else "pending"
        if planned is not None and cell["cell_id"] not in planned:
            state = f"{state}; left behind (not in the sweep now)"
        elif state == "done" and cell["summary"] is not None \
                and not store.cell_dir(cell["kind"], cell["cell_id"]).joinpath("mlflow.json").exists():
            unlogged += 1
        rows.append({"cell": cell["cell_id"], "job": cell["kind"], "model": cell["model"],
                     "shards": len(cell["stages"]["generate"]["shards"]), **_stage_counts(store, cell),
                     "state": state})
    if rows:
        Console(width=200).print(rich_table(pl.DataFrame(rows), title=str(store.root)))
    if unlogged:
        click.echo(f"not in MLflow: {unlogged} finished cell(s) (MLflow was unreachable); "
                   f"`orchestrate sync {sweep}` logs them")
    if temps := store.stray_temps():
        click.echo(f"{len(temps)} temporary file(s) of writes that never finished (never read as results; the next "
                   f"submit removes them)")
    if left := store.left_behind():
        click.echo(f"left behind: {len(left)} cell folder(s) written before stages, not read by this version "
                   f"(submitting the sweep computes those cells anew): " + ", ".join(str(p) for p in left))


def _submission_state(store: SweepStore) -> str:
    """The last submission in a line: running (by whom), or how it ended. A submission whose
    record says running but whose process is gone was killed: "interrupted", as after Ctrl-C."""
    from orchestrator.lock import read_holder

    holder = read_holder(store.root)
    if holder is not None and not holder.is_gone():
        return f"running: {holder.describe()}"
    path = store.root / "submission.json"
    if not path.exists():
        return "last submission: none recorded"
    info = json.loads(path.read_text())
    state, how = info["state"], ""
    if state == "running":  # the record of a process that never wrote its end: killed
        state, how = "interrupted", f" (its process, pid {info.get('pid')}, is gone: killed?)"
    elif state == "interrupted":
        how = f" (stopped with {info.get('stopped_by', 'Ctrl-C')})"
    skipped = f"; MLflow skipped: {info['mlflow_skipped']}" if info.get("mlflow_skipped") else ""
    return (f"last submission: {state}{how} (started {info['started']}, pid {info.get('pid')}); "
            f"failed shards: {len(info.get('failed_shards', []))}{skipped}")


def _matching_columns(available: list[str], patterns: str) -> list[str]:
    """The columns matching the comma-separated shell patterns, in pattern order."""
    chosen: list[str] = []
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        found = [c for c in available if fnmatch.fnmatchcase(c, pattern) and c not in chosen]
        if not found:
            shown = ", ".join(available[:30]) + (f", ... ({len(available)} in all)" if len(available) > 30 else "")
            raise OrchestrateError(f"--columns: nothing matches {pattern!r}; columns: {shown}")
        chosen += found
    return chosen


@main.command()
@click.argument("sweep", metavar="SWEEP_FILE_OR_NAME")
@click.option("--output", help="results root (default: the sweep's `output`, or ./results)")
@click.option("--kind", help="only this job kind")
@click.option("--rows", is_flag=True, help="every row of --kind instead of the per-cell summary")
@click.option("--report", is_flag=True, help="the job's own table for --kind (trigger_scan: ranked candidates)")
@click.option("--columns", help="comma-separated columns to keep, shell patterns allowed (e.g. model,rho*,mean_phi)")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="write here instead of stdout (required for parquet)")
def results(sweep: str, output: str | None, kind: str | None, rows: bool, report: bool, columns: str | None,
            fmt: str, out: str | None) -> None:
    """The summary table of a sweep (one row per cell), its rows, or a job's own report."""
    from jobs.registry import kinds
    from orchestrator.results import (
        flat_for_csv,
        headline_columns,
        report_table,
        rows_table,
        summary_table,
    )

    store, spec = _store_for(sweep, output)
    if kind is not None and kind not in kinds():
        raise OrchestrateError(f"--kind: unknown job kind {kind!r}; known: {', '.join(sorted(kinds()))}")
    if (rows or report) and not kind:
        raise OrchestrateError("--rows and --report need --kind (each job kind has its own columns)")
    if rows and report:
        raise OrchestrateError("choose one of --rows and --report")
    if kind is not None and (rows or report):
        df = rows_table(store, kind, spec) if rows else report_table(store, kind, spec)
    else:
        df = summary_table(store, kind, spec)
    if df.is_empty():
        raise OrchestrateError(f"no results under {store.root}")
    hidden = 0
    if columns:
        df = df.select(_matching_columns(df.columns, columns))
    elif fmt == "table" and not rows and not report:
        shown = headline_columns(df, store, kind)
        hidden, df = len(df.columns) - len(shown), df.select(shown)
    if fmt == "parquet":
        if not out:
            raise OrchestrateError("--format parquet needs --out FILE")
        df.write_parquet(out)
    elif fmt == "csv":
        text = flat_for_csv(df).write_csv()
        Path(out).write_text(text) if out else click.echo(text, nl=False)
    elif fmt == "json":
        text = df.write_json()
        Path(out).write_text(text) if out else click.echo(text)
    else:
        Console(width=200).print(rich_table(df))
        if hidden:
            click.echo(f"({hidden} more columns: --columns PATTERNS, or --format csv|json|parquet for all)")


main.add_command(organisms)
main.add_command(cancel)
main.add_command(replicas)
main.add_command(data)
main.add_command(compare)
main.add_command(report)
