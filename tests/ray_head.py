"""Stopping one `ray start --head` of the tests and benchmarks, never every Ray on the machine."""
from __future__ import annotations

import os

import psutil


def stop_head(temp_dir: str, group: int) -> None:
    """Stop this head only: the processes started in its process group, those naming its
    temp dir, and their children (workers, the job's driver); never a global `ray stop`,
    which would stop every Ray on the machine."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            args = proc.info["cmdline"] or []
            if os.getpgid(proc.pid) == group or any(a.endswith(temp_dir) or f"{temp_dir}/" in a for a in args):
                found[proc.pid] = proc
        except (psutil.Error, ProcessLookupError):
            continue
    for proc in list(found.values()):
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            pass
    procs = [p for pid, p in found.items() if pid != os.getpid()]
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
