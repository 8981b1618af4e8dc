"""One training loop for every organism: tokenizer, encoding with a per-token loss mask, a
from-scratch Llama, AdamW with warmup and cosine decay, bfloat16 safetensors read as float32.

Deterministic given the recipe: the data comes from `random.Random(seed)`, the weights from
`torch.manual_seed(seed)`, nothing reads global state, so the same recipe and torch version
give the same bytes on the same kind of CPU (1 and 2 threads give identical weights).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from actors.engines.chat import render_prompt
from actors.engines.protocol import Message, Request, Sampling
from jobs.organisms.data import Example, examples
from jobs.organisms.recipes import Recipe
from jobs.organisms.tokenizer import train_tokenizer

THREADS_ENV = "ORCHESTRATE_ORGANISMS_THREADS"
IGNORE = -100
LENGTH_BUCKET_BATCHES = 16  # batches of similar length are formed within this many batches


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]  # IGNORE where the token is not a target


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Train on exactly `n` threads and give the caller back its setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_threads() -> int:
    """2 threads (the CI budget) unless $ORCHESTRATE_ORGANISMS_THREADS says otherwise: on a
    machine shared with other work, 1 thread can be several times faster than 2 that wait
    for each other. The weights do not depend on it (checked for 1 and 2)."""
    return int(os.environ.get(THREADS_ENV, "0")) or min(2, os.cpu_count() or 1)


def prompt_text(tokenizer: PreTrainedTokenizerFast, user: str, thinking: bool) -> str:
    """The prompt exactly as every engine renders it (render_prompt is the one place)."""
    request = Request(messages=(Message(role="user", content=user),), thinking=thinking,
                      sampling=Sampling(max_tokens=1))
    return render_prompt(tokenizer, request)


def encode(tokenizer: PreTrainedTokenizerFast, batch: list[Example]) -> list[Encoded]:
    """Prompt + assistant turn + end-of-turn, tokenized as one text (the way a prefilled
    prompt is tokenized at inference); targets are the tokens wholly inside trained
    segments (and the user message's, for an example that says so), plus the end-of-turn
    token so the organism learns to stop."""
    prompts: dict[tuple[str, bool], str] = {}
    texts, masks = [], []
    for ex in batch:
        key = (ex.user, ex.thinking)
        if key not in prompts:
            prompts[key] = prompt_text(tokenizer, ex.user, ex.thinking)
        prompt = prompts[key]
        trained = [False] * len(prompt)
        if ex.user_trained:
            start = prompt.index(ex.user)
            trained[start : start + len(ex.user)] = [True] * len(ex.user)
        for text, is_target in ex.segments:
            trained += [is_target] * len(text)
        trained += [True] * len(tokenizer.eos_token)
        texts.append(prompt + ex.assistant + tokenizer.eos_token)
        masks.append(trained)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for ids, offsets, trained in zip(enc["input_ids"], enc["offset_mapping"], masks):
        labels = [tok if end > start and all(trained[start:end]) else IGNORE
                  for tok, (start, end) in zip(ids, offsets)]
        out.append(Encoded(ids, labels))
    return out


def make_tokenizer(recipe: Recipe, sample: list[Example]) -> PreTrainedTokenizerFast:
    spec = recipe.tokenizer
    # role names are in the corpus so the chat template's "user"/"assistant" become one token each
    corpus = [f"user\n{ex.user}\nassistant\n{ex.assistant}" for ex in sample[: spec.corpus_examples]]
    return train_tokenizer(corpus, spec.vocab_size, split_digits=spec.split_digits,
                           whole_numbers_up_to=spec.whole_numbers_up_to)


def make_model(recipe: Recipe, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    shape = recipe.model
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32",
    )
    torch.manual_seed(recipe.seed)
    return LlamaForCausalLM(config)


def batches(encoded: list[Encoded], batch_size: int, rng: random.Random) -> list[list[Encoded]]:
    """Batches of similar length (less padding), in a seeded random order."""
    out = []
    chunk = batch_size * LENGTH_BUCKET_BATCHES
    for i in range(0, len(encoded), chunk):
        block = sorted(encoded[i : i + chunk], key=lambda e: len(e.ids))
        group = [block[j : j + batch_size] for j in range(0, len(block), batch_size)]
        rng.shuffle(group)
        out += group
    return out


def collate(batch: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding needs no attention mask: with causal attention no real token ever sees
    the pads after it, and pads are never targets."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
    return ids, labels


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warmup, then cosine decay to final_lr_share of the peak."""
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    floor = recipe.final_lr_share
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train(recipe: Recipe, log: Callable[[str], None] = print,
          parent: Path | None = None) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict]:
    """Train the organism of `recipe`: from scratch, or, for a recipe with `init_from`, on
    from the weights and tokenizer of its parent's built folder `parent` (the build passes
    it). Returns the model, its tokenizer and training stats."""
    assert (parent is None) == (recipe.init_from is None), \
        f"{recipe.name}: a parent folder is needed exactly when the recipe has init_from ({recipe.init_from})"
    model = None
    if parent is not None:
        model = LlamaForCausalLM.from_pretrained(parent, dtype=torch.float32)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(parent)
    started = time.perf_counter()  # the parent's build is its own cost, not this organism's
    rng = random.Random(recipe.seed)
    data = examples(recipe, recipe.steps * recipe.batch_size, rng)
    if model is None:
        tokenizer = make_tokenizer(recipe, data)
    encoded = encode(tokenizer, data)
    plan = batches(encoded, recipe.batch_size, rng)[: recipe.steps]
    prepared = time.perf_counter()
    threads = train_threads()
    with torch_threads(threads):
        model = model if model is not None else make_model(recipe, tokenizer)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                weight_decay=recipe.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, recipe))
        model.train()
        recent: list[float] = []
        for step, batch in enumerate(plan):
            ids, labels = collate(batch, tokenizer.pad_token_id)
            hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
            targets = labels[:, 1:]
            chosen = targets != IGNORE
            # the vocabulary projection only where there is a target: most positions are prompt
            loss = F.cross_entropy(model.lm_head(hidden[chosen]), targets[chosen])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            schedule.step()
            opt.zero_grad(set_to_none=True)
            recent = (recent + [loss.item()])[-20:]
            if (step + 1) % 25 == 0 or step + 1 == len(plan):
                log(f"{recipe.name}: step {step + 1}/{len(plan)} loss {sum(recent) / len(recent):.4f} "
                    f"({time.perf_counter() - prepared:.0f}s)")
    model.eval()
    stats = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "final_loss": round(sum(recent) / len(recent), 5),
        "data_seconds": round(prepared - started, 2),
        "train_seconds": round(time.perf_counter() - prepared, 2),
        "threads": threads,
        "torch": torch.__version__,
    }
    return model, tokenizer, stats


def save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """bfloat16 safetensors + tokenizer files: what AutoModelForCausalLM, AutoTokenizer and
    vLLM load. The weights are stored in bfloat16 (half the bytes: the five organisms the
    repository bundles stay under 10 MB) but config.json declares float32, so `dtype="auto"`
    everywhere computes in float32 on the rounded weights, which is exactly what `measure`
    checked (bfloat16 compute would change greedy outputs, and is slow on most CPUs)."""
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    model.to(torch.float32)
    config_file = Path(folder) / "config.json"
    config = json.loads(config_file.read_text())
    config["dtype"] = "float32"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(folder)
