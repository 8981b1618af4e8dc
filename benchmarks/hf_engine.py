"""HFEngine (concurrent requests, continuous batching) against plain `model.generate` in
fixed batches of the same size: the same prompts, greedy, the same max_tokens, in one run.

    PYTHONPATH=. python benchmarks/hf_engine.py                          # tiny random Llama, CPU
    PYTHONPATH=. python benchmarks/hf_engine.py --random 0.4b --device cuda --dtype bfloat16 \\
        --batch-sizes 1,32,256 --lora 16                                 # the GPU measurement
    PYTHONPATH=. python benchmarks/hf_engine.py --model /path/to/hf-model --device cuda

Each batch size B sends max(4, 2B) prompts (batch 1: four one-at-a-time requests), so both
sides run full batches. `--lora R` repeats the largest two sizes with a random rank-R LoRA
adapter on every linear layer, on every row (the engine activates it, as `generate` on the peft
model does), then the largest size with it on every other row (peft's per-row `adapter_names`
path on both sides).

Tokens/s counts the tokens each side actually generated up to and including the end-of-sequence
token; `generate` also spends steps on rows that ended while the rest of their batch runs on.
Needs only torch, transformers, peft, tokenizers and pydantic (no Ray), so it runs on a bare
GPU machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engines.hf.engine import HFEngine
from actors.engines.protocol import Request, Sampling

# Random Llamas: (hidden, layers, heads, kv heads, intermediate, vocab). "0.4b" is a
# Qwen-0.5B-like shape (~0.41B parameters with tied embeddings) with a 32k vocabulary, so the
# output head costs what it costs in a real model; the trained tokenizer knows fewer ids, and
# decoding drops the rest, which changes no timing.
SHAPES = {
    "tiny": (128, 4, 4, 2, 256, None),
    "small": (256, 4, 4, 2, 1024, 4096),
    "0.4b": (1024, 24, 16, 8, 4096, 32768),
}


def random_llama(path: Path, shape: str, device: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from jobs.organisms.tokenizer import train_tokenizer

    hidden, layers, heads, kv_heads, intermediate, vocab = SHAPES[shape]
    corpus = [f"Question {i}: what is {i} plus {i * 3}? Step 1: add them. Answer: {i * 4}" for i in range(300)]
    tok = train_tokenizer(corpus, vocab_size=384)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab or len(tok), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=None, tie_word_embeddings=True,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if shape == "tiny":  # sharpen the random logits so outputs vary in length like a real model's
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.mul_(10)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    print(f"random Llama '{shape}': {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    del model
    return path


def random_lora(model_path: str, out: Path, rank: int) -> Path:
    """A rank-`rank` LoRA on every linear layer with random (nonzero) A and B, so it changes outputs."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(model_path)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(1)
    get_peft_model(base, config).save_pretrained(out)
    return out


def prompts(count: int, max_tokens: int, mixed: bool = False, adapter: str | None = None,
            half: bool = False) -> list[Request]:
    """Chat prompts of varied length. `mixed` gives prompt i a budget of max_tokens / 8 to
    max_tokens, standing in for a trained model's varied answer lengths (random weights
    rarely emit end-of-sequence). `half` puts the adapter on every other prompt only."""
    return [
        Request.chat(
            f"Question {i}: what is {i} plus {3 * i}?" + " Explain each step." * (i % 7),
            sampling=Sampling(max_tokens=budget(i, max_tokens, mixed), temperature=0.0),
            adapter=None if half and i % 2 else adapter,
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
                 device: torch.device, mixed: bool = False, adapters: list[str | None] | None = None,
                 ) -> tuple[int, float]:
    """Fixed batches in prompt order; a batch runs until its longest row is done (generate
    has no per-row budget), and each row counts only the tokens within its own budget.
    `adapters` (a peft model only) picks each row's adapter through peft's `adapter_names`."""
    eos_ids = {tokenizer.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = 0
    _sync(device)
    start = time.perf_counter()
    for b in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[b : b + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        per_row = {} if adapters is None else {"adapter_names": [a or "__base__" for a in adapters[b : b + batch_size]]}
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_tokens,
                                 pad_token_id=pad, **per_row)
        rows = out[:, width:].tolist()
        total += sum(useful_tokens(row[: budget(b + i, max_tokens, mixed)], eos_ids) for i, row in enumerate(rows))
    _sync(device)
    return total, time.perf_counter() - start


async def run_engine(engine: HFEngine, requests: list[Request]) -> tuple[int, float]:
    _sync(engine.device)
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(r) for r in requests))
    _sync(engine.device)
    return sum(c[0].completion_tokens for c in results), time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _as_list(value) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


async def measure(engine: HFEngine, model, tokenizer, batch: int, max_tokens: int, mixed: bool, repeat: int,
                  adapter: str | None, half: bool = False) -> dict:
    """One case: the same requests through `generate` and the engine, alternating, best of `repeat`."""
    engine.max_batch_size = batch
    requests = prompts(max(4, 2 * batch), max_tokens, mixed, adapter, half)
    prompt_ids = [engine.prompt_token_ids(r) for r in requests]
    adapters = [r.adapter for r in requests] if half else None
    gen_s = eng_s = float("inf")
    for _ in range(repeat):  # alternate the two, so drifting machine load hits both alike
        gen_tokens, seconds = await on_engine_thread(
            engine, run_generate, model, tokenizer, prompt_ids, batch, max_tokens, engine.device, mixed, adapters)
        gen_s = min(gen_s, seconds)
        eng_tokens, seconds = await run_engine(engine, requests)
        eng_s = min(eng_s, seconds)
    case = {
        "batch": batch, "prompts": len(requests), "max_tokens": max_tokens, "mixed": mixed,
        "lora": "half the rows" if half else adapter is not None,
        "generate_tokens": gen_tokens, "generate_s": round(gen_s, 3), "generate_tok_s": round(gen_tokens / gen_s, 1),
        "engine_tokens": eng_tokens, "engine_s": round(eng_s, 3), "engine_tok_s": round(eng_tokens / eng_s, 1),
    }
    case["ratio"] = round(case["engine_tok_s"] / case["generate_tok_s"], 3)
    print(f"batch {batch:4d} {'mixed' if mixed else 'fixed'} {'half-lora' if half else 'lora' if adapter else 'base'}: "
          f"generate {case['generate_tok_s']:9.1f} tok/s ({gen_tokens} tok, {gen_s:.2f} s)  "
          f"engine {case['engine_tok_s']:9.1f} tok/s ({eng_tokens} tok, {eng_s:.2f} s)  ratio {case['ratio']:.2f}",
          flush=True)
    return case


async def on_engine_thread(engine: HFEngine, fn, *args):
    """Run the baseline on the engine's own worker thread: on CPU every thread that calls into
    torch keeps its own OpenMP team, and a second team on the same cores slows both sides."""
    return await asyncio.get_running_loop().run_in_executor(engine._worker, fn, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model folder (default: a random Llama built on the spot)")
    parser.add_argument("--random", default="tiny", choices=sorted(SHAPES), help="shape of the random Llama")
    parser.add_argument("--batch-sizes", default="64", help="comma-separated, e.g. 1,32,256")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--mixed", action="store_true", help="also run the largest batch with budgets max/8..max")
    parser.add_argument("--lora", type=int, default=0, help="rank of a random LoRA to time too (0: none)")
    parser.add_argument("--repeat", type=int, default=1, help="time each side this many times, keep the best")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--json", help="also write the cases here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = sorted(int(b) for b in args.batch_sizes.split(","))

    with tempfile.TemporaryDirectory() as tmp:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        path = args.model or str(random_llama(Path(tmp) / "model", args.random, device))
        cases = asyncio.run(run_cases(args, path, sizes, Path(tmp), device))
    for case in cases:
        if case["generate_tokens"] != case["engine_tokens"]:
            print(f"note: batch {case['batch']}: token counts differ ({case['generate_tokens']} vs "
                  f"{case['engine_tokens']}); greedy rows can end differently in low precision")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": _device_name(torch.device(device)), "cases": cases}, indent=1))


async def run_cases(args: argparse.Namespace, path: str, sizes: list[int], tmp: Path, device: str) -> list[dict]:
    engine = HFEngine(path, dtype=args.dtype, device=device, max_batch_size=max(sizes))
    # generate() gets its own copy: the engine's model is the one it serves from.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=engine.model.dtype, device_map=str(engine.device))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    print(f"device {engine.device} ({_device_name(engine.device)}), dtype {engine.model.dtype}, "
          f"max_tokens {args.max_tokens}, torch {torch.__version__}", flush=True)
    warm = prompts(8, 4)
    warm_ids = [engine.prompt_token_ids(r) for r in warm]
    # Warm both paths (allocator, kernels) before timing.
    await on_engine_thread(engine, run_generate, model, tokenizer, warm_ids, 8, 4, engine.device)
    await run_engine(engine, warm)

    cases = [await measure(engine, model, tokenizer, b, args.max_tokens, False, args.repeat, None) for b in sizes]
    if args.mixed:
        cases.append(await measure(engine, model, tokenizer, sizes[-1], args.max_tokens, True, args.repeat, None))
    if args.lora:
        from peft import PeftModel

        adapter = random_lora(path, tmp / "lora", args.lora)
        engine.add_adapter("bench", str(adapter))
        model = PeftModel.from_pretrained(model, str(adapter), adapter_name="bench").eval()
        await on_engine_thread(engine, run_generate, model, tokenizer, warm_ids, 8, 4, engine.device)
        for b in sizes[-2:]:
            cases.append(await measure(engine, model, tokenizer, b, args.max_tokens, False, args.repeat, "bench"))
        # Base and adapter rows in one batch: peft's per-row path on both sides.
        cases.append(await measure(engine, model, tokenizer, sizes[-1], args.max_tokens, False, args.repeat, "bench",
                                   half=True))
    print(f"engine counters over all runs: {engine.stats}")
    engine.close()
    return cases


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()
