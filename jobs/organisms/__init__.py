"""Tiny model organisms: real transformers checkpoints trained on CPU with known answers.

    from jobs.organisms.build import organism_path
    folder = organism_path("faithful")  # built into the cache on first use, then reused

A sweep names one as `path: "organism:faithful"`. `recipes` holds the registry and what
identifies an organism without building it (its recipe's digest: what planning reads);
`build.resolve_model_path` turns the name into the built folder (what the driver does before
a replica starts).

Modules: `recipes` (what determines an organism, the registry), `example` and `data`
(training examples; the toy worlds they come from are `jobs.toyworld`), `multihop` (the
multi-hop organisms' data and recipes), `tokenizer`, `train` (the loop), `evaluate` (the
known-answer properties), `build` (the cache and the bundle). Only `tokenizer`, `train`,
`evaluate` and what `build` calls to train import torch or transformers.
"""
