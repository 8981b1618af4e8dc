"""`orchestrate organisms`: build and bundle the tiny model organisms (registered on the main
command in `orchestrator.cli`)."""
from __future__ import annotations

from pathlib import Path

import click

from orchestrator.errors import OrchestrateError


@click.group()
def organisms() -> None:
    """Tiny model organisms trained on CPU (known faithfulness, backdoors, judge)."""


@organisms.command("build")
@click.argument("names", nargs=-1)
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="default: ORCHESTRATE_ORGANISMS_DIR or ~/.cache/orchestrate/organisms")
@click.option("--force", is_flag=True, help="rebuild even if cached")
def organisms_build(names: tuple[str, ...], cache_dir: str | None, force: bool) -> None:
    """Build (or find in the cache) the named organisms, or all of them."""
    from jobs.organisms.build import build_organisms
    from jobs.organisms.recipes import ORGANISMS

    unknown = sorted(set(names) - set(ORGANISMS))
    if unknown:
        raise OrchestrateError(f"unknown organism(s) {', '.join(unknown)}; known: {', '.join(sorted(ORGANISMS))}")
    built = build_organisms(list(names) or None, Path(cache_dir) if cache_dir else None, force=force)
    for name, path in built.items():
        click.echo(f"{name}\t{path}")


@organisms.command("bundle")
@click.argument("names", nargs=-1)
def organisms_bundle(names: tuple[str, ...]) -> None:
    """Copy the current builds (built first if needed) into the repository's organisms/ folder,
    which fresh clones and CI copy from instead of training."""
    from jobs.organisms.build import bundle
    from jobs.organisms.recipes import ORGANISMS

    unknown = sorted(set(names) - set(ORGANISMS))
    if unknown:
        raise OrchestrateError(f"unknown organism(s) {', '.join(unknown)}; known: {', '.join(sorted(ORGANISMS))}")
    for name, path in bundle(list(names) or None).items():
        click.echo(f"{name}\t{path}")
