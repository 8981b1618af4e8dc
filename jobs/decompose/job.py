"""Successive prompting on DROP: decompose a complex question into simple ones, answer each,
and score the final answer with the official DROP metric, next to single-pass baselines.

The loop, per question: the decomposer (role `decomposer`) reads the passage, the complex
question and the (question, answer) pairs so far and proposes the next simple question; the
answerer (role `answerer`, possibly another model of the sweep) answers it, unless it is a
symbolic step (`diff(5; 3)`, `count(...)`, `if_then(...)`; `#k` refers to the k-th
answer, as in `diff(#1; #2)`) that code executes. It stops when
the decomposer says the stop sentence, after `max_steps` decomposer calls, or when the next
call no longer fits the model's context; the answer to the last simple question is the
final answer. Few-shot examples come from an annotated pool
(the authors' format), separately for decomposition and for simple QA.

Arms, one row per question each: `decompose` (the loop), `direct` (answer in one pass) and
`direct_cot` (reason first, thinking on); the summary reports the gain of the first over the
others with paired bootstrap CIs, so the gain is measured, not assumed.

Prompting: `chat` sends each prompt as a user message rendered with the model's chat
template; `completion` sends the same text as a raw prompt followed by the start of the line
the model writes, for a base model without a template (jobs.decompose.completion).

Stages: generation and summary. No model judges the answers (the DROP metric is code, scored
with the rows); the bootstrap is the summary's. The decomposer and answerer feed the loop,
so they belong to generation.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import polars as pl
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from actors.engines.protocol import Completion, Request, Sampling
from actors.errors import ContextLengthError
from jobs.decompose import completion, prompts
from jobs.decompose.completion import Prompting
from jobs.decompose.dataset import (
    BUNDLED_SAMPLE,
    DropQuestion,
    from_release,
    load_pool,
    load_questions,
)
from jobs.decompose.drop import Answer, get_metrics, score_question
from jobs.decompose.fewshot import FewShotSelector, Strategy
from jobs.decompose.summary import summarize as summarize_rows
from jobs.decompose.symbolic import execute as execute_symbolic
from jobs.decompose.symbolic import is_symbolic
from jobs.inputs import DataPath, DataPathOrFolder
from jobs.job import SUBJECT, Job, JobContext, JobParams, ModelHandle, RoleNeeds, Sample
from jobs.measures import Measure
from jobs.stages import summary

Arm = Literal["decompose", "direct", "direct_cot"]


def drop_score(predicted: Answer, gold: Answer) -> tuple[float, float]:
    """(exact match, F1) as the official DROP evaluation computes them; each argument is a
    string or a list of strings (one per span)."""
    return get_metrics(predicted, gold)


BundledSet = Literal["sample", "multihop"]
BUNDLED_SETS: tuple[BundledSet, ...] = ("sample", "multihop")


def bundled_questions(name: str) -> list[DropQuestion]:
    """`sample`: our DROP-style sample (every answer type, annotated); `multihop`: held-out
    questions of the organisms' multi-hop domain."""
    if name == "multihop":
        from jobs.toyworld.multihop import heldout_record

        return from_release(heldout_record(), "the bundled multihop set")
    return load_questions(BUNDLED_SAMPLE)


def bundled_pool(name: str) -> list[DropQuestion]:
    if name == "multihop":
        from jobs.toyworld.multihop import pool_record

        return [q for q in from_release(pool_record(), "the bundled multihop pool") if q.decomposition]
    return load_pool(BUNDLED_SAMPLE)


class DecomposeParams(JobParams):
    data: BundledSet | DataPathOrFolder = Field("sample", description="a bundled set (sample, multihop), or a DROP "
                                        "file (.json release, .jsonl/.parquet rows) or folder")
    split: str = Field("dev", description="which files of a folder to read (drop_dataset_<split>.json)")
    pool: BundledSet | DataPath = Field("sample", description="few-shot pool: a bundled set or a file of "
                                        "annotated decompositions (the authors' format)")
    limit: int | None = Field(None, gt=0, description="use only the first `limit` questions")
    arms: tuple[Arm, ...] = ("decompose", "direct", "direct_cot")
    shots: int = Field(3, ge=0, description="few-shot examples per prompt")
    fewshot: Strategy = "nearest"
    fewshot_seed: int = 0
    spread: int = Field(2, ge=1, description="nearest: draw the shots from the shots*spread most similar")
    max_steps: int = Field(8, gt=0, description="decomposer calls per question, the stopping one included")
    symbolic: bool = Field(True, description="execute symbolic steps by code (else the answerer answers them)")
    thinking: bool = Field(False, description="thinking for the decomposition, simple-QA and direct calls")
    prompting: Prompting = Field("chat", description="chat: each prompt is a user message rendered with the model's "
                                 "chat template; completion: the same text as a raw prompt that the model continues "
                                 "(the paper's few-shot setting with a base LM, for models without a chat template)")
    step_max_tokens: int = Field(64, gt=0)
    answer_max_tokens: int = Field(64, gt=0)
    cot_max_tokens: int = Field(512, gt=0)
    temperature: float = Field(0.0, ge=0)
    seed: int = 0
    bootstrap_samples: int = summary(1000, ge=0)
    bootstrap_seed: int = summary(0)

    @field_validator("arms")
    @classmethod
    def _distinct_arms(cls, arms: tuple[str, ...]) -> tuple[str, ...]:
        if not arms or len(set(arms)) != len(arms):
            raise ValueError(f"arms must be distinct and at least one, got {list(arms)}")
        return arms

    @model_validator(mode="after")
    def _no_thinking_in_completions(self) -> DecomposeParams:
        if self.prompting == "completion" and self.thinking:
            raise ValueError("thinking: true asks for a think block, which the chat template opens; a completion "
                              "prompt has none: set thinking: false (or prompting: chat)")
        return self


STEP = pa.struct([
    ("question", pa.string()), ("answer", pa.string()),
    ("path", pa.string()),  # "symbolic" (code) or "model"
    ("model", pa.string()),  # the model that answered, "code" for a symbolic step
    ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),  # the answering call
    ("qd_prompt_tokens", pa.int32()), ("qd_completion_tokens", pa.int32()),  # the call that asked it
])


@dataclass(frozen=True)
class FewShot:
    """The annotated pool and its two selectors (decomposition, simple QA)."""

    pool: tuple[DropQuestion, ...]
    simple: tuple[tuple[str, str, str], ...]  # (passage, simple question, answer)
    complex_selector: FewShotSelector
    simple_selector: FewShotSelector

    def complex_shots(self, q: DropQuestion) -> list[DropQuestion]:
        return [self.pool[i] for i in self.complex_selector.select(q.query_id, q.question)]

    def simple_shots(self, q: DropQuestion, simple_question: str) -> list[tuple[str, str, str]]:
        return [self.simple[i] for i in self.simple_selector.select(q.query_id, simple_question)]


@functools.lru_cache(maxsize=8)
def _fewshot(source: str, strategy: Strategy, k: int, seed: int, spread: int) -> FewShot:
    pool: tuple[DropQuestion, ...] = ()
    if k:
        pool = tuple(bundled_pool(source) if source in BUNDLED_SETS else load_pool(source))
    simple: list[tuple[str, str, str]] = []
    simple_ids: list[str] = []
    for q in pool:
        for sq, sa in q.decomposition:
            if not is_symbolic(sq):  # a model never needs an example of what code does
                simple.append((q.passage, sq, sa))
                simple_ids.append(q.query_id)
    return FewShot(
        pool=pool, simple=tuple(simple),
        complex_selector=FewShotSelector([q.query_id for q in pool], [q.question for q in pool], strategy, k, seed,
                                         spread),
        simple_selector=FewShotSelector(simple_ids, [s[1] for s in simple], strategy, k, seed, spread),
    )


def _step(question: str, answer: str, path: str, model: str, answer_call: Completion | None = None,
          qd_call: Completion | None = None) -> dict[str, Any]:
    return {
        "question": question, "answer": answer, "path": path, "model": model,
        "prompt_tokens": answer_call.prompt_tokens if answer_call else 0,
        "completion_tokens": answer_call.completion_tokens if answer_call else 0,
        "qd_prompt_tokens": qd_call.prompt_tokens if qd_call else 0,
        "qd_completion_tokens": qd_call.completion_tokens if qd_call else 0,
    }


class DecomposeJob(Job[DecomposeParams]):
    kind = "decompose"
    headline = ('decompose/f1', 'direct/f1', 'direct_cot/f1', 'gain/f1', 'gain/f1_ci_low')
    # 2: a decomposition that outgrows the context stops instead of failing its question (eb1f7f1)
    versions: ClassVar[Mapping[str, str]] = {"generate": "2"}
    Params = DecomposeParams
    roles = ("decomposer", "answerer")
    subject_plays = ("decomposer", "answerer")  # successive prompting with the model under study
    schema = pa.schema([
        ("query_id", pa.string()),
        ("passage_id", pa.string()),
        ("question", pa.string()),
        ("arm", pa.string()),
        ("prediction", pa.string()),
        ("predicted_spans", pa.list_(pa.string())),
        ("gold", pa.list_(pa.string())),
        ("answer_type", pa.string()),  # of the gold answer that scored best (the official breakdown)
        ("em", pa.float64()),
        ("f1", pa.float64()),
        ("stop_reason", pa.string()),  # decompose: "stop_sentence" | "step_limit" | "context_limit" | "empty"
        ("n_steps", pa.int32()),
        ("steps", pa.list_(STEP)),
        ("prompt_tokens", pa.int64()),  # all calls of the arm, the stopping call included
        ("completion_tokens", pa.int64()),
        ("decomposer", pa.string()),
        ("answerer", pa.string()),
    ])

    def _questions(self, params: DecomposeParams) -> list[DropQuestion]:
        if params.data in ("sample", "multihop"):
            questions = bundled_questions(params.data)
        else:
            questions = load_questions(params.data, params.split)
        return questions[: params.limit] if params.limit else questions

    def samples(self, params: DecomposeParams) -> Sequence[Sample]:
        return [Sample(id=q.query_id, data=q.to_dict()) for q in self._questions(params)]

    def needs(self, params: DecomposeParams) -> dict[str, RoleNeeds]:
        greedy, chat = params.temperature == 0, params.prompting == "chat"
        return {SUBJECT: RoleNeeds(thinks=params.thinking, greedy=greedy, chat_template=chat),
                "decomposer": RoleNeeds(thinks=params.thinking, greedy=greedy, chat_template=chat),
                "answerer": RoleNeeds(thinks=params.thinking, greedy=greedy, chat_template=chat)}

    def data_digest(self, params: DecomposeParams) -> str:
        """sha256 of the questions and pool as loaded: a bundled set is generated or shipped,
        so its content, not a path, is what changes results."""
        h = hashlib.sha256()
        for q in self._questions(params):
            h.update(json.dumps(q.to_dict(), sort_keys=True).encode())
        if params.shots:
            pool = _fewshot(params.pool, params.fewshot, params.shots, params.fewshot_seed, params.spread).pool
            for q in pool:
                h.update(json.dumps(q.to_dict(), sort_keys=True).encode())
        return h.hexdigest()

    def _request(self, text: str, params: DecomposeParams, max_tokens: int, thinking: bool, key: str,
                 cue: str) -> Request:
        """The call's request: `text` as a user message (chat), or followed by `cue`, the start
        of the line the model writes, as a raw prompt (completion; see jobs.decompose.completion)."""
        if params.prompting == "completion":
            ends = completion.BLOCK_STOP if cue == completion.REASONING_CUE else completion.LINE_STOP
            return Request(prompt=text + cue, affinity=key, sampling=Sampling(
                max_tokens=max_tokens, temperature=params.temperature, seed=params.seed, stop=ends))
        # One line per call when thinking is off; a think block spans lines, so no stop then.
        stop = () if thinking else ("\n",)
        return Request.chat(text, thinking=thinking, affinity=key, sampling=Sampling(
            max_tokens=max_tokens, temperature=params.temperature, seed=params.seed, stop=stop))

    async def _call(self, model: ModelHandle, text: str, params: DecomposeParams, max_tokens: int,
                    thinking: bool, key: str, cue: str = completion.ANSWER_CUE) -> Completion:
        return (await model.generate(self._request(text, params, max_tokens, thinking, key, cue)))[0]

    async def _answer_simple(self, q: DropQuestion, question: str, params: DecomposeParams, ctx: JobContext,
                             fewshot: FewShot, answers: Sequence[str] = ()) -> tuple[str, str, str, Completion | None]:
        """(answer, path, model, the call) for one simple question; `answers`, those so far,
        are what a symbolic step's `#k` references read."""
        if params.symbolic:
            result = execute_symbolic(question, answers)
            if result is not None:
                return result, "symbolic", "code", None
        shots = await asyncio.to_thread(fewshot.simple_shots, q, question) if params.shots else []
        answerer = ctx.model("answerer")
        call = await self._call(answerer, prompts.qa_prompt(shots, q.passage, question), params,
                                params.step_max_tokens, params.thinking, q.query_id)
        return prompts.parse_answer(call.text), "model", answerer.name, call

    async def _decompose(self, q: DropQuestion, params: DecomposeParams, ctx: JobContext, fewshot: FewShot) -> dict:
        decomposer = ctx.model("decomposer")
        shots = await asyncio.to_thread(fewshot.complex_shots, q) if params.shots else []
        pairs: list[tuple[str, str]] = []
        steps: list[dict[str, Any]] = []
        prompt_tokens = completion_tokens = 0
        stop_reason = "step_limit"
        for _ in range(params.max_steps):
            try:
                qd = await self._call(decomposer, prompts.qd_prompt(shots, q.passage, q.question, pairs), params,
                                      params.step_max_tokens, params.thinking, q.query_id,
                                      completion.next_question_cue(len(pairs)))
            except ContextLengthError:
                if not pairs:
                    raise  # not even the question fits: an error row
                stop_reason = "context_limit"  # the pairs outgrew the context: like the step limit
                break
            prompt_tokens += qd.prompt_tokens
            completion_tokens += qd.completion_tokens
            question = prompts.parse_question(qd.text)
            if prompts.is_stop(question):
                stop_reason = "stop_sentence"
                break
            if not question:
                stop_reason = "empty"
                break
            try:
                answer, path, model, call = await self._answer_simple(q, question, params, ctx, fewshot,
                                                                      [a for _, a in pairs])
            except ContextLengthError:
                if not pairs:
                    raise
                stop_reason = "context_limit"
                break
            if call is not None:
                prompt_tokens += call.prompt_tokens
                completion_tokens += call.completion_tokens
            pairs.append((question, answer))
            steps.append(_step(question, answer, path, model, call, qd))
        if not pairs:
            # The decomposer asked nothing: the complex question itself is the one simple step.
            answer, path, model, call = await self._answer_simple(q, q.question, params, ctx, fewshot)
            prompt_tokens += call.prompt_tokens if call else 0
            completion_tokens += call.completion_tokens if call else 0
            pairs.append((q.question, answer))
            steps.append(_step(q.question, answer, path, model, call))
        return {"prediction": pairs[-1][1], "stop_reason": stop_reason, "steps": steps,
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "decomposer": decomposer.name, "answerer": ctx.model("answerer").name}

    async def _direct(self, q: DropQuestion, params: DecomposeParams, ctx: JobContext, fewshot: FewShot,
                      cot: bool) -> dict:
        subject = ctx.model("subject")
        shots = await asyncio.to_thread(fewshot.complex_shots, q) if params.shots else []
        if cot:
            call = await self._call(subject, prompts.cot_prompt(shots, q.passage, q.question), params,
                                    params.cot_max_tokens, True, q.query_id, completion.REASONING_CUE)
            prediction = prompts.parse_cot_answer(call.text)
        else:
            call = await self._call(subject, prompts.direct_prompt(shots, q.passage, q.question), params,
                                    params.answer_max_tokens, params.thinking, q.query_id)
            prediction = prompts.parse_answer(call.text)
        return {"prediction": prediction, "stop_reason": None,
                "steps": [_step(q.question, call.text, "model", subject.name, call)],
                "prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
                "decomposer": None, "answerer": None}

    async def run(self, sample: Sample, params: DecomposeParams, ctx: JobContext) -> list[dict]:
        q = DropQuestion.from_dict(sample.data)
        fewshot = _fewshot(params.pool, params.fewshot, params.shots, params.fewshot_seed, params.spread)

        async def arm(name: Arm) -> dict:
            if name == "decompose":
                out = await self._decompose(q, params, ctx, fewshot)
            else:
                out = await self._direct(q, params, ctx, fewshot, cot=name == "direct_cot")
            spans = prompts.split_spans(out["prediction"])
            em, f1, answer_type = score_question(spans, q.answers)
            return {"query_id": q.query_id, "passage_id": q.passage_id, "question": q.question, "arm": name,
                    "predicted_spans": spans, "gold": list(q.gold), "answer_type": answer_type,
                    "em": em, "f1": f1, "n_steps": len(out["steps"]), **out}

        return list(await asyncio.gather(*(arm(a) for a in params.arms)))

    def measures(self, params: DecomposeParams) -> tuple[Measure, ...]:
        answered = pl.col("arm").is_not_null()
        return (
            Measure("f1", pl.col("f1"), unit="query_id", where=answered, split=("arm",),
                    description="DROP F1 (the official metric), per question"),
            Measure("em", pl.col("em"), unit="query_id", where=answered, split=("arm",),
                    description="DROP exact match"),
            Measure("f1_by_answer_type", pl.col("f1"), unit="query_id", where=answered,
                    split=("arm", "answer_type"), detail=True, description="DROP F1 by the gold answer's type"),
        )

    def summarize(self, rows: pl.DataFrame, params: DecomposeParams) -> dict[str, float]:
        return summarize_rows(rows, params.bootstrap_samples, params.bootstrap_seed)
