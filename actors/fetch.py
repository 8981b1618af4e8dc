"""Folders on an object store, as the processes of one node use them: finetune outputs
uploaded from a rank's node, and fetched into a per-node cache before a replica loads them.

A sweep whose results are on an object store (`output: s3://...`) has no folder its nodes
share, so a finetune moves through the store: its ranks work in their own node's scratch
folder (`node_scratch()`), rank 0 uploads the finished adapter or model (`upload_folder`),
and a replica that is given the folder's URI downloads it once per node (`fetched`) and loads
the local copy. Everything here is plain pyarrow.fs: `FileSystem.from_uri` opens the store a
URI names (its query may carry the endpoint, `?endpoint_override=host:port&scheme=http`),
credentials come from the environment (AWS_ACCESS_KEY_ID, an instance role, ...), and
`copy_files` moves whole folders between it and the local disk.

The cache assumes that what is at a URI does not change, which holds for finetune folders:
their name carries the finetune's content id. Nothing evicts it; it lives in the node's temp
folder (`TMPDIR`), so a node's reboot or a cleaner of /tmp does.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

SCRATCH_NAME = "orchestrate"


def is_remote(location: str) -> bool:
    """A filesystem URI (`s3://...`) rather than a local path (`file://` counts as local)."""
    return "://" in location and urlsplit(location).scheme not in ("", "file")


def node_scratch() -> Path:
    """This node's scratch folder (under its temp folder): node-local finetune work and the
    fetch cache. Lost with the node: a finetune's checkpoints there do not survive it."""
    return Path(tempfile.gettempdir()) / SCRATCH_NAME


def _open(uri: str) -> tuple[pafs.FileSystem, str]:
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def upload_folder(local: str | os.PathLike[str], uri: str) -> None:
    """Copy the local folder's files to the folder `uri` names (objects are put whole; a
    folder's files appear one by one, so the caller marks the whole as done afterwards)."""
    fs, path = _open(uri)
    pafs.copy_files(os.fspath(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def fetched(location: str) -> str:
    """A local folder holding what `location` holds: `location` itself when it is local, else
    this node's cached download of it. The download goes to a temporary folder renamed into
    place when complete, under a file lock, so replicas starting together on one node download
    it once and none loads a half-downloaded folder."""
    if not is_remote(location):
        return location
    fs, path = _open(location)
    scheme = urlsplit(location).scheme
    key = hashlib.sha256(f"{scheme}://{path}".encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(path.split("/")[-2:]))  # <name>-<id>-adapter
    cache = node_scratch() / "fetched"
    final = cache / f"{readable}-{key}"
    if final.is_dir():
        return str(final)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if final.is_dir():  # another replica of this node fetched it while we waited
            return str(final)
        partial = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
        try:
            pafs.copy_files(path, str(partial), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            if not any(partial.iterdir()):
                raise FileNotFoundError(f"{scheme}://{path}: no files there to fetch")
            os.rename(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return str(final)
