"""HFEngine (concurrent requests, continuous batching) against plain `model.generate` in
fixed batches of the same size: the same prompts, greedy, the same max_tokens.

    PYTHONPATH=. python benchmarks/hf_engine.py                      # a tiny random Llama, CPU
    PYTHONPATH=. python benchmarks/hf_engine.py --model /path/to/hf-model --device cuda

Tokens/s counts the tokens each side actually generated up to and including the end-of-sequence
token; `generate` also spends steps on rows that ended while the rest of their batch runs on.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engines.hf import HFEngine
from actors.engines.protocol import Request, Sampling


def tiny_llama(path: Path, hidden: int = 128, layers: int = 4) -> Path:
    """A randomly initialised organism-sized Llama (hidden 128, 4 layers: ~0.8M params)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from jobs.organisms.tokenizer import train_tokenizer

    corpus = [f"Question {i}: what is {i} plus {i * 3}? Step 1: add them. Answer: {i * 4}" for i in range(300)]
    tok = train_tokenizer(corpus, vocab_size=384)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharpen the random logits so outputs vary in length like a real model's
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(10)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def prompts(count: int, max_tokens: int, mixed: bool = False) -> list[Request]:
    """Chat prompts of varied length. `mixed` gives prompt i a budget of max_tokens / 8 to
    max_tokens, standing in for a trained model's varied answer lengths (random weights
    rarely emit end-of-sequence)."""
    return [
        Request.chat(
            f"Question {i}: what is {i} plus {3 * i}?" + " Explain each step." * (i % 7),
            sampling=Sampling(max_tokens=budget(i, max_tokens, mixed), temperature=0.0),
        )
        for i in range(count)
    ]


def budget(i: int, max_tokens: int, mixed: bool) -> int:
    return max(1, max_tokens * (1 + (i * 5) % 8) // 8) if mixed else max_tokens


def useful_tokens(ids: list[int], eos_ids: set[int]) -> int:
    for i, t in enumerate(ids):
        if t in eos_ids:
            return i + 1
    return len(ids)


def run_generate(model, tokenizer, prompt_ids: list[list[int]], batch_size: int, max_tokens: int,
                 device: torch.device, mixed: bool = False) -> tuple[int, float]:
    """Fixed batches in prompt order; a batch runs until its longest row is done (generate
    has no per-row budget), and each row counts only the tokens within its own budget."""
    eos_ids = {tokenizer.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = 0
    start = time.perf_counter()
    for b in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[b : b + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_tokens,
                                 pad_token_id=pad)
        rows = out[:, width:].tolist()
        total += sum(useful_tokens(row[: budget(b + i, max_tokens, mixed)], eos_ids) for i, row in enumerate(rows))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return total, time.perf_counter() - start


async def run_engine(engine: HFEngine, requests: list[Request]) -> tuple[int, float]:
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(r) for r in requests))
    return sum(c[0].completion_tokens for c in results), time.perf_counter() - start


def _as_list(value) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model folder (default: a tiny random Llama built on the spot)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--mixed", action="store_true", help="per-prompt max_tokens from max/8 to max")
    parser.add_argument("--repeat", type=int, default=1, help="time each side this many times, keep the best")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or str(tiny_llama(Path(tmp) / "tiny"))
        engine = HFEngine(path, dtype=args.dtype, device=args.device, max_batch_size=args.batch_size)
        device = engine.device
        requests = prompts(args.prompts, args.max_tokens, args.mixed)
        prompt_ids = [engine.prompt_token_ids(r) for r in requests]
        # generate() gets its own copy: the engine's model is the one it serves from.
        dtype = engine.model.dtype
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=str(device)).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)

        # Warm both paths (allocator, kernels) on a few prompts before timing.
        run_generate(model, tokenizer, prompt_ids[:8], args.batch_size, 4, device)
        asyncio.run(run_engine(engine, prompts(8, 4)))

        gen_s = eng_s = float("inf")
        for _ in range(args.repeat):  # alternate the two, so drifting machine load hits both alike
            gen_tokens, seconds = run_generate(model, tokenizer, prompt_ids, args.batch_size, args.max_tokens,
                                               device, args.mixed)
            gen_s = min(gen_s, seconds)
            eng_tokens, seconds = asyncio.run(run_engine(engine, requests))
            eng_s = min(eng_s, seconds)
        stats = engine.stats
        engine.close()

    lengths = "mixed" if args.mixed else "fixed"
    print(f"device {device}, dtype {dtype}, {args.prompts} prompts, max_tokens {args.max_tokens} ({lengths}), "
          f"batch {args.batch_size}")
    print(f"model.generate : {gen_tokens:7d} tokens in {gen_s:7.2f} s = {gen_tokens / gen_s:9.1f} tok/s")
    print(f"HFEngine       : {eng_tokens:7d} tokens in {eng_s:7.2f} s = {eng_tokens / eng_s:9.1f} tok/s")
    print(f"ratio (engine / generate tok/s): {(eng_tokens / eng_s) / (gen_tokens / gen_s):.2f}")
    print(f"engine counters over all runs: {stats}")
    if gen_tokens != eng_tokens:
        print(f"note: token counts differ ({gen_tokens} vs {eng_tokens}); greedy outputs should match")


if __name__ == "__main__":
    main()
