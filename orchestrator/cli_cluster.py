"""The Ray Jobs side of the command line: `submit` and `status` given a dashboard address
(`--address http://HEAD:8265`, or RAY_ADDRESS set so), and `cancel`. Registered on the main
command in `orchestrator.cli`; the work is in `orchestrator.ray_job`.

Exit codes of a submit that follows its job: 0 the job SUCCEEDED; 1 it FAILED or was STOPPED
(2 when the driver on the cluster said its input was wrong); 130 detached with Ctrl-C (the
job keeps running). `--detach` submits and returns 0 at once.
"""
from __future__ import annotations

import functools
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from orchestrator.errors import OrchestrateError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

    from orchestrator.spec import Sweep

console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)  # lines whole, as written
Callback = Callable[..., Any]


def _dashboard(address: str | None, sweep: Sweep | None = None) -> str | None:
    """The dashboard URL to use: `--address` when it is one; else RAY_ADDRESS when it is
    one and the sweep names no cluster of its own (the precedence a local submit has)."""
    from cluster.connect import is_dashboard_address

    if address:
        return address if is_dashboard_address(address) else None
    env = os.environ.get("RAY_ADDRESS")
    return env if is_dashboard_address(env) and not (sweep and sweep.cluster.address) else None


def _client(url: str) -> JobSubmissionClient:
    from ray.exceptions import AuthenticationError

    from cluster.connect import job_submission_client
    from orchestrator.ray_job import RayJobError

    try:
        return job_submission_client(url)
    except AuthenticationError:
        raise RayJobError(f"{url}: the cluster wants its token (Ray token authentication): put it in "
                          "~/.ray/auth_token or RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it)") from None
    except ConnectionError as e:
        raise RayJobError(f"{url}: no Ray dashboard answers there ({e})") from None


def _is_file(sweep_arg: str) -> bool:
    return sweep_arg.endswith((".yaml", ".yml")) or Path(sweep_arg).is_file()


def _latest(client: JobSubmissionClient, sweep_arg: str, output: str | None) -> JobDetails | None:
    """The sweep's last job: by the id its file and output give, or by its name."""
    from orchestrator.load import load_sweep
    from orchestrator.ray_job import attempts, base_submission_id, jobs_named

    if _is_file(sweep_arg):
        sweep = load_sweep(sweep_arg)
        found = attempts(client, base_submission_id(sweep.name, (output or sweep.output).rstrip("/") or "/"))
    else:
        found = [job for job in jobs_named(client, sweep_arg)
                 if output is None or (job.metadata or {}).get("orchestrate_output") == output.rstrip("/")]
    return found[-1] if found else None


def _hints(sweep_file: str, url: str, output: str | None) -> str:
    more = f" --output {output}" if output else ""
    return (f"  follow:  orchestrate submit {sweep_file} --address {url}{more}\n"
            f"  status:  orchestrate status {sweep_file} --address {url}{more}\n"
            f"  cancel:  orchestrate cancel {sweep_file} --address {url}{more}")


def submit_job(url: str, sweep_file: str, output: str | None, retries: int, wait: bool, detach: bool) -> None:
    """Submit the sweep as a Ray Job (or attach to its running one) and follow its log."""
    from orchestrator.load import load_sweep
    from orchestrator.ray_job import (
        check_tracking,
        describe,
        exit_code,
        follow,
        job_output,
        key_names,
        submit_or_attach,
    )

    sweep = load_sweep(sweep_file)
    out = job_output(sweep, output)
    check_tracking(sweep)
    client = _client(url)
    with tempfile.TemporaryDirectory(prefix="orchestrate-job-") as stage_dir:
        job = submit_or_attach(client, sweep, sweep_file, out, retries, wait, Path(stage_dir))
    hints = _hints(sweep_file, url, output)
    if job.attached:
        console.print(f"attached to the running Ray job {job.submission_id} (this sweep, output {out}); "
                      "its log from the start:")
    else:
        staged = job.staged
        assert staged is not None
        console.print(f"submitted Ray job {job.submission_id} to {url}: the sweep, {len(staged.shipped)} data "
                      f"file(s) and the code ({staged.size / 2**20:.1f} MiB); results: {out}")
        for path in staged.read_on_cluster:
            console.print(f"note: {path} is an absolute path: the job reads it on the cluster, where it must exist")
        if names := key_names(sweep):
            console.print(f"note: API keys are not sent; the job reads {', '.join(names)} from the cluster's "
                          "environment (e.g. a Kubernetes Secret in the RayCluster's pod env)")
    if detach:
        console.print(f"the job runs on; from here:\n{hints}")
        return
    try:
        info = follow(client, job.submission_id, write=_write_out, say=console.print)
    except KeyboardInterrupt:
        console.print(f"\ndetached: Ray job {job.submission_id} keeps running\n{hints}")
        sys.exit(130)
    console.print(describe(info))
    if code := exit_code(info):
        sys.exit(code)


def _write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def ray_job_submit(local: Callback) -> Callback:
    """Decorates `orchestrate submit`: with a dashboard address the sweep goes to the
    cluster as a Ray Job; with any other address (or none) the submit runs here as before.
    Adds `--detach`."""
    @functools.wraps(local)
    def submit(**kwargs: Any) -> Any:
        detach = kwargs.pop("detach")
        address = kwargs["address"]
        url = _dashboard(address) if address else _dashboard(None, _sweep_if_env(kwargs["sweep_file"]))
        if url is not None:
            return submit_job(url, kwargs["sweep_file"], kwargs["output"], kwargs["retries"], kwargs["wait"], detach)
        if detach:
            raise OrchestrateError("--detach: only a Ray Job runs without this process (--address http://HEAD:8265)")
        return local(**kwargs)

    # click lists options in the reverse order of this list: the new one goes last
    submit.__click_params__ = [click.Option(  # type: ignore[attr-defined]
        ["--detach"], is_flag=True, help="with --address http(s)://: submit the Ray Job and return at once"),
        *getattr(local, "__click_params__", [])]
    return submit


def _sweep_if_env(sweep_file: str) -> Sweep | None:
    """The sweep, read only when RAY_ADDRESS names a dashboard (its `cluster.address` wins)."""
    from orchestrator.load import load_sweep

    return load_sweep(sweep_file) if _dashboard(None) is not None else None


def ray_job_status(local: Callback) -> Callback:
    """Decorates `orchestrate status`: adds `--address`; given a dashboard, the state of the
    sweep's Ray job first, then the results as usual when they are reachable from here."""
    @functools.wraps(local)
    def status(**kwargs: Any) -> Any:
        from orchestrator.ray_job import describe

        address = kwargs.pop("address")
        url = _dashboard(address)
        if address and url is None:
            raise OrchestrateError(f"--address {address}: status reads a Ray Job's state from the dashboard "
                                   "(http(s)://HEAD:8265); results on disk need no address")
        if url is None:
            return local(**kwargs)
        info = _latest(_client(url), kwargs["sweep"], kwargs["output"])
        click.echo(describe(info) if info else f"no Ray job of this sweep on {url}")
        try:
            return local(**kwargs)
        except OrchestrateError as e:
            click.echo(f"results: not readable from here ({e})")
            return None

    # click lists options in the reverse order of this list: the new one goes last
    status.__click_params__ = [click.Option(  # type: ignore[attr-defined]
        ["--address"], help="also the state of the sweep's Ray job on this dashboard (http(s)://HEAD:8265)"),
        *getattr(local, "__click_params__", [])]
    return status


@click.command()
@click.argument("sweep", metavar="SWEEP_FILE_OR_NAME")
@click.option("--address", help="the Ray dashboard, http(s)://HEAD:8265 (default: RAY_ADDRESS)")
@click.option("--output", help="the results root the job was submitted with (default: the sweep's `output`)")
@click.option("--timeout", default=120, show_default=True, type=click.FloatRange(min=1),
              help="seconds to wait for the job to stop")
def cancel(sweep: str, address: str | None, output: str | None, timeout: float) -> None:
    """Stop the sweep's Ray job and wait until it has stopped (finished shards are kept;
    submitting again resumes)."""
    from orchestrator.ray_job import RayJobError, describe, stop

    url = _dashboard(address)
    if url is None:
        raise OrchestrateError("cancel stops a Ray Job: give --address http(s)://HEAD:8265 (a submit running in a "
                               "terminal stops with Ctrl-C)")
    client = _client(url)
    info = _latest(client, sweep, output)
    if info is None:
        raise RayJobError(f"no Ray job of this sweep on {url}")
    if info.status.is_terminal():
        click.echo(f"nothing to cancel: {describe(info)}")
        return
    console.print(f"stopping Ray job {info.submission_id} ...")
    click.echo(describe(stop(client, str(info.submission_id), timeout)))


@click.command()
@click.option("--address", help="the Ray cluster: host:port of its head, or auto (default: RAY_ADDRESS, else auto)")
@click.option("--stop", is_flag=True, help="end them (their GPUs and memory are freed)")
def replicas(address: str | None, stop: bool) -> None:
    """The model replicas kept running on a cluster by sweeps with `cluster.keep_replicas`."""
    from cluster.kept import kept_replicas

    try:
        names = kept_replicas(address, stop=stop)
    except ConnectionError as e:
        raise click.UsageError(f"no Ray cluster at {address or 'auto'}: {e}") from None
    if not names:
        console.print("no kept replicas")
    for name in names:
        console.print(f"{'stopped' if stop else 'running'}  {name}")
