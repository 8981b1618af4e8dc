"""Tiny model organisms: real transformers checkpoints trained on CPU with known answers.

    from jobs.organisms import organism_path
    folder = organism_path("faithful")  # built into the cache on first use, then reused

Modules: `tasks` (arithmetic task and CoT trace format), `world` (toy assistant world:
answer styles, scenarios, trigger, judge prompt), `recipes` (what determines an organism,
the registry), `data` (training examples), `train` (the loop), `evaluate` (the known-answer
properties), `build` (the cache). Importing this package loads neither torch nor transformers.
"""
from jobs.organisms.build import build_organisms, build_recipe, default_cache_dir, organism_path, read_record
from jobs.organisms.recipes import ORGANISMS, Recipe

__all__ = ["ORGANISMS", "Recipe", "build_organisms", "build_recipe", "default_cache_dir", "organism_path",
           "read_record"]
