"""Tiny model organisms: real transformers checkpoints trained on CPU with known answers."""
