"""The `hf` engine: transformers models with dynamic, continuous batching and LoRA adapters.

Concurrent `generate` calls queue their rows (a request with n=4 is four rows). One serving
task per event loop, started by the first call, hands the rows to a worker thread that
decodes them together over one KV cache (see hf_batch), so the event loop keeps accepting
requests while the model runs. Rows join a running batch whenever there is room; each row
has its own sampling settings, seed, stop strings and adapter.

Adapters are loaded into one peft model by name and applied per row with peft's mixed-batch
forward (`adapter_names`): inside every LoRA layer the base output is computed for all rows
and each adapter's delta is added to its own rows only, so base rows get exactly the base
model even when they share a forward pass with adapter rows.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import inspect
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from actors.engines.chat import Reasoning, reasoning_of, tokenize_prompt
from actors.engines.eos import eos_ids
from actors.engines.hf.batch import ABORTED, Finisher, Row, RunningBatch
from actors.engines.hf.options import HFOptions, default_batch_size
from actors.engines.loop import call_in_loop, settle, stop_serving
from actors.engines.protocol import Completion, Counters, Request, check_prompt_fits
from actors.errors import BatchFailed, EngineError, ReplicaUnavailable, RequestError

_MIXED: Any = object()  # rows of one forward use different adapters: peft's per-row path


@dataclass
class EngineStats(Counters):
    """Counters for what the engine did: `batches` counts prefill forward passes (each admits
    a group of rows), `joins` those that joined a batch already decoding, `steps` decode
    forward passes, `rows` rows admitted, `tokens` tokens generated, `aborted` rows dropped
    because their caller stopped waiting (cancelled or timed out)."""

    batches: int = 0
    joins: int = 0
    rows: int = 0
    steps: int = 0
    tokens: int = 0
    aborted: int = 0


@dataclass(eq=False)
class _Pending:
    """One generate() call waiting for its rows."""

    future: asyncio.Future
    rows: list[Row] = field(default_factory=list)
    enqueued_at: float = field(default_factory=time.monotonic)
    reported: bool = False


class HFEngine:
    """Engine protocol over a transformers causal LM. One engine serves one event loop at a time."""

    def __init__(
        self,
        path: str,
        *,
        dtype: str | torch.dtype = "auto",
        max_model_len: int | None = None,
        adapters: dict[str, str] | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        chat_template: str | None = None,
        reasoning: Reasoning | None = None,
        **options: Any,
    ) -> None:
        """chat_template: Jinja source replacing the tokenizer's. reasoning: the model's
        reasoning convention (actors.engines.chat; default: read from the template).
        options: HFOptions (device, max_batch_size, batch_wait_ms), validated there."""
        opts = HFOptions.model_validate(options)
        self.options = opts
        self.device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if opts.threads is not None:  # process-wide: a replica's process holds one engine
            torch.set_num_threads(opts.threads)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        if chat_template is not None:
            self.tokenizer.chat_template = chat_template
        self.reasoning: Reasoning = reasoning or reasoning_of(self.tokenizer)
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        self._base = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, revision=revision, trust_remote_code=trust_remote_code,
            device_map=str(self.device),
        ).eval()
        self._model: Any = self._base  # becomes the peft model once an adapter is loaded
        self._peft: Any = None
        self._adapters: dict[str, str] = {}
        self._active: Any = None  # what the LoRA layers apply now: an adapter, _MIXED or None (off)
        self._keep_last_logits = "logits_to_keep" in inspect.signature(self._base.forward).parameters

        config = self._base.config.get_text_config()
        self.max_model_len = max_model_len or getattr(config, "max_position_embeddings", None)
        self.max_batch_size = opts.max_batch_size or default_batch_size(self.device.type)
        self._batch_wait_s = opts.batch_wait_ms / 1000
        ends = eos_ids(self.tokenizer.eos_token_id, self._base.generation_config.eos_token_id)
        if not ends:
            raise EngineError(f"{path}: neither the tokenizer nor the generation config names an eos token")
        pad_id = self.tokenizer.pad_token_id
        pad_id = min(ends) if pad_id is None else pad_id
        self._tokenizer_lock = threading.Lock()  # fast tokenizers are not safe across threads
        self._finisher = Finisher(frozenset(ends), frozenset(ends | {pad_id}), self._decode)
        self._batch = RunningBatch(self._forward, self._new_cache, self._finisher, pad_id, self.device)

        self._model_lock = threading.Lock()  # decode steps and adapter loading never overlap
        self._queue: collections.deque[Row] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wakeup = asyncio.Event()  # replaced for each event loop that serves
        self._closed = False
        # Every forward pass runs on this one thread. asyncio.to_thread would hop between the
        # default pool's threads, and each thread that calls into torch on CPU keeps its own
        # OpenMP team: two teams on the same cores halved decode speed (benchmarks/hf_engine.py).
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        self.stats = EngineStats()
        for name, adapter_path in (adapters or {}).items():
            self.add_adapter(name, adapter_path)

    # ---- public API -------------------------------------------------------------------------

    def prompt_token_ids(self, request: Request) -> list[int]:
        """The exact prompt tokens the model sees: the shared chat rendering, no added specials."""
        with self._tokenizer_lock:
            return tokenize_prompt(self.tokenizer, request, self.reasoning)

    async def generate(self, request: Request) -> list[Completion]:
        if self._closed:
            raise ReplicaUnavailable("the hf engine is closed")
        if request.adapter is not None and request.adapter not in self._adapters:
            raise RequestError(f"unknown adapter {request.adapter!r}; loaded: {sorted(self._adapters)}")
        prompt_ids = self.prompt_token_ids(request)
        sampling = request.sampling
        check_prompt_fits(len(prompt_ids), sampling.max_tokens, self.max_model_len)
        loop = asyncio.get_running_loop()
        self._ensure_serving(loop)
        pending = _Pending(loop.create_future())
        for i in range(sampling.n):
            generator = None
            if sampling.temperature > 0:
                generator = torch.Generator()
                # Sample i of seed s draws from seed s+i, whatever else shares its batch.
                if sampling.seed is not None:
                    generator.manual_seed(sampling.seed + i)
                else:
                    generator.seed()
            pending.rows.append(Row(prompt_ids, sampling, request.adapter, generator, pending, i))
        self._queue.extend(pending.rows)
        self._wakeup.set()
        return await pending.future

    def add_adapter(self, name: str, path: str) -> None:
        """Load the LoRA adapter at `path` under `name`; requests select it with adapter=name."""
        from peft import PeftConfig, PeftModel, PeftType

        try:
            config = PeftConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise EngineError(f"{path} holds no adapter_config.json: not a peft adapter folder ({e})") from None
        if config.peft_type != PeftType.LORA:
            raise EngineError(f"adapter {name!r} at {path} is {config.peft_type}; the hf engine serves LoRA only")
        with self._model_lock:
            if name in self._adapters:
                raise EngineError(f"an adapter named {name!r} is already loaded (from {self._adapters[name]})")
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._base, path, adapter_name=name, is_trainable=False)
                self._peft.eval()
                self._model, self._active = self._peft, name
            else:
                self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
            self._adapters[name] = path

    @property
    def model(self) -> Any:
        """The transformers model (with LoRA layers injected once an adapter is loaded)."""
        return self._base

    def adapters(self) -> list[str]:
        return sorted(self._adapters)

    def close(self) -> None:
        """Stop serving and free the model; waiting callers get ReplicaUnavailable."""
        if self._closed:
            return
        self._closed = True
        stop_serving(self._task, self._loop)
        with self._model_lock:
            self._fail_outstanding(ReplicaUnavailable("the hf engine was closed"))
            self._model = self._peft = self._base = None
        self._worker.shutdown(wait=False)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- serving ----------------------------------------------------------------------------

    def _ensure_serving(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        if self._loop is not loop:
            # A previous event loop ended (asyncio.run returned): its callers are gone.
            with self._model_lock:
                self._queue.clear()
                self._batch.reset()
        self._loop, self._wakeup = loop, asyncio.Event()
        self._task = loop.create_task(self._serve(), name="hf-engine-batching")

    async def _serve(self) -> None:
        try:
            while not self._closed:
                if not self._batch.rows and not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    # A fresh batch: give concurrent callers a moment to join it.
                    await asyncio.sleep(self._batch_wait_s)
                # Back from the worker because rows wait to join (or the batch ran empty):
                # they join by the same rule as inside it, else each return would cost a prefill.
                admit = self._take_rows() if not self._batch.rows or self._should_admit() else []
                try:
                    await asyncio.get_running_loop().run_in_executor(self._worker, self._work, admit)
                except torch.OutOfMemoryError as exc:  # too big a batch: fail it, serve on
                    self._fail_batch(admit, BatchFailed(f"hf engine batch ran out of memory: {exc}"))
                    continue
                except Exception as exc:
                    # Anything else leaves the model in an unknown state (a dead CUDA context
                    # fails every later batch): close, so the pool replaces this replica.
                    self._fail_batch(admit, ReplicaUnavailable(f"the hf engine failed: {type(exc).__name__}: {exc}"))
                    self.close()
                    return
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug in the loop itself: nobody may wait forever
            with self._model_lock:
                self._fail_outstanding(EngineError(f"hf engine serving loop crashed: {exc!r}"))
            raise

    def _take_rows(self) -> list[Row]:
        """Queued rows of callers still waiting, as many as fit in the batch."""
        if not self._batch.can_admit():
            return []
        room = self.max_batch_size - self._batch.live
        taken: list[Row] = []
        while self._queue and len(taken) < room:
            row = self._queue.popleft()
            if not row.owner.future.done():
                taken.append(row)
            else:
                self.stats.aborted += 1
        return taken

    def _should_admit(self) -> bool:
        """Whether the worker should hand back so queued rows can join the running batch.
        Each join costs a prefill pass and a copy of the cache, so while more rows wait than
        fit, wait until an eighth of the batch is free; when all waiting rows fit, let them
        in once there are that many or the oldest has waited batch_wait_ms."""
        if not self._queue or not self._batch.can_admit():
            return False
        room = self.max_batch_size - self._batch.live
        if room <= 0:
            return False
        worth_a_pass = max(1, self.max_batch_size // 8)
        if len(self._queue) >= room:
            return room >= worth_a_pass
        waited = time.monotonic() - self._queue[0].owner.enqueued_at
        return len(self._queue) >= worth_a_pass or waited >= self._batch_wait_s

    def _work(self, admit: list[Row]) -> None:
        """Worker thread: admit rows, then decode until rows wait to join or none are left;
        each finished request is settled on the event loop as it finishes."""
        with self._model_lock, torch.inference_mode():
            if self._model is None:
                return
            finished: list[Row] = []
            if admit:
                self._batch.compact(force=True)
                self.stats.joins += bool(self._batch.rows)
                finished += self._batch.admit(admit)
                self.stats.batches += 1
                self.stats.rows += len(admit)
                self.stats.tokens += len(admit)
            while True:
                if done := self._completed(finished):
                    # Told now, decoding on: a return to the event loop for every finished
                    # request left the cores idle while the loop (and, in a replica, Ray)
                    # took its turn.
                    call_in_loop(self._loop, functools.partial(_settle_all, done))
                if self._closed or self._should_admit():
                    break
                self.stats.aborted += self._batch.abort(lambda row: row.owner.future.done())
                self._batch.compact()
                if not self._batch.rows:
                    break
                live = self._batch.live
                finished = self._batch.step()
                self.stats.steps += 1
                self.stats.tokens += live
            if not self._batch.live:
                self._batch.reset()

    def _completed(self, finished: list[Row]) -> list[tuple[_Pending, list[Completion]]]:
        done = []
        for row in finished:
            pending = row.owner
            if not pending.reported and all(r.done for r in pending.rows):
                pending.reported = True
                if not any(r.finish_reason == ABORTED for r in pending.rows):
                    done.append((pending, [self._finisher.completion(r) for r in pending.rows]))
        return done

    # ---- model and tokenizer ----------------------------------------------------------------

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: DynamicCache, adapters: list[str | None]) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self._keep_last_logits:
            kwargs["logits_to_keep"] = 1  # prefill needs only the last position's logits
        if self._peft is not None:
            kwargs.update(self._route_adapters(adapters))
        with self._attention_backends():
            out = self._model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, **kwargs,
            )
        return out.logits[:, -1, :]

    def _attention_backends(self) -> contextlib.AbstractContextManager:
        """Keep SDPA off cuDNN on CUDA. torch sends masked SDPA to cuDNN first on Hopper, and
        cuDNN builds an execution plan for every new (batch, length) shape; a decode batch
        meets a new length every step. On an H100 the first pass over a sequence of shapes
        ran at half the speed of a second pass over the same shapes (benchmarks/RESULTS.md)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    def _route_adapters(self, adapters: list[str | None]) -> dict[str, Any]:
        """peft arguments for a forward over rows with these adapters. A batch on one adapter
        (or on none) runs peft's plain forward with that adapter active (or with the LoRA
        layers off); only a mix takes the per-row path, which splits every LoRA layer's input
        by adapter and costs ~30% of decode speed (benchmarks/hf_engine.py --lora)."""
        names = set(adapters)
        wanted = next(iter(names)) if len(names) == 1 else _MIXED
        if wanted != self._active:
            lora = self._peft.base_model
            if wanted is None:
                lora.disable_adapter_layers()
            else:
                if self._active is None:
                    lora.enable_adapter_layers()
                if wanted is not _MIXED:
                    self._peft.set_adapter(wanted, inference_mode=True)
            self._active = wanted
        return {"adapter_names": [name or "__base__" for name in adapters]} if wanted is _MIXED else {}

    def _new_cache(self) -> DynamicCache:
        return DynamicCache(config=self._base.config)

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=False)

    # ---- shutdown helpers -------------------------------------------------------------------

    def _fail_batch(self, admit: list[Row], error: EngineError) -> None:
        """Fail the rows of a forward pass that raised (the running batch and those joining)."""
        with self._model_lock:
            for row in [*self._batch.rows, *admit]:
                settle(row.owner.future, error=error)
            self._batch.reset()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _fail_outstanding(self, error: EngineError) -> None:
        owners = {id(r.owner): r.owner for r in [*self._queue, *self._batch.rows]}
        self._queue.clear()
        self._batch.reset()
        for pending in owners.values():
            call_in_loop(self._loop, functools.partial(settle, pending.future, error=error))


def _settle_all(done: list[tuple[_Pending, list[Completion]]]) -> None:
    for pending, completions in done:
        settle(pending.future, result=completions)
