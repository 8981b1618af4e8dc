"""Results on disk: one Parquet file per shard of a stage, written whole or not at all.

Layout under `<output>/<sweep>/`:
    <kind>/_stages/<stage>/<stage_id>/<shard_id>.parquet   the rows of one shard of a stage
    <kind>/_stages/generate/<stage_id>/stage.json          the shard size the stage was cut with
    <kind>/<cell_id>/cell.json               what the cell is (job, model, params, its stage ids)
                                             (a cell: stages read with summary parameters)
    <kind>/<cell_id>/summary.json            the cell's summary (summary.key.json: what it came from)
    <kind>/<cell_id>/report.parquet          the job's own table, when it has one (Job.report)
    <kind>/<cell_id>/mlflow.json             the MLflow run of that summary

Stages (`jobs.stages`) live apart from cells: a judge swap makes a new cell that reads the
generation stage an earlier cell wrote. A judging shard holds the whole rows (the generation's
columns and its own), so a cell's rows are its last stage's files.

A shard file is written to a temporary name in the same folder, fsynced, then renamed: its
presence is the proof it is complete (on an object store, `output: s3://...`, which has no
rename, the object is put whole: `orchestrator.storage`), so resume is "skip shards whose file exists" and a crash
mid-sweep can never leave a partial or duplicated row. A generation stage keeps the shard size
it started with (`settle_layout`), so a changed `shard_size` cannot cut new shards beside
finished ones. Cells written before stages (rows under `<cell_id>/shards/`) are not read: they
are reported as left behind (`left_behind`).
"""
from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.stages import Stage
from orchestrator.errors import StoreError
from orchestrator.storage import ObjectPath, StorePath, output_root, polars_source, sorted_glob

if TYPE_CHECKING:
    from orchestrator.plan import Cell, Plan, ShardSelection

TEMP_GLOB = ".*.tmp"  # what `_atomic_write` writes before the rename: `.<name>.<random>.tmp`
# mkstemp makes files 0600; results are shared (a cluster's users, a web server), so the
# files we rename into place get the mode the user's umask gives any new file.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
STAGES_DIR = "_stages"  # beside the cell folders of a kind; `_` keeps it apart from their hex ids
STAGE_RECORD = "stage.json"

ID_FIELDS = [
    pa.field("sweep", pa.string(), nullable=False),
    pa.field("stage_id", pa.string(), nullable=False),  # the stage whose shard holds the row
    pa.field("shard_id", pa.string(), nullable=False),
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("error", pa.string()),  # set on a sample the job could not complete; job columns are null
]


def row_schema(job_schema: pa.Schema) -> pa.Schema:
    """The full schema of a job's rows: the id columns first, then the job's own."""
    clash = {f.name for f in ID_FIELDS} & set(job_schema.names)
    assert not clash, f"job schema redefines reserved columns {sorted(clash)}"
    return pa.schema(ID_FIELDS + list(job_schema))


class DiskFull(StoreError):
    """The file system holding the results is full (or over quota); the message names the file."""


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write to `.<name>.<random>.tmp` beside `path`, fsync, rename: a reader sees the old file
    or the whole new one. A temporary file left by a killed writer is never read (readers go
    by name) and the next submit removes it (`SweepStore.remove_stray_temps`)."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"{path}: {os.strerror(e.errno)} ({_free_space(path.parent)} free there); nothing "
                           f"partial was kept. Free some space and submit again: finished shards are kept") from e
        raise


def _free_space(folder: Path) -> str:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    return f"{free / 2**20:.1f} MiB" if free >= 2**20 else f"{free / 2**10:.0f} KiB"


def _write_whole(path: StorePath, write: Callable[[BinaryIO], object]) -> None:
    """A local file written then renamed (`_atomic_write`), or an object made in memory and put
    whole: either way a reader sees all of it or nothing."""
    if isinstance(path, Path):
        _atomic_write(path, write)
        return
    buffer = io.BytesIO()
    write(buffer)
    path.write_bytes(buffer.getvalue())


def write_text(path: StorePath, text: str) -> None:
    """A whole text file, written then renamed (a page a browser may be showing)."""
    _write_whole(path, lambda f: f.write(text.encode()))


def write_parquet(path: StorePath, df: pl.DataFrame) -> None:
    """A whole table, written then renamed: a reader never sees half of it."""
    _write_whole(path, df.write_parquet)


def write_json(path: StorePath, obj: Any, *, unless_same: bool = False) -> None:
    """A whole JSON file. `unless_same`: leave a file that already says exactly this alone
    (a resubmit's unchanged manifests: reading is cheaper than an fsync and a rename)."""
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    if unless_same:
        try:
            if path.read_bytes() == data:
                return
        except FileNotFoundError:
            pass
    _write_whole(path, lambda f: f.write(data))


def read_json(path: StorePath) -> Any:
    return json.loads(path.read_text())


def read_parquet_schema(path: StorePath) -> pa.Schema:
    if isinstance(path, ObjectPath):
        return pq.read_schema(path.path, filesystem=path.fs)
    return pq.read_schema(path)


class SweepStore:
    """Where one sweep's results live."""

    def __init__(self, output: str | StorePath, sweep: str) -> None:
        # A sweep's folder is one path component under the output root: a name from the command
        # line (`status ../x`) must not reach outside it. Sweep files' names are checked stricter.
        if sweep in ("", ".", "..") or "/" in sweep or os.sep in sweep or "\0" in sweep:
            raise StoreError(f"{sweep!r} is not a sweep name: a sweep's results are one folder under the output root")
        # `output`: a local path, or a filesystem URI (`s3://bucket/prefix`: orchestrator.storage)
        self.root: StorePath = output_root(output) / sweep
        self.sweep = sweep

    def cell_dir(self, kind: str, cell_id: str) -> StorePath:
        return self.root / kind / cell_id

    def stage_dir(self, kind: str, stage: str, stage_id: str) -> StorePath:
        return self.root / kind / STAGES_DIR / stage / stage_id

    def shard_path(self, kind: str, stage: str, stage_id: str, shard_id: str) -> StorePath:
        return self.stage_dir(kind, stage, stage_id) / f"{shard_id}.parquet"

    def has_shard(self, kind: str, stage: str, stage_id: str, shard_id: str) -> bool:
        return self.shard_path(kind, stage, stage_id, shard_id).exists()

    def shards_on_disk(self, kind: str, stage: str, stage_id: str) -> set[str]:
        """The ids of a stage's shards on disk: one listing of its folder, where asking for each
        of a big sweep's shards would take a file-system call apiece."""
        return {p.stem for p in self.stage_dir(kind, stage, stage_id).glob("*.parquet")}

    def write_shard(self, kind: str, stage: str, stage_id: str, shard_id: str, rows: Iterable[dict],
                    schema: pa.Schema, metadata: dict[str, str] | None = None) -> StorePath:
        """Validate rows against the schema (a type error fails here, before any file exists)
        and write them as one file, atomically, with `metadata` (what made them: the token
        usage) in the file's key-value metadata."""
        rows = list(rows)
        unknown = sorted({key for row in rows for key in row} - set(schema.names))
        if unknown:  # from_pylist would drop them without a word
            raise ValueError(f"{kind} rows carry keys its schema does not declare: {', '.join(unknown)}")
        table = pa.Table.from_pylist(rows, schema=schema)
        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   **{k.encode(): v.encode() for k, v in metadata.items()}})
        path = self.shard_path(kind, stage, stage_id, shard_id)
        _write_whole(path, lambda f: pq.write_table(table, f, compression="zstd"))
        return path

    def read_shard(self, kind: str, stage: str, stage_id: str, shard_id: str) -> list[dict[str, Any]]:
        path = self.shard_path(kind, stage, stage_id, shard_id)
        if isinstance(path, ObjectPath):
            return pq.read_table(path.path, filesystem=path.fs).to_pylist()
        return pq.read_table(path).to_pylist()

    def read_stage(self, kind: str, stage: str, stage_id: str, shard_ids: Iterable[str] | None = None
                   ) -> pl.DataFrame:
        """The rows of a stage's shards on disk (of `shard_ids` only, when given)."""
        folder = self.stage_dir(kind, stage, stage_id)
        if shard_ids is None:
            files = sorted_glob(folder, "*.parquet")
        else:  # one listing, not a request per shard (an object store's are slow)
            on_disk = self.shards_on_disk(kind, stage, stage_id)
            files = [folder / f"{s}.parquet" for s in shard_ids if s in on_disk]
        if not files:
            raise StoreError(f"stage {stage} {stage_id} of {kind} has no shards on disk under {folder}")
        sources, options = polars_source(files)
        return pl.read_parquet(sources, storage_options=options)

    def shard_metadata(self, kind: str, stage: str, stage_id: str, shard_ids: Iterable[str]) -> list[dict[str, str]]:
        """Each shard file's key-value metadata (as write_shard was given it)."""
        on_disk = self.shards_on_disk(kind, stage, stage_id)
        files = [self.shard_path(kind, stage, stage_id, s) for s in shard_ids if s in on_disk]
        return [{k.decode(): v.decode() for k, v in (read_parquet_schema(f).metadata or {}).items()}
                for f in files]

    def settle_layout(self, cell: Cell) -> Cell:
        """The cell as its generation stage is cut on disk. Shard ids hash their samples, so a
        new shard_size would cut new shards beside the finished ones and the stage would hold
        some samples twice: once a shard of the stage exists, the shard size recorded in its
        stage.json wins. A shard file that belongs to neither layout is refused, never read
        twice."""
        folder = self.stage_dir(cell.kind, "generate", cell.stages["generate"])
        on_disk = self.shards_on_disk(cell.kind, "generate", cell.stages["generate"])
        if not on_disk:
            return cell
        record = folder / STAGE_RECORD
        recorded = read_json(record).get("shard_size") if record.exists() else None
        if recorded and recorded != cell.shard_size:
            cell = cell.resharded(recorded)
        stray = on_disk.difference(cell.shard_ids("generate"))
        if stray:
            raise StoreError(
                f"{folder}: {len(stray)} shard file(s) are not shards of this stage at shard_size "
                f"{cell.shard_size} (it was started with another shard_size, and its {STAGE_RECORD} is gone). "
                f"Set the job's shard_size back, or delete that folder to run the stage again")
        return cell

    def record_layout(self, cell: Cell) -> None:
        """Write the generation stage's shard size before its first shard (see settle_layout)."""
        record = self.stage_dir(cell.kind, "generate", cell.stages["generate"]) / STAGE_RECORD
        if not record.exists():
            write_json(record, {"shard_size": cell.shard_size, "samples": cell.n_samples})

    def settle_plan(self, plan: Plan) -> Plan:
        """`plan` with every cell cut as it is on disk (see settle_layout)."""
        return dataclasses.replace(plan, cells=tuple(self.settle_layout(c) for c in plan.cells))

    def missing(self, cell: Cell, stage: Stage) -> ShardSelection:
        """The generation shards whose part of `stage` is not on disk (made as they are read)."""
        return cell.shards_without(stage, self.shards_on_disk(cell.kind, stage, cell.stages[stage]))

    def rows_of(self, manifest: dict[str, Any]) -> pl.DataFrame:
        """A cell's rows as stored (its last stage's shards on disk), with the cell's id in
        front: stages are shared by the cells that read them, so the rows carry only their
        stage's id."""
        stage, info = list(manifest["stages"].items())[-1]
        rows = self.read_stage(manifest["kind"], stage, info["id"], info["shards"])
        return rows.select(pl.lit(manifest["cell_id"]).alias("cell_id"), pl.all())

    def read_cell(self, kind: str, cell_id: str) -> pl.DataFrame:
        """The rows of a cell on disk (see rows_of)."""
        manifest = self.cell_dir(kind, cell_id) / "cell.json"
        if not manifest.exists():
            raise StoreError(f"no cell {cell_id} of {kind} under {self.root}")
        return self.rows_of(read_json(manifest))

    def cell_metadata(self, manifest: dict[str, Any]) -> list[dict[str, str]]:
        """The metadata of every shard of every stage of a cell (a cell.json as `cells` gives it)."""
        return [m for stage, info in manifest["stages"].items()
                for m in self.shard_metadata(manifest["kind"], stage, info["id"], info["shards"])]

    def shards_done(self, manifest: dict[str, Any], stage: str) -> int:
        info = manifest["stages"][stage]
        on_disk = self.shards_on_disk(manifest["kind"], stage, info["id"])
        return sum(s in on_disk for s in info["shards"]) if on_disk else 0

    def is_complete(self, manifest: dict[str, Any]) -> bool:
        """Every shard of the cell's last stage (a cell.json as `cells` returns it) is on disk."""
        stage = list(manifest["stages"])[-1]
        return self.shards_done(manifest, stage) == len(manifest["stages"][stage]["shards"])

    def kinds(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob("*/cell.json")))

    def cells(self, kind: str | None = None) -> list[dict]:
        """The cell manifests on disk, each with its summary when there is one (cells from
        before stages are not among them: see left_behind)."""
        out = []
        for kd in [kind] if kind else self.kinds():
            for manifest in sorted_glob(self.root / kd, "*/cell.json"):
                cell = read_json(manifest)
                if "stages" not in cell:
                    continue
                summary = manifest.with_name("summary.json")
                cell["summary"] = read_json(summary) if summary.exists() else None
                out.append(cell)
        return out

    def stray_temps(self) -> list[Path]:
        """Temporary files of writers that died mid-write (or are writing now). An object store
        has none: its objects are put whole (an unfinished upload is no object)."""
        if isinstance(self.root, ObjectPath):
            return []
        return sorted(self.root.rglob(TEMP_GLOB)) if self.root.exists() else []

    def remove_stray_temps(self, older_than: float) -> list[Path]:
        """Remove the temporary files last written before `older_than` (the time this process
        took the sweep's lock: no writer that old is alive), and return them. A newer one may
        be a live writer's and is left alone."""
        removed = []
        for tmp in self.stray_temps():
            try:
                if tmp.stat().st_mtime < older_than:
                    tmp.unlink()
                    removed.append(tmp)
            except FileNotFoundError:  # its writer finished (renamed it) meanwhile
                pass
        return removed

    def left_behind(self) -> list[StorePath]:
        """Cell folders written before stages: their rows sit under `shards/` and are read by
        nothing now. Resubmitting the sweep computes those cells anew under their new ids."""
        if not self.root.exists():
            return []
        return [p.parent for p in sorted_glob(self.root, "*/*/cell.json")
                if "stages" not in read_json(p) or (p.parent / "shards").is_dir()]
