"""One `ray start --head` of the tests and benchmarks: started in a temp dir of its own and
stopped by its processes, never by a global `ray stop`."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


@contextlib.contextmanager
def local_head(num_cpus: int | None = None) -> Iterator[str]:
    """A `ray start --head` (no dashboard) for the block; its address. The caller's
    RAY_ADDRESS and RAY_AUTH_MODE are not passed on: the head is the one given here, and a
    driver must turn token authentication on itself."""
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    cpus = [f"--num-cpus={num_cpus}"] if num_cpus is not None else []
    start = subprocess.Popen([RAY, "start", "--head", *cpus, "--port=0", f"--temp-dir={temp_dir}",
                              "--include-dashboard=false", "--disable-usage-stats"], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0, out
        yield (Path(temp_dir) / "ray_current_cluster").read_text().strip()
    finally:
        stop_head(temp_dir, start.pid)


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
