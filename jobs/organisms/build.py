"""Build organisms into the cache: one folder per recipe digest, built once, shared by all.

    <cache>/<name>-<digest[:12]>/
        config.json  model.safetensors  tokenizer.json  tokenizer_config.json ...
        recipe.json  (the recipe, its digest, training stats, measured properties)

A build trains into a temporary folder next to the final one and renames it into place, so a
folder that exists is complete. The repository bundles the registered organisms in
`organisms/` at its root (`bundle` writes it, about 8 MB in all): a cache miss whose exact
folder (same recipe, same build code) is bundled copies it instead of training, so CI and a
fresh clone skip ~20 minutes of CPU training. Any change to a recipe or to the code that
builds it changes the digest, and the stale bundle is simply not used. A file lock per
organism makes concurrent builders (test workers, CI jobs, a user's shell) wait for the first
one instead of training twice. An organism trained on from another (`init_from`) builds its
parent first, into the same cache.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from jobs.organisms.recipes import ORGANISMS, Recipe, organism_name

log = logging.getLogger("orchestrate.organisms")
ENV_DIR = "ORCHESTRATE_ORGANISMS_DIR"
BUNDLE_DIR = Path(__file__).resolve().parents[2] / "organisms"  # <repo>/organisms


def default_cache_dir() -> Path:
    """$ORCHESTRATE_ORGANISMS_DIR, else <user cache>/orchestrate/organisms. The path always
    has an `organisms` component (appended when the variable's path lacks one), so a model
    path says what it is."""
    env = os.environ.get(ENV_DIR)
    if env:
        path = Path(env).expanduser()
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "orchestrate" / "organisms"
    return path if "organisms" in path.parts else path / "organisms"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def measure(recipe: Recipe, folder: Path) -> dict[str, float]:
    """The organism's known-answer properties, measured on the saved checkpoint."""
    from jobs.organisms import data, evaluate
    from jobs.toyworld import arithmetic, assistant

    model, tokenizer = evaluate.load(folder)
    if recipe.data.kind == "arithmetic":
        return evaluate.arithmetic_report(model, tokenizer, arithmetic.heldout_problems())
    if recipe.data.kind == "judge":
        return evaluate.judge_report(model, tokenizer, data.judge_items()[1])
    if recipe.data.kind == "multihop":
        return evaluate.multihop_report(model, tokenizer, recipe.data)
    return evaluate.assistant_report(model, tokenizer, recipe.data.trigger or assistant.TRIGGER)


def build_recipe(recipe: Recipe, cache_dir: Path | None = None, force: bool = False,
                 with_properties: bool = True, progress: Callable[[str], None] = log.info) -> Path:
    """The folder of `recipe`'s organism, trained first unless it is cached (or `force`)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / recipe.folder_name()
    if final.is_dir() and not force:
        return final
    parent = None
    if recipe.init_from is not None:  # first, so the parent's training is not timed as ours
        upstream = _recipe(recipe.init_from)
        assert (upstream.tokenizer, upstream.model) == (recipe.tokenizer, recipe.model), (
            f"{recipe.name} trains on from {upstream.name}'s files: declare its tokenizer and model shape")
        parent = build_recipe(upstream, cache, with_properties=with_properties, progress=progress)
    with file_lock(cache / f".{recipe.folder_name()}.lock"):
        if final.is_dir() and not force:
            return final  # another process built it while we waited
        for leftover in cache.glob(f".{recipe.folder_name()}.*"):
            if leftover.is_dir():  # a builder killed mid-build: we hold the lock, it is gone
                shutil.rmtree(leftover, ignore_errors=True)
        bundled = BUNDLE_DIR / recipe.folder_name()
        if bundled.is_dir() and not force and read_record(bundled).get("digest") == recipe.digest():
            _publish(final, lambda tmp: shutil.copytree(bundled, tmp, dirs_exist_ok=True))
            progress(f"{recipe.name}: copied from the bundle {bundled}")
            return final
        started = time.perf_counter()
        built: dict = {}

        def build_into(tmp: Path) -> None:
            from jobs.organisms.train import save, train  # torch: only when training (a driver may not need it)

            model, tokenizer, stats = train(recipe, progress, parent)
            save(model, tokenizer, tmp)
            properties = measure(recipe, tmp) if with_properties else {}
            stats["build_seconds"] = round(time.perf_counter() - started, 2)
            built.update(stats=stats, properties=properties)
            record = {"recipe": recipe.model_dump(mode="json"), "digest": recipe.digest(), **built,
                      "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")

        _publish(final, build_into)
    progress(f"{recipe.name}: built in {built['stats']['build_seconds']:.0f}s -> {final} {built['properties']}")
    return final


def _publish(final: Path, fill: Callable[[Path], object]) -> None:
    """Fill a temporary folder next to `final`, then rename it into place (swapping out an
    older `final`), so a folder under its final name is always complete."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        fill(tmp)
        if final.exists():  # force: move the old build aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.rename(final, old / "organism")
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _recipe(name: str) -> Recipe:
    if name not in ORGANISMS:
        raise KeyError(f"unknown organism {name!r}; known organisms: {', '.join(ORGANISMS)}")
    return ORGANISMS[name]


def build_organisms(names: list[str] | None = None, cache_dir: Path | None = None,
                    force: bool = False) -> dict[str, Path]:
    """Build the named organisms (all by default) unless cached; name -> folder."""
    recipes = [_recipe(n) for n in (names or list(ORGANISMS))]
    return {r.name: build_recipe(r, cache_dir, force) for r in recipes}


def bundle(names: list[str] | None = None, dest: Path = BUNDLE_DIR, cache_dir: Path | None = None) -> dict[str, Path]:
    """Copy the current builds of the named organisms (all by default; built first when not
    cached) into `dest`, removing older builds of the same names there."""
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, folder in build_organisms(names, cache_dir).items():
        for stale in dest.glob(f"{name}-*"):
            if stale.name != folder.name:
                shutil.rmtree(stale)
        target = dest / folder.name
        if not target.exists():
            shutil.copytree(folder, target)
        out[name] = target
    return out


def organism_path(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of a registered organism, built first if missing: what tests and the
    quickstart call."""
    return build_recipe(_recipe(name), cache_dir)


def read_record(folder: Path) -> dict:
    """The recipe.json of a built organism."""
    return json.loads((Path(folder) / "recipe.json").read_text())


def resolve_model_path(path: str) -> str:
    """A model path as an engine loads it: an organism's built folder (built or copied from
    the bundle first when missing), anything else (a folder, a hub id) as it is."""
    name = organism_name(path)
    return path if name is None else str(organism_path(name))


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, path in build_organisms(sys.argv[1:] or None).items():
        print(name, path, read_record(path)["properties"])
