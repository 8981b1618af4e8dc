"""What a comparison reads: the complete cells of one or more sweeps, each with the keys it can
be grouped by.

A source is a sweep file (its cells as the file asks for them now, read from its output) or a
sweep's results folder (`<output>/<sweep>`, the cells on disk). Cells not complete are left out
and counted: a mean over part of a cell would read as the whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.job import JobParams
from jobs.registry import get_job
from orchestrator.errors import OrchestrateError
from orchestrator.storage import StorePath, is_uri, output_root
from orchestrator.store import SweepStore

REPLICATE_KEYS = ("seed", "repeat")  # swept values that are draws of one condition: pooled by default


class SourceError(OrchestrateError):
    """A comparison's source is not a sweep file or a sweep's results folder."""


@dataclass(frozen=True)
class CellRef:
    """One complete cell, where its rows are, and its keys (all strings, for grouping)."""

    source: str  # the sweep's label in tables
    store: SweepStore
    manifest: dict[str, Any]
    params: JobParams
    keys: dict[str, str]

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def id(self) -> str:
        return str(self.manifest["cell_id"])

    @property
    def key(self) -> str:
        """The cell among all sources: two sweeps with the same jobs share cell ids."""
        return f"{self.source}/{self.id}"

    def files(self) -> list[StorePath]:
        """The Parquet files of the cell's rows: its last stage's shards."""
        stage, info = list(self.manifest["stages"].items())[-1]
        return [self.store.shard_path(self.kind, stage, info["id"], s) for s in info["shards"]]


@dataclass
class Sources:
    cells: list[CellRef] = field(default_factory=list)
    incomplete: dict[str, int] = field(default_factory=dict)  # source -> cells left out


def _key_text(value: Any) -> str:
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _manifests(source: str, output: str) -> tuple[SweepStore, list[dict[str, Any]]]:
    if is_uri(source) or (is_uri(output) and "/" not in source and not source.endswith((".yaml", ".yml"))
                          and not Path(source).exists()):
        # a results folder on an object store, or a sweep's name under an output there
        folder = output_root(source) if is_uri(source) else output_root(output) / source
        return _folder_cells(SweepStore(folder.parent, folder.name), source)
    path = Path(source)
    if not path.exists() and path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        path = Path(output) / path  # a sweep's name: its folder under the results root
    if path.suffix in (".yaml", ".yml"):
        from orchestrator.load import load_sweep
        from orchestrator.plan import make_plan

        sweep = load_sweep(path)
        store = SweepStore(sweep.output, sweep.name)
        return store, [c.manifest() for c in store.settle_plan(make_plan(sweep)).cells]
    if path.is_dir():
        return _folder_cells(SweepStore(path.parent, path.name), str(path))
    raise SourceError(f"{path}: not a sweep file (.yaml), a sweep's results folder or a sweep name under {output}")


def _folder_cells(store: SweepStore, source: str) -> tuple[SweepStore, list[dict[str, Any]]]:
    cells = store.cells()
    if cells:
        return store, cells
    raise SourceError(f"{source}: no finished cells found (expected a sweep's results folder, <output>/<sweep>, "
                      "holding <kind>/<cell_id>/cell.json)")


def read_sources(paths: list[str], output: str = "results") -> Sources:
    """The complete cells of every source (a sweep file, a results folder, or a sweep's name
    under `output`), labelled by sweep name (by folder where two sources share a name)."""
    loaded = [_manifests(p, output) for p in paths]
    roots = [store.root for store, _ in loaded]
    if len(set(roots)) < len(roots):
        twice = sorted({str(r) for r in roots if roots.count(r) > 1})
        raise SourceError(f"a source is given twice: {', '.join(twice)}")
    names = [store.sweep for store, _ in loaded]
    out = Sources()
    for store, manifests in loaded:
        label = store.sweep if names.count(store.sweep) == 1 else str(store.root)
        for m in manifests:
            if not store.is_complete(m):
                out.incomplete[label] = out.incomplete.get(label, 0) + 1
                continue
            keys = {k: _key_text(v) for k, v in m["point"].items() if not isinstance(v, (list, dict))}
            keys.update(sweep=label, model=m["model"], replicates=m.get("replicates", m["model"]),
                        **{f"role.{r}": name for r, name in m["roles"].items() if r != "subject"})
            params = get_job(m["kind"]).Params.model_validate(m["params"])
            out.cells.append(CellRef(label, store, m, params, keys))
    # A replicate group is shown by the models in it (a finetune's seeds: "em-s0|em-s1").
    members: dict[str, set[str]] = {}
    for c in out.cells:
        members.setdefault(c.keys["replicates"], set()).add(c.keys["model"])
    for c in out.cells:
        c.keys["model_group"] = "|".join(sorted(members[c.keys["replicates"]]))
        del c.keys["replicates"]
    return out
