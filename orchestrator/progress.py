"""A live progress display: shards and samples done, samples/s, ETA (rich)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class SampleRate(ProgressColumn):
    """Samples/s of the samples line, blank on the shards line. Computed when the display
    refreshes (rich's speed walks its recent samples), never per finished sample: at a few
    hundred samples/s that walk had cost the driver a second of CPU per 10,000 samples."""

    def render(self, task: Task) -> Text:
        speed = task.speed if task.fields.get("rate") else None
        return Text(f"{speed:6.1f} samples/s" if speed else "")


class SweepProgress:
    def __init__(self, console: Console, shards: int, samples: int, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            SampleRate(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not enabled, transient=False,
        )
        self.shards = self.progress.add_task("shards", total=shards, rate=False)
        self.samples = self.progress.add_task("samples", total=samples, rate=True)
        self.cells_done = 0

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def sample_done(self, n: int = 1) -> None:
        self.progress.advance(self.samples, n)

    def shard_done(self) -> None:
        self.progress.advance(self.shards, 1)

    def shard_retried(self, samples: int) -> None:
        """A retried shard's samples run again: take them off the count."""
        self.progress.advance(self.samples, -samples)
