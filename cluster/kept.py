"""The model replicas a cluster keeps between sweeps (`cluster.keep_replicas`): listed, and
ended on request. They are detached actors in one namespace (actors.pool.WARM_NAMESPACE),
named `<model>/<key>/<index>`, so they outlive every driver until stopped here or by
`ray stop`."""
from __future__ import annotations

import os

import ray

from actors.pool import WARM_NAMESPACE
from cluster.connect import enable_token_auth_for


def kept_replicas(address: str | None, *, stop: bool = False) -> list[str]:
    """The names of the kept replicas on the cluster at `address` (default: RAY_ADDRESS, else
    the one running on this machine); with `stop`, each is ended first."""
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    enable_token_auth_for(address)
    ray.init(address=address, namespace=WARM_NAMESPACE, log_to_driver=False)
    try:
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["namespace"] == WARM_NAMESPACE)
        if stop:
            for name in names:
                ray.kill(ray.get_actor(name, namespace=WARM_NAMESPACE), no_restart=True)
        return names
    finally:
        ray.shutdown()
