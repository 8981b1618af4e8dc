"""Results on disk: one Parquet file per shard, written whole or not at all.

Layout under `<output>/<sweep>/`:
    <kind>/<cell_id>/cell.json               what the cell is (job, model, params)
    <kind>/<cell_id>/shards/<shard_id>.parquet  the rows of one shard
    <kind>/<cell_id>/summary.json            the cell's summary, once all shards exist
    <kind>/<cell_id>/report.parquet          the job's own table, when it has one (Job.report)
    <kind>/<cell_id>/mlflow.json             the MLflow run the cell was logged to

A shard file is written to a temporary name in the same folder, fsynced, then renamed: its
presence is the proof it is complete, so resume is "skip shards whose file exists" and a crash
mid-sweep can never leave a partial or duplicated row. A cell keeps the shard size it started
with (`settle_layout`), so a changed `shard_size` cannot cut new shards beside finished ones.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.errors import StoreError

if TYPE_CHECKING:
    from orchestrator.plan import Cell, Plan

ID_FIELDS = [
    pa.field("sweep", pa.string(), nullable=False),
    pa.field("cell_id", pa.string(), nullable=False),
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


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(path: Path, df: pl.DataFrame) -> None:
    """A whole table, written then renamed: a reader never sees half of it."""
    _atomic_write(path, df.write_parquet)


def write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode()))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class SweepStore:
    """Where one sweep's results live."""

    def __init__(self, output: str | Path, sweep: str) -> None:
        self.root = Path(output).expanduser().resolve() / sweep
        self.sweep = sweep

    def cell_dir(self, kind: str, cell_id: str) -> Path:
        return self.root / kind / cell_id

    def shard_path(self, kind: str, cell_id: str, shard_id: str) -> Path:
        return self.cell_dir(kind, cell_id) / "shards" / f"{shard_id}.parquet"

    def has_shard(self, kind: str, cell_id: str, shard_id: str) -> bool:
        return self.shard_path(kind, cell_id, shard_id).exists()

    def write_shard(self, kind: str, cell_id: str, shard_id: str, rows: Iterable[dict], schema: pa.Schema,
                    metadata: dict[str, str] | None = None) -> Path:
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
        path = self.shard_path(kind, cell_id, shard_id)
        _atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))
        return path

    def settle_layout(self, cell: Cell) -> Cell:
        """The cell as it is cut on disk. Shard ids hash their samples, so a new shard_size
        would cut new shards beside the finished ones and the cell would hold some samples
        twice: once a shard of the cell exists, the shard size recorded in its cell.json wins.
        A shard file that belongs to neither layout is refused, never read twice."""
        cell_dir = self.cell_dir(cell.kind, cell.id)
        on_disk = {p.stem for p in (cell_dir / "shards").glob("*.parquet")}
        if not on_disk:
            return cell
        manifest = cell_dir / "cell.json"
        recorded = read_json(manifest).get("shard_size") if manifest.exists() else None
        if recorded and recorded != cell.shard_size:
            cell = cell.resharded(recorded)
        stray = on_disk - {s.id for s in cell.shards}
        if stray:
            raise StoreError(
                f"{cell_dir}: {len(stray)} shard file(s) are not shards of this cell at shard_size "
                f"{cell.shard_size} (it was started with another shard_size, by a version that did not "
                f"record it). Set the job's shard_size back, or delete that folder to run the cell again")
        return cell

    def settle_plan(self, plan: Plan) -> Plan:
        """`plan` with every cell cut as it is on disk (see settle_layout)."""
        return dataclasses.replace(plan, cells=tuple(self.settle_layout(c) for c in plan.cells))

    def read_cell(self, kind: str, cell_id: str) -> pl.DataFrame:
        files = sorted((self.cell_dir(kind, cell_id) / "shards").glob("*.parquet"))
        if not files:
            raise StoreError(f"cell {cell_id} has no shards on disk under {self.cell_dir(kind, cell_id)}")
        return pl.read_parquet(files)

    def shard_metadata(self, kind: str, cell_id: str) -> list[dict[str, str]]:
        """Each shard file's key-value metadata (as write_shard was given it)."""
        files = sorted((self.cell_dir(kind, cell_id) / "shards").glob("*.parquet"))
        return [{k.decode(): v.decode() for k, v in (pq.read_schema(f).metadata or {}).items()} for f in files]

    def is_complete(self, manifest: dict[str, Any]) -> bool:
        """Every shard of the cell (a cell.json as `cells` returns it) is on disk."""
        return all(self.has_shard(manifest["kind"], manifest["cell_id"], s) for s in manifest["shards"])

    def scan_kind(self, kind: str) -> pl.LazyFrame | None:
        """All rows of one job kind across the sweep's cells, lazily; None when there are none."""
        pattern = self.root / kind / "*" / "shards" / "*.parquet"
        if not any(self.root.glob(str(pattern.relative_to(self.root)))):
            return None
        return pl.scan_parquet(str(pattern))

    def kinds(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob("*/cell.json")))

    def cells(self, kind: str | None = None) -> list[dict]:
        """The cell manifests on disk, each with its summary when there is one."""
        out = []
        for kd in [kind] if kind else self.kinds():
            for manifest in sorted((self.root / kd).glob("*/cell.json")):
                cell = read_json(manifest)
                summary = manifest.with_name("summary.json")
                cell["summary"] = read_json(summary) if summary.exists() else None
                out.append(cell)
        return out
