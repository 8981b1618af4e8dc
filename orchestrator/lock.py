"""One writer per sweep: the lock `orchestrate submit` and `orchestrate sync` hold on `<output>/<sweep>/`.

Two submits of one sweep (two terminals, or a retry while the first still runs) would compute
the same shards twice and log the same cells twice. The lock is `flock(2)` on
`<output>/<sweep>/.submit.lock`: the kernel drops it when its holder exits, however it exits,
so a driver killed with SIGKILL leaves no lock behind, only the file with its last holder's
record (pid, host, since), which the next holder overwrites. The file descriptor is
close-on-exec, so the processes a driver starts (Ray's) never hold it after the driver dies.

The holder unlinks the file on release; a waiter that opened the old file then finds that the
path names another file and tries again, so two holders never lock two different files.

Results on an object store (`output: s3://...`) have no file to flock and S3 offers pyarrow no
conditional put to build a lock from. There the flock is on a file in a local state folder
keyed by the results' URI (`orchestrator.storage.local_state_dir`): two runs on this machine
are kept apart as on a disk; two machines are NOT. The holder's record is also put beside the
results (`<uri>/<sweep>/.submit.lock`, removed on release) so `orchestrate status` anywhere
names the run, and a submit that finds another machine's record there says so before it
starts. Two machines writing one sweep cannot corrupt it (every object is put whole, and a
shard's rows are the same whoever computes them) but do its work twice and log its cells twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import StoreError
from orchestrator.storage import ObjectPath, StorePath, local_state_dir

LOCK_NAME = ".submit.lock"


class SweepBusy(StoreError):
    """Another process holds the sweep's lock; the message names it (exit 2)."""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    since: str  # local time, as a person reads it
    since_epoch: float  # when the lock was taken: temporary files older than it are no live writer's
    purpose: str  # "submit" or "sync"
    sweep_file: str

    def describe(self) -> str:
        file = f" of {self.sweep_file}" if self.sweep_file else ""
        return f"`orchestrate {self.purpose}`{file} (pid {self.pid} on {self.host}, since {self.since})"

    def is_gone(self) -> bool:
        """Its process is known dead: same host and no such pid. (Another host's process
        cannot be checked from here; flock(2) is what decides who holds the lock.)"""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def lock_path(root: StorePath) -> Path:
    """The file flock(2) holds: in the sweep's folder, or in a local state folder when the
    results are on an object store (see the module's docstring)."""
    return (local_state_dir(root) if isinstance(root, ObjectPath) else root) / LOCK_NAME


def read_holder(root: StorePath) -> LockHolder | None:
    """The record in the lock file (on an object store, the record beside the results): the
    current holder, or the last one when it was killed (see `LockHolder.is_gone`); None when
    there is no lock file."""
    try:
        record: dict[str, Any] = json.loads((root / LOCK_NAME).read_text())
        return LockHolder(**record)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):  # none, or being written this instant
        return None


def _tell(message: str) -> None:
    print(message, file=sys.stderr)


def _try_lock(path: Path) -> int | None:
    """An fd holding the exclusive flock on the file at `path`, or None when another process
    holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)  # the holder released and unlinked it between our open and flock: again


@contextlib.contextmanager
def sweep_lock(root: StorePath, purpose: str, sweep_file: str | None = None, *, wait: bool = False,
               on_wait: Callable[[LockHolder | None], None] | None = None, poll_s: float = 1.0,
               warn: Callable[[str], None] = _tell) -> Iterator[LockHolder]:
    """Hold the sweep's lock for the block. Held by another process: `SweepBusy` naming it,
    or with `wait`, poll until it is free (`on_wait` is told once whom we wait for). On an
    object store, another machine's record beside the results is `warn`ed about, not waited
    for: it cannot be told from a record a killed run left."""
    root.mkdir(parents=True, exist_ok=True)
    path = lock_path(root)
    told = False
    while (fd := _try_lock(path)) is None:
        holder = read_holder(root) if isinstance(root, Path) else _read_local(path)
        if not wait:
            who = holder.describe() if holder else "another process (its record is being written)"
            raise SweepBusy(f"{root}: this sweep is being run by {who}; two runs would write the same shards. "
                            f"Wait for it to finish, or pass --wait to start when it does")
        if not told and on_wait is not None:
            on_wait(holder)
            told = True
        time.sleep(poll_s)
    now = time.time()
    holder = LockHolder(pid=os.getpid(), host=socket.gethostname(), since=time.strftime("%Y-%m-%d %H:%M:%S"),
                        since_epoch=now, purpose=purpose, sweep_file=str(sweep_file or ""))
    record = json.dumps(holder.__dict__).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        if isinstance(root, ObjectPath):
            other = read_holder(root)
            if other is not None and other.host != holder.host:
                warn(f"{root}: {other.describe()} may be writing this sweep too (its record is there; a run killed "
                     f"on that machine leaves one). Runs on two machines are not kept apart on an object store: "
                     f"the work is done twice (never corrupted). Stop one, or delete {root / LOCK_NAME} if stale")
            (root / LOCK_NAME).write_bytes(record)
        yield holder
    finally:
        try:
            if isinstance(root, ObjectPath):
                with contextlib.suppress(FileNotFoundError):
                    (root / LOCK_NAME).unlink()
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # before the close: the path never names a file nobody holds while we run
            os.close(fd)


def _read_local(path: Path) -> LockHolder | None:
    """The local lock file's record (an object store's sweep: its flock lives apart from it)."""
    try:
        return LockHolder(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None
