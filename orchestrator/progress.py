"""A live progress display: shards and samples done, samples/s, ETA (rich)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class SweepProgress:
    def __init__(self, console: Console, shards: int, samples: int, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not enabled, transient=False,
        )
        self.shards = self.progress.add_task("shards", total=shards, rate="")
        self.samples = self.progress.add_task("samples", total=samples, rate="")
        self.cells_done = 0

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def sample_done(self, n: int = 1) -> None:
        self.progress.advance(self.samples, n)
        task = self.progress.tasks[self.samples]
        if task.speed:
            self.progress.update(self.samples, rate=f"{task.speed:6.1f} samples/s")

    def shard_done(self) -> None:
        self.progress.advance(self.shards, 1)

    def shard_retried(self, samples: int) -> None:
        """A retried shard's samples run again: take them off the count."""
        self.progress.advance(self.samples, -samples)
