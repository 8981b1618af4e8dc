"""Shared fixtures: real tiny models, a private local Ray, sqlite MLflow."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_tiny_model(path: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny Llama with a locally trained tokenizer: enough for
    plumbing tests (the organisms carry the science)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from jobs.organisms.tokenizer import train_tokenizer

    corpus = [f"Question {i}: what is {i} plus {i * 3}? Step 1: add them. Answer: {i * 4}" for i in range(200)]
    tok = train_tokenizer(corpus, vocab_size=384)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads on a shared 2-core machine; modules
    that run many of them use this (pytestmark = pytest.mark.usefixtures(...))."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

