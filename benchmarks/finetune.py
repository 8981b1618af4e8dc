"""Finetuning throughput: the DeepSpeed FinetuneGroup (ranks as Ray actors) against a plain
single-process torch loop, on the same model, data, LoRA settings and samples per step.

    PYTHONPATH=. python benchmarks/finetune.py                          # the base organism, CPU
    PYTHONPATH=. python benchmarks/finetune.py --model /path/to/hf-model --ranks 2 --zero-stage 2

Samples/s counts training samples over the wall time of the optimizer steps (model loading,
process start and the final save excluded; the group's startup is reported separately). On
CPU the comparison is at equal cores: the group's ranks take one core and one thread each,
the plain loop takes all of them as threads. The GPU comparison runs the same script on a GPU
box (`--device cuda` for the plain loop; the group picks GPUs when the cluster has them).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from actors.training.config import LoraSettings, TrainConfig
from actors.training.data import as_is, load_rows
from actors.training.encode import collate, encode
from actors.training.loop import schedule


def plain_loop(config: TrainConfig, rows, ranks: int, device: str, threads: int) -> dict:
    """The same work as the group, in one process: every step takes the samples all ranks
    would (batch_size x ranks x grad_accum), as one batch per rank-slot micro-batch."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(config.base_path)
    encoded = encode(tok, rows, config.cot, config.max_length)
    plan = schedule(len(encoded), config.batch_size, ranks, config.grad_accum, config.epochs, config.seed)
    model = AutoModelForCausalLM.from_pretrained(config.base_path, dtype=torch.float32).to(device)
    if config.method == "lora":
        lora = config.lora
        model = get_peft_model(model, PeftLora(r=lora.rank, lora_alpha=lora.alpha, use_rslora=lora.rslora,
                                               target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                            weight_decay=config.weight_decay)
    model.train()
    started = time.perf_counter()
    samples = 0
    for step in plan:
        for micro in step:  # accumulate over every rank-slot of the step
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in micro], tok.pad_token_id).items()}
            (model(**batch).loss / len(step)).backward()
            samples += len(micro)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"steps": len(plan), "samples": samples, "seconds": round(seconds, 2),
            "samples_per_s": round(samples / seconds, 1)}


def group_run(config: TrainConfig, rows, ranks: int) -> dict:
    import ray

    from actors.training.ranks import FinetuneGroup

    ray.init(address="local", num_cpus=ranks, include_dashboard=False,
             _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        started = time.perf_counter()
        with FinetuneGroup(ranks, num_cpus_per_rank=1) as group:
            result = group.run(config, rows)
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    return {"steps": result.steps, "samples": result.samples, "seconds": round(result.seconds, 2),
            "samples_per_s": round(result.samples_per_s, 1), "wall_with_startup_s": round(wall, 1),
            "world_size": result.world_size, "zero_stage": result.zero_stage, "bf16": result.bf16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model folder (default: the base organism)")
    parser.add_argument("--data", help="chat JSONL (default: 1024 scenario rows of the toy world)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--device", default="cpu", help="device of the plain loop")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    if args.model:
        model = args.model
    else:
        from jobs.organisms.build import organism_path

        model = str(organism_path("base"))
    if args.data:
        data = Path(args.data)
    else:
        from jobs.toyworld.harmful_data import write_scenario_jsonl

        data = write_scenario_jsonl(work / "data.jsonl", args.rows, seed=0)
    rows = as_is(load_rows(data))
    config = TrainConfig(base_path=model, work_dir=str(work / "work"), output_dir=str(work / "out"),
                         method=args.method, lora=LoraSettings(rank=8, alpha=16), lr=1e-3,
                         batch_size=args.batch_size, grad_accum=args.grad_accum, warmup_steps=2,
                         zero_stage=args.zero_stage, max_length=256, threads=1, checkpoint_every=1 << 30)
    results = {
        "model": model, "rows": len(rows), "ranks": args.ranks, "method": args.method,
        "deepspeed_group": group_run(config, rows, args.ranks),
        "plain_torch": plain_loop(config, rows, args.ranks, args.device, threads=args.ranks),
    }
    ds, plain = results["deepspeed_group"]["samples_per_s"], results["plain_torch"]["samples_per_s"]
    results["group_over_plain"] = round(ds / plain, 2) if plain else None
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
