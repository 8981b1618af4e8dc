"""The token ids that end a generation, from the places a model names them (its tokenizer,
its generation config), each of which may give one id, a list of them, or none."""
from __future__ import annotations


def eos_ids(*named: int | list[int] | None) -> set[int]:
    """Every id any of `named` gives."""
    ids: set[int] = set()
    for value in named:
        if value is not None:
            ids |= {value} if isinstance(value, int) else set(value)
    return ids
