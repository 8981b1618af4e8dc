"""A sweep as a Ray Job (`orchestrate submit SWEEP --address http://HEAD:8265`).

The driver runs on the cluster, not here: the sweep is submitted through the dashboard's Jobs
API and the job's entrypoint is `python -m orchestrator submit ...` on the head, which joins
the cluster as any driver does (Ray sets RAY_ADDRESS for it). What it needs travels in the
job's runtime environment as its `working_dir`, staged here and nothing else:

    orchestrator/ jobs/ actors/ cluster/   the project's code, as it is here
    organisms/                             the bundled organisms the sweep uses (the cluster's
                                           build cache may lack them; training takes minutes)
    sweep/...                              the sweep file and the data files it names by
                                           relative path, at the same places relative to it

A data path the sweep writes as absolute is read on the cluster at that path (a shared
filesystem), not shipped. The third-party packages come from the cluster's image.
`working_dir` (not `py_modules`) carries the code: the driver on the cluster ships its own
packages as `py_modules` when it joins (cluster.connect), and Ray refuses to merge a job's
runtime_env with a driver's that sets the same field.

The submission id is derived from the sweep's name and output: a submit while that job runs
attaches to it; after it ended, the next submit is a new job, `<id>-2`, `<id>-3`, ... (Ray
refuses to reuse a submission id). API keys never travel: the job reads the variables the
sweep names (`api_key_env`) from the cluster's own environment.
"""
from __future__ import annotations

import asyncio
import getpass
import hashlib
import os
import re
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import actors
import cluster
import jobs
import orchestrator
from jobs.inputs import decode_utf8
from jobs.organisms.recipes import ORGANISMS, organism_name
from jobs.registry import get_job
from orchestrator.errors import OrchestrateError
from orchestrator.grid import REPEAT, expand_grid
from orchestrator.spec import Sweep
from orchestrator.yaml_lines import load_yaml

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

JOB_PREFIX = "orchestrate"
SWEEP_DIR = "sweep"  # the staged sweep file and its data, under the job's working_dir
# Seconds the job's driver gets after `cancel`'s SIGTERM before Ray kills it (Ray's default
# is 3): enough for the submission to stop its replicas and record how it ended.
STOP_GRACE_S = 60
_STOPPED_WAIT_S = STOP_GRACE_S + 30


class RayJobError(OrchestrateError):
    """A Ray Job that cannot be submitted, found or stopped as asked; the message says why."""


def job_output(sweep: Sweep, output: str | None) -> str:
    """Where the job writes, as it will read on the cluster: a storage URI or an absolute
    path (the cluster's shared filesystem). A relative one would land in the job's
    temporary working folder and vanish with it."""
    chosen = output or sweep.output
    if "://" in chosen or Path(chosen).is_absolute():
        return chosen.rstrip("/") or "/"
    where = "--output" if output else sweep.where(("output",))
    raise RayJobError(f"{where}: {chosen!r} is a relative path; a Ray Job runs in a temporary folder on the "
                      "cluster: give an absolute path that the cluster's nodes share, or a storage URI "
                      "(s3://bucket/prefix)")


def check_tracking(sweep: Sweep) -> None:
    """A tracking URI naming a relative file (sqlite:///x.db, ./mlruns) would be written in
    the job's temporary folder on the cluster and vanish with it: refused, as `output` is."""
    uri = sweep.tracking.uri
    if uri is None:  # the default lives under the output, checked already
        return
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = parsed.path[1:]  # sqlite:///rel/x.db, sqlite:////abs/x.db
    elif parsed.scheme in ("", "file"):
        path = parsed.path
    else:  # a server, or a store of its own (databricks, postgresql://host/...)
        return
    if path and not Path(path).is_absolute():
        raise RayJobError(f"{sweep.where(('tracking', 'uri'))}: {uri!r} names a relative path; a Ray Job runs in "
                          "a temporary folder on the cluster: use an absolute path that the cluster's nodes share, "
                          "or an MLflow server (http://...)")


def base_submission_id(sweep_name: str, output: str) -> str:
    """`orchestrate-<sweep>-<hash of name and output>`: the same sweep writing elsewhere is
    another job."""
    digest = hashlib.sha256(f"{sweep_name}\n{output}".encode()).hexdigest()[:8]
    return f"{JOB_PREFIX}-{re.sub(r'[^A-Za-z0-9_-]', '_', sweep_name)}-{digest}"


def attempt_of(submission_id: str, base: str) -> int | None:
    """1 for `base`, n for `base-n`, None for a job of something else."""
    found = re.fullmatch(rf"{re.escape(base)}(?:-(\d+))?", submission_id)
    return None if found is None else int(found.group(1) or 1)


def attempts(client: JobSubmissionClient, base: str) -> list[JobDetails]:
    """The jobs submitted under `base`, oldest first."""
    found = [(n, job) for job in client.list_jobs()
             if job.submission_id and (n := attempt_of(job.submission_id, base)) is not None]
    return [job for _, job in sorted(found, key=lambda pair: pair[0])]


def jobs_named(client: JobSubmissionClient, sweep_name: str) -> list[JobDetails]:
    """The jobs of a sweep known only by name (any output), oldest first."""
    found = [job for job in client.list_jobs() if (job.metadata or {}).get("orchestrate_sweep") == sweep_name]
    return sorted(found, key=lambda job: job.start_time or 0)


# -- what travels ---------------------------------------------------------------------------

@dataclass
class Staged:
    """The job's working_dir, filled: the sweep's path inside it, what was shipped, and
    what the cluster must have itself."""

    root: Path
    sweep_path: str
    shipped: list[str] = field(default_factory=list)
    read_on_cluster: list[str] = field(default_factory=list)
    size: int = 0


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _existing(value: str) -> Path | None:
    """`value` as an existing local path, resolved; None for anything else (a prompt, a hub id)."""
    if len(value) > 4096 or "\n" in value:
        return None
    try:
        path = Path(value).expanduser()
        return path.resolve() if path.exists() else None
    except (OSError, RuntimeError):  # a name too long for the filesystem, a symlink loop
        return None


def data_paths(sweep: Sweep) -> set[Path]:
    """Every local file or folder the validated sweep reads (models' folders and chat
    templates, finetunes' data, each job's data at each grid point), resolved as load.py
    resolves them: against the sweep file's folder."""
    found: set[Path] = set()
    values = list(_strings(sweep.model_dump(mode="json", include={"models", "finetunes"})))
    for spec in sweep.jobs:
        params_model = get_job(spec.kind).Params
        for point in expand_grid(spec, sweep.base_dir):
            params = params_model.model_validate({k: v for k, v in point.items() if k != REPEAT},
                                                 context={"base_dir": str(sweep.base_dir)})
            values += _strings(params.model_dump(mode="json"))
    for value in values:
        if Path(value).is_absolute() and (path := _existing(value)) is not None:
            found.add(path)
    return found


def package_limit() -> int:
    """Ray's limit on one runtime_env package (the gRPC message size: 512 MiB by default)."""
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    return int(GCS_STORAGE_MAX_SIZE)


def stage(sweep: Sweep, sweep_file: str | Path, into: Path) -> Staged:
    """Fill `into` with what the job needs (see the module's docstring). The sweep file is
    copied byte for byte, so its relative paths resolve on the cluster as they do here and
    its cells keep their ids (ids hash data contents, not locations)."""
    from jobs.organisms.build import BUNDLE_DIR

    sweep_file = Path(sweep_file)
    sweep_dir = Path(os.path.normpath(sweep_file.parent.absolute()))
    read = data_paths(sweep)
    relative: dict[Path, Path] = {}  # where it sits (lexically, as the sweep names it) -> the file
    staged = Staged(root=into, sweep_path="")
    raw = load_yaml(decode_utf8(sweep_file.read_bytes()), str(sweep_file)).data
    for value in dict.fromkeys(_strings(raw)):
        written = Path(value).expanduser()
        place = written if written.is_absolute() else sweep_dir / written
        if (path := _existing(str(place))) is None or path not in read:
            continue
        if written.is_absolute():
            staged.read_on_cluster.append(str(written))
        else:
            relative[Path(os.path.normpath(place))] = path
    root = Path(os.path.commonpath([sweep_dir, *relative]))
    target = into / SWEEP_DIR
    staged.sweep_path = (Path(SWEEP_DIR) / sweep_dir.relative_to(root) / sweep_file.name).as_posix()
    (into / staged.sweep_path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sweep_file, into / staged.sweep_path)
    for place, path in relative.items():
        dest = target / place.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(path, dest)
        staged.shipped.append(str(place))
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    for package in (actors, cluster, jobs, orchestrator):
        source = Path(package.__file__ or "").parent
        shutil.copytree(source, into / source.name, ignore=skip)
    for name in organisms_used(sweep):  # the bundle's copies: the cluster's cache may lack them
        if (bundled := BUNDLE_DIR / ORGANISMS[name].folder_name()).is_dir():
            shutil.copytree(bundled, into / "organisms" / bundled.name, ignore=skip)
    staged.size = sum(p.stat().st_size for p in into.rglob("*") if p.is_file())
    if staged.size >= package_limit():
        big = sorted(relative.values(), key=_size, reverse=True)[:3]
        raise RayJobError(f"{sweep_file}: the files to ship add up to {staged.size / 2**20:.0f} MiB, over Ray's "
                          f"{package_limit() / 2**20:.0f} MiB limit on a job's working_dir (largest: "
                          f"{', '.join(map(str, big))}); put large files where the cluster reads them (a shared "
                          f"filesystem, named by absolute path; a model by hub id)")
    return staged


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def organisms_used(sweep: Sweep) -> set[str]:
    """The organisms the sweep's models name, with those they are trained on from (built first)."""
    names: set[str] = set()
    for value in _strings(sweep.model_dump(mode="json", include={"models"})):
        name = organism_name(value)
        while name is not None and name not in names:
            names.add(name)
            name = ORGANISMS[name].init_from
    return names


def key_names(sweep: Sweep) -> list[str]:
    """The environment variables the sweep's API models read their keys from."""
    return sorted({m.api_key_env for m in sweep.models.values() if m.api_key_env})


def entrypoint(staged: Staged, output: str, retries: int, wait: bool) -> str:
    """The job's command: this project's CLI from the working_dir (`python -m`, so the code
    shipped wins over any installed copy), joining the cluster through RAY_ADDRESS."""
    command = ["python", "-m", "orchestrator", "submit", staged.sweep_path, "--output", output,
               "--retries", str(retries), "--no-progress", *(["--wait"] if wait else [])]
    return shlex.join(command)


# -- submitting, following, stopping ----------------------------------------------------------

@dataclass
class Submitted:
    submission_id: str
    attached: bool  # True: the sweep's job was running already (or another submit won the race)
    staged: Staged | None = None


def submit_or_attach(client: JobSubmissionClient, sweep: Sweep, sweep_file: str | Path, output: str,
                     retries: int, wait: bool, stage_dir: Path) -> Submitted:
    """Attach to the sweep's running job, or submit it anew (the next attempt's id)."""
    base = base_submission_id(sweep.name, output)
    earlier = attempts(client, base)
    if earlier and not earlier[-1].status.is_terminal():
        return Submitted(str(earlier[-1].submission_id), attached=True)
    attempt = (attempt_of(str(earlier[-1].submission_id), base) or 1) + 1 if earlier else 1
    submission_id = base if attempt == 1 else f"{base}-{attempt}"
    staged = stage(sweep, sweep_file, stage_dir)
    metadata = {"orchestrate_sweep": sweep.name, "orchestrate_output": output,
                "orchestrate_sweep_file": str(Path(sweep_file).absolute()),
                "orchestrate_submitted_by": f"{getpass.getuser()}@{socket.gethostname()}",
                # names only: the values stay where they are, on the cluster
                "orchestrate_keys_from_cluster_env": ",".join(key_names(sweep))}
    runtime_env = {"working_dir": str(staged.root),
                   "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}}
    try:
        client.submit_job(entrypoint=entrypoint(staged, output, retries, wait), submission_id=submission_id,
                          runtime_env=runtime_env, metadata=metadata)
    except RuntimeError as e:
        if "already exists" in str(e):  # another submit of this sweep got there first
            return Submitted(submission_id, attached=True, staged=staged)
        raise RayJobError(f"the cluster refused the job: {_last_line(e)}") from None
    except ValueError as e:  # Ray's own check of the package's size, after zipping
        raise RayJobError(f"{sweep_file}: {e}") from None
    return Submitted(submission_id, attached=False, staged=staged)


def _last_line(error: BaseException) -> str:
    """The server's own sentence from a RuntimeError that carries its traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and line.strip() != "."]
    return lines[-1] if lines else repr(error)


def follow(client: JobSubmissionClient, submission_id: str, write: Callable[[str], object],
           say: Callable[[str], object]) -> JobDetails:
    """Write the job's log (from its start) as it grows, until the job ends; its details
    then. Ctrl-C raises KeyboardInterrupt here and leaves the job running."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as e:  # the stream broke (a restarted dashboard): the job goes on
        say(f"the log stream ended early ({_last_line(e)}); waiting for the job to end")
    return wait_until_ended(client, submission_id)


def wait_until_ended(client: JobSubmissionClient, submission_id: str, timeout_s: float | None = None,
                     poll_s: float = 1.0) -> JobDetails:
    """The job's details once it is SUCCEEDED, FAILED or STOPPED; RayJobError after `timeout_s`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(submission_id)
        if info.status.is_terminal():
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise RayJobError(f"Ray job {submission_id} is still {info.status} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def exit_code(info: JobDetails) -> int:
    """0: SUCCEEDED; FAILED: the driver's own code when it is orchestrate's (1: the run
    failed, 2: the cluster could not use the input), else 1; STOPPED: 1."""
    if info.status == "SUCCEEDED":
        return 0
    if info.status == "FAILED" and info.driver_exit_code in (1, 2):
        return int(info.driver_exit_code)
    return 1


def stop(client: JobSubmissionClient, submission_id: str, timeout_s: float = _STOPPED_WAIT_S) -> JobDetails:
    """Ask the job to stop (its driver gets SIGTERM and stops as on Ctrl-C: finished shards
    kept), and wait until it has."""
    client.stop_job(submission_id)
    return wait_until_ended(client, submission_id, timeout_s)


def describe(info: JobDetails) -> str:
    """One line: the id, the state, when, and Ray's message."""
    def at(ms: int | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "?"

    ended = f", ended {at(info.end_time)}" if info.end_time else ""
    first = (info.message or "").strip().splitlines()[:1]  # a failure's message goes on with the log's tail
    message = f": {first[0]}" if first else ""
    return f"Ray job {info.submission_id}: {info.status} (started {at(info.start_time)}{ended}){message}"
