"""The floor of `benchmarks/peers.py`: a bare transformers loop, one process, no framework.

    python benchmarks/peers/floor.py MODEL_FOLDER PROMPTS.jsonl OUT.jsonl [--max-tokens 48] [--batch 64]

Reads `{"id", "prompt", ...}` lines, renders each as one user turn through the model's own chat
template (generation prompt on, the template's defaults otherwise), pads on the left, and runs
`model.generate` greedy over fixed batches in file order with torch's default threads (all the
machine's cores). Writes `{"id", "completion"}` per prompt: the new tokens up to the first
end-of-sequence, decoded with the special tokens kept (the driver normalises every tool's text
the same way). Runs in any environment with torch and transformers (the peers' venv).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("prompts")
    parser.add_argument("out")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    eos = {tokenizer.eos_token_id} | set(_ids(model.generation_config.eos_token_id))
    with open(args.prompts) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                           add_generation_prompt=True) for r in rows]
    loaded = time.perf_counter()
    out = []
    for b in range(0, len(rows), args.batch):
        enc = tokenizer(texts[b : b + args.batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            ids = model.generate(**enc, do_sample=False, max_new_tokens=args.max_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
        for row, new in zip(rows[b : b + args.batch], ids[:, enc["input_ids"].shape[1] :].tolist()):
            cut = next((i for i, t in enumerate(new) if t in eos), len(new))
            out.append({"id": row["id"], "completion": tokenizer.decode(new[:cut], skip_special_tokens=False)})
    done = time.perf_counter()
    with open(args.out, "w") as f:
        f.writelines(json.dumps(o) + "\n" for o in out)
    print(f"floor: load {loaded - start:.2f} s, generate {done - loaded:.2f} s, "
          f"{torch.get_num_threads()} torch threads", flush=True)


def _ids(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


if __name__ == "__main__":
    main()
