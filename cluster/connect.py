"""Connect to a Ray cluster, or start an embedded local one.

Embedded (no address): a private local Ray with the dashboard on 127.0.0.1. `address="local"`
forces a fresh instance even if a crashed one left /tmp/ray/ray_current_cluster behind.
Joining a cluster (`--address`, RAY_ADDRESS or the sweep's `cluster.address`): the driver ships
its own copy of the project's packages (runtime_env py_modules) so replicas run the same code.
Token authentication stays on: Ray reads the token from ~/.ray/auth_token or RAY_AUTH_TOKEN.
A dashboard address (`http://HEAD:8265`, `https://...`) is no place for a driver: it names the
Jobs API, which `job_submission_client` talks to (orchestrator.ray_job submits sweeps there).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import ray

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

DASHBOARD_SCHEMES = ("http://", "https://")
# Ray's client prefers these variables to the address it is given (ray.dashboard.utils.
# get_address_for_submission_client); an address the user typed must win.
_ADDRESS_OVERRIDES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


@dataclass
class RaySession:
    address: str | None  # None when embedded
    dashboard_url: str | None
    namespace: str
    embedded: bool


def enable_token_auth_for(address: str) -> bool:
    """Ray only auto-enables token auth for `auto`; with an explicit address the client must
    say RAY_AUTH_MODE=token itself. Do so when a token is at hand and the user said nothing."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return os.environ["RAY_AUTH_MODE"].lower() == "token"
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.exists():
        os.environ["RAY_AUTH_MODE"] = "token"
        # Ray caches its config at import: refresh it, as Ray itself does.
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")
        return True
    return False


@contextlib.contextmanager
def ray_session(*, address: str | None, namespace: str, num_cpus: int | None = None, num_gpus: int | None = None,
                dashboard: bool = True, temp_dir: str | None = None,
                py_modules: Sequence[ModuleType] = ()) -> Iterator[RaySession]:
    """A Ray session for the block: the running one when the caller owns it, else a joined
    cluster (`address`; `py_modules`, the caller's packages, ship to its workers) or an
    embedded local Ray. Shut down on the way out unless the caller owned it."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():  # a caller (a notebook, a test) already owns the session
        ctx = ray.get_runtime_context()
        yield RaySession(address=ctx.gcs_address, dashboard_url=None, namespace=ctx.namespace, embedded=False)
        return
    if address:
        enable_token_auth_for(address)
        info = ray.init(address=address, namespace=namespace, runtime_env={"py_modules": _module_dirs(py_modules)},
                        log_to_driver=False)
        embedded = False
    else:
        info = ray.init(address="local", namespace=namespace, num_cpus=num_cpus, num_gpus=num_gpus,
                        include_dashboard=dashboard, dashboard_host="127.0.0.1", _temp_dir=temp_dir,
                        log_to_driver=False)
        embedded = True
    url = getattr(info, "dashboard_url", None) or None
    if url and not url.startswith("http"):
        url = f"http://{url}"
    try:
        yield RaySession(address=address, dashboard_url=url, namespace=namespace, embedded=embedded)
    finally:
        ray.shutdown()


def _module_dirs(modules: Sequence[ModuleType]) -> list[str]:
    """The packages' folders, which Ray uploads as it would the modules. Paths, not module
    objects: inside a Ray Job, ray.init deep-copies the runtime_env to merge it with the
    job's, and a module object cannot be copied ("cannot pickle 'module' object")."""
    return [str(getattr(m, "__path__", [m.__file__])[0]) for m in modules]


def is_dashboard_address(address: str | None) -> bool:
    """`http(s)://HEAD:8265`: the dashboard's Jobs API, as `ray job submit --address` takes it."""
    return bool(address) and str(address).lower().startswith(DASHBOARD_SCHEMES)


def job_submission_client(address: str) -> JobSubmissionClient:
    """A Jobs API client of the dashboard at `address`, with the cluster's token in its
    requests' Authorization header when one is at hand (Ray adds it once RAY_AUTH_MODE is
    token: `enable_token_auth_for`). Raises ConnectionError (nothing answers there) or
    ray.exceptions.AuthenticationError (no token, or the wrong one)."""
    from ray.job_submission import JobSubmissionClient

    enable_token_auth_for(address)
    saved = {name: os.environ.pop(name) for name in _ADDRESS_OVERRIDES if name in os.environ}
    try:  # the client reads the variables while it is made, and only then
        return JobSubmissionClient(address)
    finally:
        os.environ.update(saved)
