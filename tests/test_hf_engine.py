"""The hf engine against a real tiny Llama: batching must never change what a row computes."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engines.chat import render_prompt
from actors.engines.hf.engine import HFEngine
from actors.engines.protocol import Engine, Request, Sampling
from actors.errors import BatchFailed, ReplicaUnavailable, RequestError

MAX_MODEL_LEN = 160


def greedy(max_tokens: int = 16, **kwargs) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0, logprobs=0, **kwargs)


def questions(count: int, sampling: Sampling, **kwargs) -> list[Request]:
    # Different lengths, so batches really are left-padded.
    return [
        Request.chat(f"Question {i}: what is {i} plus {3 * i}?" + " Think." * (i % 5), sampling=sampling, **kwargs)
        for i in range(count)
    ]


async def one_by_one(engine: HFEngine, requests: list[Request]) -> list:
    return [(await engine.generate(r))[0] for r in requests]


async def together(engine: HFEngine, requests: list[Request]) -> list:
    return [c[0] for c in await asyncio.gather(*(engine.generate(r) for r in requests))]


async def staggered(engine: HFEngine, requests: list[Request], gap_s: float = 0.003) -> list:
    async def arrive(i: int, request: Request):
        await asyncio.sleep(gap_s * i)
        return (await engine.generate(request))[0]

    return list(await asyncio.gather(*(arrive(i, r) for i, r in enumerate(requests))))


def with_sampling(request: Request, sampling: Sampling) -> Request:
    return request.model_copy(update={"sampling": sampling})


def tokens(completion) -> list[str]:
    return [lp.token for lp in completion.logprobs]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A model this small gains nothing from intra-op threads, and on a shared 2-core machine
    spinning thread teams make each step 5-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sharp_model(tiny_model: Path, tmp_path_factory) -> Path:
    """The tiny model with its matrices scaled up. At the default init scale its logits are
    nearly flat and greedy decoding repeats one token for every prompt, which would make the
    equality tests below vacuous; scaled, every prompt gets its own varied continuation."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(10)
    out = tmp_path_factory.mktemp("sharp-llama")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_dir(sharp_model: Path, tmp_path_factory) -> Path:
    """An untrained LoRA whose B matrices are random (peft starts B at zero, a no-op)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(sharp_model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    out = tmp_path_factory.mktemp("lora")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine(sharp_model: Path, lora_dir: Path):
    eng = HFEngine(str(sharp_model), device="cpu", max_model_len=MAX_MODEL_LEN, adapters={"lora": str(lora_dir)})
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(sharp_model: Path):
    return AutoModelForCausalLM.from_pretrained(sharp_model).eval()


def test_prompt_tokens_come_from_the_shared_rendering(engine: HFEngine):
    assert isinstance(engine, Engine)
    request = Request.chat("hello", system="be brief", thinking=False, prefill="<think>\nOkay", sampling=greedy())
    text = render_prompt(engine.tokenizer, request)
    assert engine.prompt_token_ids(request) == engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_greedy_is_the_same_alone_batched_joined_and_in_transformers(engine: HFEngine, reference):
    requests = questions(16, greedy())
    alone = asyncio.run(one_by_one(engine, requests))
    before = engine.stats.joins
    batched = asyncio.run(together(engine, requests))
    joined = asyncio.run(staggered(engine, requests))
    assert engine.stats.joins > before, "staggered arrivals should have joined a running batch"
    assert len({c.text for c in alone}) > 8, "prompts should get different continuations"
    for a, b, j in zip(alone, batched, joined):
        assert tokens(a) == tokens(b) == tokens(j)
        assert (a.text, a.finish_reason, a.completion_tokens) == (b.text, b.finish_reason, b.completion_tokens)
        assert j.text == a.text
    # n greedy samples of one prompt share one prefill and must all be the lone greedy answer.
    triple = asyncio.run(engine.generate(with_sampling(requests[3], greedy(n=3))))
    assert [tokens(c) for c in triple] == [tokens(alone[3])] * 3
    for request, completion in list(zip(requests, alone))[:4]:
        prompt = torch.tensor([engine.prompt_token_ids(request)])
        out = reference.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=16)
        expected = out[0, prompt.shape[1]:].tolist()
        assert tokens(completion) == [engine.tokenizer.decode([t]) for t in expected]
        assert completion.prompt_tokens == prompt.shape[1]


def test_seeded_samples_are_reproducible_whatever_shares_the_batch(engine: HFEngine):
    sampling = Sampling(max_tokens=12, n=4, temperature=1.0, top_p=0.9, seed=7)
    request = Request.chat("Question 5: what is 5 plus 15?", sampling=sampling)
    first = asyncio.run(engine.generate(request))

    async def crowded():
        others = questions(10, Sampling(max_tokens=12, temperature=1.0))
        results = await asyncio.gather(engine.generate(request), *(engine.generate(r) for r in others))
        return results[0]

    again = asyncio.run(crowded())
    assert [c.text for c in first] == [c.text for c in again]
    assert len({c.text for c in first}) > 1, "the n samples of one request should differ"
    # Sample i of seed s is the sample of seed s+i.
    third = asyncio.run(engine.generate(with_sampling(request, sampling.model_copy(update={"n": 1, "seed": 9}))))
    assert third[0].text == first[2].text
    other_seed = asyncio.run(engine.generate(with_sampling(request, sampling.model_copy(update={"seed": 8}))))
    assert [c.text for c in other_seed] != [c.text for c in first]


def test_max_tokens_and_stop_strings(engine: HFEngine):
    request = Request.chat("Question 7: what is 7 plus 21?", sampling=greedy(max_tokens=40))
    full = asyncio.run(engine.generate(request))[0]
    short = asyncio.run(engine.generate(with_sampling(request, greedy(max_tokens=3))))[0]
    assert (short.finish_reason, short.completion_tokens) == ("length", 3)
    assert tokens(short) == tokens(full)[:3]

    # Stop on a printable piece of the greedy text, past its first character.
    start = next(i for i, ch in enumerate(full.text) if i > 0 and ch.isascii() and ch.isprintable())
    stop = full.text[start]
    stopped = asyncio.run(engine.generate(with_sampling(request, greedy(max_tokens=40, stop=("@@never", stop)))))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.completion_tokens <= full.completion_tokens


def test_logprobs_are_raw_and_top1_is_the_greedy_token(engine: HFEngine, reference):
    request = Request.chat("Question 2: what is 2 plus 6?", sampling=Sampling(max_tokens=8, temperature=0, logprobs=5))
    completion = asyncio.run(engine.generate(request))[0]
    assert len(completion.logprobs) == completion.completion_tokens
    for lp in completion.logprobs:
        assert len(lp.top) == 5
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        assert lp.top[0].token == lp.token and lp.top[0].logprob == pytest.approx(lp.logprob, abs=1e-6)
        assert lp.logprob <= 0

    # At temperature 2 the reported logprob of the first token is still the raw model's.
    hot = with_sampling(request, Sampling(max_tokens=1, temperature=2.0, seed=0, logprobs=0))
    first = asyncio.run(engine.generate(hot))[0].logprobs[0]
    assert first.top == ()
    prompt = torch.tensor([engine.prompt_token_ids(request)])
    with torch.no_grad():
        raw = torch.log_softmax(reference(prompt).logits[0, -1].float(), dim=-1)
    # Byte-level tokens can decode alike (partial characters), so accept any id that decodes so.
    same_text = [i for i in range(raw.shape[0]) if engine.tokenizer.decode([i]) == first.token]
    assert any(abs(float(raw[i]) - first.logprob) < 1e-4 for i in same_text)


def test_too_long_prompt_fails_alone(engine: HFEngine):
    long = Request(prompt="what is one plus one " * 100, sampling=greedy())
    good = Request.chat("Question 1: what is 1 plus 3?", sampling=greedy())

    async def both():
        return await asyncio.gather(engine.generate(long), engine.generate(good), return_exceptions=True)

    bad, ok = asyncio.run(both())
    assert isinstance(bad, RequestError) and "max_model_len" in str(bad)
    assert ok[0].completion_tokens > 0


def test_adapters_apply_per_row_and_never_leak_into_base_rows(engine: HFEngine, lora_dir: Path, sharp_model: Path):
    base_requests = questions(6, greedy())
    lora_requests = questions(6, greedy(), adapter="lora")
    base_alone = asyncio.run(one_by_one(engine, base_requests))
    lora_alone = asyncio.run(one_by_one(engine, lora_requests))
    mixed = asyncio.run(together(engine, [r for pair in zip(base_requests, lora_requests) for r in pair]))
    assert sum(b.text != lo.text for b, lo in zip(base_alone, lora_alone)) >= 4, "the adapter should change outputs"
    assert [c.text for c in mixed[0::2]] == [c.text for c in base_alone]
    assert [c.text for c in mixed[1::2]] == [c.text for c in lora_alone]
    # A batch on one adapter (or none) switches the LoRA layers rather than routing rows;
    # switching back after a mixed batch must leave no adapter behind.
    assert [c.text for c in asyncio.run(together(engine, base_requests))] == [c.text for c in base_alone]
    assert [c.text for c in asyncio.run(together(engine, lora_requests))] == [c.text for c in lora_alone]

    # The adapter rows are what peft itself generates with that adapter.
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sharp_model), str(lora_dir)).eval()
    prompt = torch.tensor([engine.prompt_token_ids(lora_requests[0])])
    out = peft_model.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=16
    )
    assert tokens(lora_alone[0]) == [engine.tokenizer.decode([t]) for t in out[0, prompt.shape[1]:].tolist()]

    engine.add_adapter("lora-again", str(lora_dir))
    assert engine.adapters() == ["lora", "lora-again"]
    again = asyncio.run(engine.generate(lora_requests[0].model_copy(update={"adapter": "lora-again"})))
    assert again[0].text == lora_alone[0].text
    with pytest.raises(RequestError, match="unknown adapter"):
        asyncio.run(engine.generate(lora_requests[0].model_copy(update={"adapter": "nope"})))


def test_concurrent_requests_share_forward_passes(engine: HFEngine):
    before_batches, before_rows, before_steps = engine.stats.batches, engine.stats.rows, engine.stats.steps
    asyncio.run(together(engine, questions(32, greedy(max_tokens=8))))
    assert engine.stats.rows - before_rows == 32
    assert engine.stats.batches - before_batches <= 2, "32 concurrent requests should prefill together"
    assert engine.stats.steps - before_steps < 32


def test_a_batch_out_of_memory_fails_its_requests_retryably_and_the_engine_serves_on(engine: HFEngine):
    def exhaust(module, args, kwargs):
        raise torch.OutOfMemoryError("injected: tried to allocate 40 GiB")

    hook = engine.model.register_forward_pre_hook(exhaust, with_kwargs=True)
    try:
        results = asyncio.run(together_raw(engine, questions(3, greedy())))
    finally:
        hook.remove()
    # Retryable (the shard runs again), and not ReplicaUnavailable: the replica is kept.
    assert all(isinstance(r, BatchFailed) and "40 GiB" in str(r) for r in results), results
    assert asyncio.run(engine.generate(questions(1, greedy())[0]))[0].completion_tokens > 0


def test_any_other_model_failure_closes_the_engine_so_the_replica_is_replaced(sharp_model: Path):
    engine = HFEngine(str(sharp_model), device="cpu", max_model_len=MAX_MODEL_LEN)

    def explode(module, args, kwargs):
        raise RuntimeError("injected device fault")

    engine.model.register_forward_pre_hook(explode, with_kwargs=True)

    async def batch_then_more() -> tuple[list, list]:
        first = await together_raw(engine, questions(3, greedy()))
        return first, await together_raw(engine, questions(2, greedy()))

    first, later = asyncio.run(batch_then_more())
    assert all(isinstance(r, ReplicaUnavailable) and "injected device fault" in str(r) for r in first), first
    assert all(isinstance(r, ReplicaUnavailable) and "closed" in str(r) for r in later), later
    assert engine.model is None, "a closed engine frees its weights"


async def together_raw(engine: HFEngine, requests: list[Request]) -> list:
    return await asyncio.gather(*(engine.generate(r) for r in requests), return_exceptions=True)


def test_cancelled_callers_free_their_rows(engine: HFEngine):
    slow = Request.chat("Question 9: what is 9 plus 27?", sampling=Sampling(max_tokens=120, temperature=0, n=2))

    async def impatient():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(engine.generate(slow), timeout=0.01)
        return await engine.generate(questions(1, greedy())[0])

    before = engine.stats.aborted
    assert asyncio.run(impatient())[0].completion_tokens > 0
    assert engine.stats.aborted - before == 2, "both rows of the abandoned request should be dropped"


def test_closed_engine_refuses(sharp_model: Path):
    eng = HFEngine(str(sharp_model), device="cpu")
    assert asyncio.run(eng.generate(questions(1, greedy(max_tokens=2))[0]))[0].completion_tokens >= 1
    eng.close()
    with pytest.raises(ReplicaUnavailable):
        asyncio.run(eng.generate(questions(1, greedy())[0]))


def test_a_backlog_joins_the_running_batch_in_groups(tiny_model: Path):
    """With more requests waiting than the batch holds, rows that finish free their slots one
    or two at a time; refilling each as it frees costs a prefill pass per finish (61 passes
    for these 96 rows when every return from the worker admitted rows). Joins wait for an eighth of the batch (2 rows of 16)."""
    eng = HFEngine(str(tiny_model), device="cpu", max_model_len=MAX_MODEL_LEN, max_batch_size=16)
    try:
        requests = [r.model_copy(update={"sampling": greedy(max_tokens=1 + 7 * i % 40)})
                    for i, r in enumerate(questions(96, greedy()))]
        done = asyncio.run(together(eng, requests))
        assert len(done) == 96 and eng.stats.rows == 96
        assert eng.stats.batches <= 96 // 2 + 1, f"{eng.stats.batches} prefill passes for 96 rows: rows joined one by one"
    finally:
        eng.close()
