"""Where results live: a local folder (a `pathlib.Path`) or a folder of an object store named by a
URI (`s3://bucket/prefix`, `gs://...`, anything `pyarrow.fs.FileSystem.from_uri` opens).

`ObjectPath` is the part of `pathlib.Path` the store uses, on a `pyarrow.fs` filesystem, so the
store's callers join, test and read paths the same way wherever the results are. What differs is
writing: an object store has no rename, so an object is written whole (`write_bytes`: the bytes
are made in memory first and handed over in one write; arrow's S3 stream, opened with
`allow_delayed_open`, sends an object under its 10 MiB part size as one PutObject when the stream
closes, and a bigger one as a multipart upload that S3 shows only once it is completed, at close)
and the object's existence is the proof it is complete, as a renamed file's is on a disk.

Credentials are never in a URI we are given or print: pyarrow and polars take them from the
standard environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, a profile, an
instance role; GOOGLE_APPLICATION_CREDENTIALS). A URI's query may say where the store is
(`?endpoint_override=host:port&scheme=http&region=...`, pyarrow's own S3 URI options); it is
kept out of the text paths are shown with.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow.fs as pafs

from orchestrator.errors import StoreError

# Object stores have no folders: a "folder" exists when an object is under its prefix, and
# writing needs no mkdir. Other pyarrow filesystems (HDFS, a local one by URI) have real ones.
OBJECT_STORES = ("s3", "gs", "gcs", "abfs", "abfss", "az")


def is_uri(output: str | os.PathLike[str]) -> bool:
    """A filesystem URI (`s3://...`) rather than a local path. `file://` and plain paths stay
    local: they keep the local store's guarantees (fsync + rename, file modes, flock)."""
    text = os.fspath(output)
    return "://" in text and urlsplit(text).scheme not in ("", "file")


def _with_whole_puts(uri: str) -> str:
    """The S3 URI with `allow_delayed_open=true` unless it says otherwise: without it arrow
    starts a multipart upload when the stream opens, with it a small object is one PutObject."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        return uri
    query = dict(parse_qsl(parts.query))
    query.setdefault("allow_delayed_open", "true")
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass(frozen=True)
class _Stat:
    st_mtime: float
    st_size: int


@dataclass(frozen=True)
class ObjectPath:
    """A path on a pyarrow filesystem: `fs` and `path` as pyarrow names it (`bucket/key`),
    `scheme` and `query` to show it (`s3://bucket/key`) and to open it again elsewhere."""

    fs: pafs.FileSystem
    path: str
    scheme: str
    query: str = ""

    @classmethod
    def from_uri(cls, uri: str) -> ObjectPath:
        parts = urlsplit(uri)
        if parts.username or parts.password:  # pyarrow would take `s3://KEY:SECRET@bucket`
            raise StoreError(f"output {parts.scheme}://{parts.hostname}{parts.path}: credentials do not go in the "
                             f"URI (it is written in sweep files and records); set AWS_ACCESS_KEY_ID and "
                             f"AWS_SECRET_ACCESS_KEY (or a profile, or a role) in the environment")
        try:
            fs, path = pafs.FileSystem.from_uri(_with_whole_puts(uri))
        except (ValueError, OSError) as e:  # pyarrow says which part it could not take
            raise StoreError(f"output {uri}: {e}") from e
        return cls(fs, path.rstrip("/"), parts.scheme, parts.query)

    # --- names, as pathlib has them
    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(self.fs, posixpath.join(self.path, name), self.scheme, self.query)

    def joinpath(self, *names: str) -> ObjectPath:
        out = self
        for name in names:
            out = out / name
        return out

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def stem(self) -> str:
        name = self.name
        return name[:name.rindex(".")] if "." in name[1:] else name

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.fs, posixpath.dirname(self.path), self.scheme, self.query)

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    def as_uri(self) -> str:
        """The URI that opens this path again (with the endpoint options of the one we were given)."""
        return f"{self}?{self.query}" if self.query else str(self)

    def __lt__(self, other: ObjectPath) -> bool:  # sorted(), as paths sort
        return self.path < other.path

    def __hash__(self) -> int:
        return hash((self.scheme, self.path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and (self.scheme, self.path) == (other.scheme, other.path)

    # --- what is there
    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return bool(self._info().type != pafs.FileType.NotFound)

    def is_dir(self) -> bool:
        return bool(self._info().type == pafs.FileType.Directory)

    def is_file(self) -> bool:
        return bool(self._info().type == pafs.FileType.File)

    def stat(self) -> _Stat:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        return _Stat(info.mtime.timestamp() if info.mtime else 0.0, info.size or 0)

    def _listing(self, recursive: bool) -> list[pafs.FileInfo]:
        return list(self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)))

    def iterdir(self) -> Iterator[ObjectPath]:
        for info in self._listing(recursive=False):
            yield ObjectPath(self.fs, info.path.rstrip("/"), self.scheme, self.query)

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """The paths under this one matching `pattern` component by component (`*/cell.json`),
        from one listing: as `Path.glob` for the patterns the store uses (no `**`)."""
        depth = pattern.count("/") + 1
        listing = self._listing(recursive=depth > 1)
        for info in listing:
            relative = info.path.rstrip("/")[len(self.path) + 1:]
            parts = relative.split("/")
            if len(parts) == depth and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern.split("/"))):
                yield ObjectPath(self.fs, info.path.rstrip("/"), self.scheme, self.query)

    def rglob(self, pattern: str) -> Iterator[ObjectPath]:
        for info in self._listing(recursive=True):
            if fnmatch.fnmatchcase(posixpath.basename(info.path.rstrip("/")), pattern):
                yield ObjectPath(self.fs, info.path.rstrip("/"), self.scheme, self.query)

    # --- contents
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return bytes(f.read())

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """The whole object in one write, then close: the object appears at close, whole, or
        not at all (see the module's docstring). Nothing is written before `data` is complete."""
        if self.scheme not in OBJECT_STORES:
            self.fs.create_dir(self.parent.path, recursive=True)
        stream = self.fs.open_output_stream(self.path)
        stream.write(data)
        stream.close()

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if self.scheme not in OBJECT_STORES:
            self.fs.create_dir(self.path, recursive=parents)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    # --- for readers that open paths themselves
    def polars_options(self) -> dict[str, str] | None:
        """polars' `storage_options` reaching the same store: the endpoint a URI's query names
        (polars reads credentials from the same environment variables as pyarrow)."""
        query = dict(parse_qsl(self.query))
        if self.scheme != "s3" or not query:
            return None
        options: dict[str, str] = {}
        if "endpoint_override" in query:
            scheme = query.get("scheme", "https")
            options["aws_endpoint_url"] = f"{scheme}://{query['endpoint_override']}"
            if scheme == "http":
                options["aws_allow_http"] = "true"
        if "region" in query:
            options["aws_region"] = query["region"]
        return options or None


StorePath = Path | ObjectPath  # a local file or folder, or one on an object store


def output_root(output: str | os.PathLike[str] | ObjectPath) -> StorePath:
    """The results root an `output:` names: a URI's folder, or a local path made absolute."""
    if isinstance(output, ObjectPath):
        return output
    if is_uri(output):
        return ObjectPath.from_uri(os.fspath(output))
    return Path(output).expanduser().resolve()


def sorted_glob(folder: StorePath, pattern: str) -> list[StorePath]:
    """`sorted(folder.glob(pattern))`, typed for either kind of path."""
    if isinstance(folder, Path):
        return list(sorted(folder.glob(pattern)))
    return list(sorted(folder.glob(pattern)))


def polars_source(files: list[StorePath]) -> tuple[list[str], dict[str, Any] | None]:
    """Files as polars' readers take them: their texts, and the storage options of an object
    store (one store per read: the files of one sweep)."""
    remote = [f for f in files if isinstance(f, ObjectPath)]
    return [str(f) for f in files], remote[0].polars_options() if remote else None


def local_state_dir(root: StorePath) -> Path:
    """A folder on this machine for what cannot live on an object store (the sweep's lock, a
    default sqlite MLflow store): `$XDG_STATE_HOME/orchestrate/<sweep>-<digest of the URI>`."""
    base = Path(os.environ.get("XDG_STATE_HOME") or "~/.local/state").expanduser() / "orchestrate"
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    folder = base / f"{root.name}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def local_copy(path: StorePath) -> Iterator[Path]:
    """A local file or folder with `path`'s name and contents, for tools that read local files
    only (MLflow's log_artifact): `path` itself when local, else a temporary download."""
    if isinstance(path, Path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="orchestrate-") as tmp:
        local = Path(tmp) / path.name
        if path.is_dir():
            local.mkdir()  # arrow copies into it, making no folder itself
            pafs.copy_files(path.path, str(local), source_filesystem=path.fs,
                            destination_filesystem=pafs.LocalFileSystem())
        else:
            local.write_bytes(path.read_bytes())
        yield local
