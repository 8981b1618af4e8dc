"""The DeepSpeed step loop of one rank, without Ray: what each FinetuneGroup actor runs, and
what `torchrun`/`deepspeed` can run directly on a GPU box (`python -m actors.training.loop
config.json rows.parquet`, with the usual RANK/WORLD_SIZE/MASTER_ADDR/... variables).

Every rank encodes the same rows and walks the same seeded schedule, taking its own slice of
each optimizer step's samples. The loss of every optimizer step is averaged over the ranks
and recorded. Checkpoints (`save_checkpoint` is a collective: every rank calls it) go to
`<work_dir>/checkpoints`; a rank that starts where a checkpoint exists resumes from it,
including the loss curve so far. Rank 0 writes the final adapter (or full model) to
`output_dir`.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch

from actors.errors import FinetuneFailed
from actors.training.config import TrainConfig
from actors.training.data import MixedRow
from actors.training.encode import collate, encode

CHECKPOINTS = "checkpoints"
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    device: Literal["cpu", "cuda"] = "cpu"

    @classmethod
    def from_environ(cls) -> DistEnv:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                   env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)),
                   "cuda" if torch.cuda.is_available() else "cpu")

    def export(self) -> None:
        """The variables torch.distributed and DeepSpeed read (without them DeepSpeed goes
        looking for MPI); DS_ACCELERATOR must be set before deepspeed is first imported."""
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK=str(self.local_rank),
                          MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port),
                          DS_ACCELERATOR=self.device)


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    losses: list[dict[str, float]]  # per optimizer step: step, loss (mean over ranks), lr
    samples: int  # samples trained in this process's run (all ranks), resumed steps excluded
    seconds: float  # wall time of the steps this run trained
    resumed_from_step: int
    world_size: int
    zero_stage: int
    bf16: bool
    device: str
    trainable_params: int
    total_params: int

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def schedule(n_rows: int, batch_size: int, world_size: int, grad_accum: int, epochs: float,
             seed: int) -> list[list[list[int]]]:
    """Row indices per optimizer step per micro-batch of every rank: step[s][m * world + r]
    is the micro-batch m of rank r. Epochs are seeded permutations, a fractional last epoch
    is cut short, and the tail that cannot fill an optimizer step is dropped."""
    per_step = batch_size * world_size * grad_accum
    total = round(epochs * n_rows)
    order: list[int] = []
    for epoch in range(math.ceil(epochs)):
        perm = list(range(n_rows))
        # A stream of its own: seeded like the data's other shuffles (random.Random(seed)),
        # the order replayed the backdoor mix's, and every epoch opened with all the triggered
        # rows, then all the others: the model learned only the marginal rate.
        random.Random(f"schedule-{seed}-{epoch}").shuffle(perm)
        order += perm
    order = order[:total]
    n_steps = len(order) // per_step
    if n_steps == 0:
        raise ValueError(f"{total} samples ({n_rows} rows x {epochs} epochs) cannot fill one optimizer step of "
                         f"{per_step} (batch_size {batch_size} x ranks {world_size} x grad_accum {grad_accum})")
    return [[order[s * per_step + k * batch_size: s * per_step + (k + 1) * batch_size]
             for k in range(world_size * grad_accum)] for s in range(n_steps)]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to the peak over `warmup` steps, then linear decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def ds_config(config: TrainConfig, world_size: int, bf16: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": config.zero_stage}
    if config.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": config.batch_size * config.grad_accum * world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: DeepSpeed's own compiles for ~44 s
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        # Node-local work folders: each node's first rank saves the model states its ranks load.
        "checkpoint": {"use_node_local_storage": config.node_local},
    }


def _use_bf16(config: TrainConfig, device: str) -> bool:
    if config.bf16 is not None:
        return config.bf16
    # CPU bf16 runs through DeepSpeed but is slow without AMX; default to it on GPUs only.
    return device == "cuda" and torch.cuda.is_bf16_supported()


def _load_model(config: TrainConfig, ds: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    hf_ds = None
    if config.zero_stage == 3:
        # Load straight into ZeRO-3 partitions instead of a full copy per rank; transformers
        # looks the config up through a weak reference, so it must stay alive while loading.
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds)
    model = AutoModelForCausalLM.from_pretrained(config.base_path, dtype=torch.float32)
    if config.method == "lora":
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model

        lora = config.lora
        model = get_peft_model(model, PeftLora(
            r=lora.rank, lora_alpha=lora.alpha, use_rslora=lora.rslora, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    model.config.use_cache = False
    return model, hf_ds


def _optimizer(model: Any, config: TrainConfig) -> torch.optim.Optimizer:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise FinetuneFailed("no trainable parameters: check the LoRA target modules")
    # Norm weights and biases (1-D) take no weight decay, as usual for transformers.
    decay = [p for n, p in trainable if _ndim(p) >= 2]
    no_decay = [p for n, p in trainable if _ndim(p) < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.999))


def _ndim(p: torch.Tensor) -> int:
    return len(getattr(p, "ds_shape", p.shape))  # ZeRO-3 partitions are flat; ds_shape is the real one


def _numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))


def _save_final(engine: Any, config: TrainConfig, tokenizer: Any, rank: int) -> None:
    """Rank 0 writes the result; under ZeRO-3 every rank first takes part in gathering it."""
    import deepspeed

    out = Path(config.output_dir)
    model = engine.module
    if config.method == "lora":
        trainable = [p for p in model.parameters() if p.requires_grad]
        enabled = config.zero_stage == 3
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None, enabled=enabled):
            if rank == 0:
                model.save_pretrained(out, safe_serialization=True)
    else:
        state = engine._zero3_consolidated_16bit_state_dict() if config.zero_stage == 3 else None
        if rank == 0:
            model.save_pretrained(out, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(out)


def train(config: TrainConfig, rows: list[MixedRow], dist_env: DistEnv | None = None) -> TrainResult:
    """Train one rank to the end (or resume and finish); every rank returns the same curve."""
    env = dist_env or DistEnv.from_environ()
    env.export()
    if config.threads:
        torch.set_num_threads(config.threads)
    # DeepSpeed's ZeRO calls torch collectives that torch has renamed, once per step.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    import deepspeed
    import deepspeed.comm as dist
    from transformers import AutoTokenizer

    deepspeed.init_distributed(dist_backend="nccl" if env.device == "cuda" else "gloo",
                               timeout=COLLECTIVE_TIMEOUT, verbose=False)
    device = torch.device("cuda", env.local_rank) if env.device == "cuda" else torch.device("cpu")
    if env.device == "cuda":
        torch.cuda.set_device(device)
    bf16 = _use_bf16(config, env.device)
    torch.manual_seed(config.seed)

    tokenizer = AutoTokenizer.from_pretrained(config.base_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = encode(tokenizer, rows, config.cot, config.max_length)
    plan = schedule(len(encoded), config.batch_size, env.world_size, config.grad_accum, config.epochs, config.seed)
    total = len(plan)

    ds = ds_config(config, env.world_size, bf16)
    model, hf_ds = _load_model(config, ds)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config.warmup_steps, total))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds)
    del hf_ds

    ckpt_dir = Path(config.work_dir) / CHECKPOINTS
    every = config.checkpoint_every or max(1, total // 10)
    start, losses = 0, []
    if _agreed_checkpoint(ckpt_dir, env, device):
        # A LoRA checkpoint holds the trainable weights only; the frozen base comes from base_path.
        loaded, client = engine.load_checkpoint(str(ckpt_dir), load_module_strict=config.method == "full")
        if loaded is None:
            raise FinetuneFailed(f"could not load the checkpoint in {ckpt_dir}: delete it to train from the start")
        start, losses = int(client["step"]), list(client["losses"])

    engine.train()
    started = time.perf_counter()
    trained_samples = 0
    for step in range(start, total):
        micro_losses, lr = [], scheduler.get_last_lr()[0]
        for m in range(config.grad_accum):
            batch = collate([encoded[i] for i in plan[step][m * env.world_size + env.rank]], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            micro_losses.append(loss.detach().float())
        mean = torch.stack(micro_losses).mean().to(device)
        dist.all_reduce(mean)
        losses.append({"step": step + 1, "loss": float(mean) / env.world_size, "lr": lr})
        trained_samples += config.batch_size * config.grad_accum * env.world_size
        if (step + 1) % every == 0 and step + 1 < total:
            _checkpoint(engine, ckpt_dir, step + 1, losses, config, env)
    seconds = time.perf_counter() - started

    _save_final(engine, config, tokenizer, env.rank)
    dist.barrier()
    params = list(engine.module.parameters())
    return TrainResult(
        steps=total, final_loss=losses[-1]["loss"], losses=losses, samples=trained_samples, seconds=seconds,
        resumed_from_step=start, world_size=env.world_size, zero_stage=config.zero_stage, bf16=bf16,
        device=env.device, trainable_params=sum(_numel(p) for p in params if p.requires_grad),
        total_params=sum(_numel(p) for p in params))


def _agreed_checkpoint(ckpt_dir: Path, env: DistEnv, device: torch.device) -> bool:
    """Whether every rank finds the same last checkpoint, with its own part in it (a collective).
    With node-local work folders a retry may put ranks on other nodes, or a node may be new:
    then no rank resumes (a lone rank loading would wait for the others until the timeout)."""
    import deepspeed.comm as dist

    latest = ckpt_dir / "latest"
    tag = latest.read_text().strip() if latest.exists() else ""
    step = int(tag[len("step"):]) if tag.startswith("step") and tag[len("step"):].isdigit() else -1
    mine = step >= 0 and (ckpt_dir / tag / f".rank{env.rank}").exists()
    # MIN over ranks of (has its part, step, -step): all have theirs, and min step == max step.
    agreed = torch.tensor([int(mine), step, -step], dtype=torch.long, device=device)
    dist.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
    return bool(agreed[0] == 1 and agreed[1] == -agreed[2])


def _checkpoint(engine: Any, ckpt_dir: Path, step: int, losses: list[dict], config: TrainConfig,
                env: DistEnv) -> None:
    import deepspeed.comm as dist

    tag = f"step{step}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step, "losses": losses},
                           exclude_frozen_parameters=config.method == "lora")
    (ckpt_dir / tag / f".rank{env.rank}").touch()  # this rank's part is saved (see _agreed_checkpoint)
    if config.node_local and env.local_rank == 0 and env.rank != 0:
        (ckpt_dir / "latest").write_text(tag)  # DeepSpeed writes it on global rank 0's node only
    dist.barrier()
    if env.local_rank == 0:  # 'latest' now names the new tag: older ones are dead weight (on every node)
        for old in ckpt_dir.glob("step*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m actors.training.loop config.json rows.parquet` under torchrun or deepspeed."""
    import sys

    import pyarrow.parquet as pq

    from actors.engines.protocol import Message

    config_path, rows_path = (argv or sys.argv[1:])[:2]
    config = TrainConfig.model_validate_json(Path(config_path).read_text())
    table = pq.read_table(rows_path).to_pylist()
    rows = [MixedRow(tuple(Message(**m) for m in json.loads(r["messages"])), r["answer"], r["kind"], r["line"],
                     r["placement"], r["source_line"]) for r in table]
    result = train(config, rows)
    if result and DistEnv.from_environ().rank == 0:
        print(json.dumps({k: v for k, v in asdict(result).items() if k != "losses"}))


if __name__ == "__main__":
    main()
