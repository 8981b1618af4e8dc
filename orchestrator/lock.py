"""One writer per sweep: the lock `orchestrate submit` and `orchestrate sync` hold on `<output>/<sweep>/`.

Two submits of one sweep (two terminals, or a retry while the first still runs) would compute
the same shards twice and log the same cells twice. The lock is `flock(2)` on
`<output>/<sweep>/.submit.lock`: the kernel drops it when its holder exits, however it exits,
so a driver killed with SIGKILL leaves no lock behind, only the file with its last holder's
record (pid, host, since), which the next holder overwrites. The file descriptor is
close-on-exec, so the processes a driver starts (Ray's) never hold it after the driver dies.

The holder unlinks the file on release; a waiter that opened the old file then finds that the
path names another file and tries again, so two holders never lock two different files.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import StoreError

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


def lock_path(root: Path) -> Path:
    return root / LOCK_NAME


def read_holder(root: Path) -> LockHolder | None:
    """The record in the lock file: the current holder, or the last one when it was killed
    (see `LockHolder.is_gone`); None when there is no lock file."""
    try:
        record: dict[str, Any] = json.loads(lock_path(root).read_text())
        return LockHolder(**record)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):  # none, or being written this instant
        return None


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
def sweep_lock(root: Path, purpose: str, sweep_file: str | None = None, *, wait: bool = False,
               on_wait: Callable[[LockHolder | None], None] | None = None, poll_s: float = 1.0
               ) -> Iterator[LockHolder]:
    """Hold the sweep's lock for the block. Held by another process: `SweepBusy` naming it,
    or with `wait`, poll until it is free (`on_wait` is told once whom we wait for)."""
    root.mkdir(parents=True, exist_ok=True)
    path = lock_path(root)
    told = False
    while (fd := _try_lock(path)) is None:
        holder = read_holder(root)
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
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder.__dict__).encode(), 0)
        yield holder
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before the close: the path never names a file nobody holds while we run
        os.close(fd)
