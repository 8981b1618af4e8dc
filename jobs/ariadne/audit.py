"""Ariadne's per-query program (`Audit`): the agent pass, then every counterfactual of the
query concurrently: interventions and their baseline, and Lanham et al.'s tests.

A regeneration keeps the steps before k, writes step k (replaced or not), and lets the
subject continue and answer: in prefill mode the assistant turn starts with those steps as
the model wrote them; in prompt mode they are given in the user turn
(`jobs.ariadne.prompts`). Early answering and filler ask for the answer right away after a
fixed prefill (or, in prompt mode, an instruction to start the answer with it).
"""
from __future__ import annotations

import asyncio
import random
from typing import Any

from actors.engines.protocol import Completion, Request, Sampling
from actors.errors import RequestError
from jobs.ariadne import lanham, prompts
from jobs.ariadne.judging import seed as _seed
from jobs.ariadne.operators import (
    DETERMINISTIC,
    apply_deterministic,
    change_number,
    commute,
    critic_prompt,
    is_critic,
)
from jobs.ariadne.params import AriadneParams
from jobs.ariadne.queries import ARITHMETIC, Query
from jobs.ariadne.traces import INSTRUCTION, Trace, first_sentence, parse_answer, parse_trace, unparsed_reason
from jobs.errors import UnknownRole
from jobs.job import JobContext

# The arms that rewrite one step and regenerate the rest (the operator says how).
STEP_ARMS = {"add_mistake": "add_mistake", "paraphrase": "paraphrase"}


def user_message(query: Query) -> str:
    # The organisms know only their own question format; every other model gets the format asked.
    return query.query if query.domain == ARITHMETIC else f"{query.query}\n\n{INSTRUCTION}"


def operators_for(params: AriadneParams, domain: str) -> tuple[str, ...]:
    if params.operators:
        return params.operators
    return ("change_number",) if domain == ARITHMETIC else ("logic_flip",)


class Audit:
    """The per-query program: the agent pass, then every counterfactual concurrently."""

    def __init__(self, query: Query, params: AriadneParams, ctx: JobContext) -> None:
        self.query, self.params, self.ctx = query, params, ctx
        self.subject = ctx.model("subject")
        self.user = user_message(query)
        self.prompted = params.continuation == "prompt"
        self.base = {"query_id": query.id, "domain": query.domain, "query": query.query,
                     "reference_answer": query.answer, "subject_model": self.subject.name}

    def _request(self, prefill: str, max_tokens: int, seed: int, n: int = 1, temperature: float | None = None,
                 thinking: bool | None = None, user: str | None = None) -> Request:
        """A subject request by default (the agent's rendering); critic and judge calls say
        thinking=False and their own temperature."""
        temperature = self.params.temperature if temperature is None else temperature
        thinking = self.params.agent_thinking if thinking is None else thinking
        return Request.chat(user or self.user, prefill=prefill, thinking=thinking, affinity=self.query.id,
                            sampling=Sampling(max_tokens=max_tokens, n=n, seed=seed, temperature=temperature))

    async def run(self) -> list[dict[str, Any]]:
        p = self.params
        [agent] = await self.subject.generate(self._request("", p.max_tokens, _seed(p.seed, self.query.id, "agent")))
        trace = parse_trace(agent.text)
        reason = unparsed_reason(trace, agent.finish_reason)
        trace_row = {**self.base, "arm": "trace", "n_steps": len(trace.steps), "status": reason or "ok",
                     "original_trace": agent.text, "original_answer": trace.answer,
                     "prompt_tokens": agent.prompt_tokens, "completion_tokens": agent.completion_tokens,
                     "finish_reason": agent.finish_reason}
        if reason:
            return [trace_row]
        n = len(trace.steps)
        ks = range(n) if p.steps == "all" else p.steps
        operators = operators_for(p, self.query.domain)
        work = []
        for k in ks:
            if k >= n:
                work += [self._skip(trace, "intervention", op, k, f"the trace has {n} steps") for op in operators]
                continue
            work += [self._intervene(trace, op, k) for op in operators]
            if p.baseline:
                work.append(self._regenerate(trace, "baseline", "none", k, None, {}))
        if "early_answering" in p.lanham:
            work += [self._early_answer(trace, kept) for kept in range(n + 1)]
        for arm in ("add_mistake", "paraphrase"):
            if arm in p.lanham:
                work += [self._intervene(trace, arm, k) for k in range(n)]
        if "filler" in p.lanham:
            work.append(self._fillers(trace))
        results = await asyncio.gather(*work)
        return [trace_row] + [row for rows in results for row in rows]

    # ---- step arms: interventions, baseline, added mistakes, paraphrases -----------------

    async def _skip(self, trace: Trace, arm: str, operator: str, k: int, status: str) -> list[dict[str, Any]]:
        row: dict[str, Any] = {**self.base, "arm": arm, "operator": operator, "step": k,
                               "n_steps": len(trace.steps), "status": status, "original_answer": trace.answer}
        if arm in STEP_ARMS:
            row["fraction_kept"] = k / len(trace.steps)
        return [row]

    async def _intervene(self, trace: Trace, operator: str, k: int) -> list[dict[str, Any]]:
        """Rewrite step k with `operator`, then regenerate. add_mistake changes a number when
        the step has one, else asks the critic for a mistake; paraphrase commutes a sum or
        product when the step has one, else asks the critic for a paraphrase."""
        arm = STEP_ARMS.get(operator, "intervention")
        step = trace.steps[k].text
        rng = random.Random(_seed(self.params.seed, self.query.id, operator, k))
        extra: dict[str, Any] = {}
        new: str | None
        if arm in STEP_ARMS:
            new = change_number(step, rng) if arm == "add_mistake" else commute(step)
            if new is not None:
                operator = "change_number" if arm == "add_mistake" else "commute"
            elif self.ctx.has("critic") or self.query.domain != ARITHMETIC:
                new, extra = await self._critic(arm, step, k)
                operator = "critic_mistake" if arm == "add_mistake" else "critic_paraphrase"
            else:  # the organisms' steps need no critic; one that cannot be commuted is skipped
                return await self._skip(trace, arm, "commute", k, "commute found nothing to change in the step")
        elif operator in DETERMINISTIC:
            new = apply_deterministic(operator, step, rng)
        else:
            assert is_critic(operator), f"unknown operator {operator!r}"
            new, extra = await self._critic(operator, step, k)
        if not new or " ".join(new.split()) == step:  # an unchanged step is no intervention
            why = "the critic gave no rewrite" if extra else f"{operator} found nothing to change in the step"
            return [{**row, **extra} for row in await self._skip(trace, arm, operator, k, why)]
        return await self._regenerate(trace, arm, operator, k, new, extra)

    async def _critic(self, operator: str, step: str, k: int) -> tuple[str, dict[str, Any]]:
        try:
            critic = self.ctx.model("critic")
        except UnknownRole as e:  # validation requires a critic where one is needed; say so if not
            raise RequestError(f"{operator} needs the critic role here: {e}") from e
        p = self.params
        request = self._request("", p.critic_max_tokens, _seed(p.seed, self.query.id, "critic", operator, k),
                                temperature=p.critic_temperature, thinking=False,
                                user=critic_prompt(operator, self.query.query, step))
        [reply] = await critic.generate(request)
        return first_sentence(reply.text), {"critic_model": critic.name,
                                            "critic_tokens": reply.prompt_tokens + reply.completion_tokens}

    async def _regenerate(self, trace: Trace, arm: str, operator: str, k: int, new_step: str | None,
                          extra: dict[str, Any]) -> list[dict[str, Any]]:
        """Keep steps before k, write `new_step` as step k (None: step k as written, the
        baseline), let the model continue and answer. Baseline and interventions at step k
        share a seed: their difference is the intervention's, not the dice's."""
        p = self.params
        kept = trace.prefill(k, new_step)
        seed = _seed(p.seed, self.query.id, "regenerate", k)
        if self.prompted:
            user = prompts.continue_message(self.user, prompts.shown_steps(kept, trace.steps[0].start))
            request, prefill = self._request("", p.max_tokens, seed, n=p.samples_per_audit, user=user), ""
        else:
            request, prefill = self._request(kept, p.max_tokens, seed, n=p.samples_per_audit), kept
        row = {**self.base, **extra, "arm": arm, "operator": operator, "step": k, "n_steps": len(trace.steps),
               "original_step": trace.steps[k].text, "intervened_step": new_step or trace.steps[k].text,
               "original_answer": trace.answer}
        if arm in STEP_ARMS:
            row["fraction_kept"] = k / len(trace.steps)
        return await self._score_all(trace, request, prefill, row)

    # ---- early answering and filler ---------------------------------------------------------

    def _answer_request(self, trace: Trace, kept: int, filler: str, seed: int) -> tuple[Request, str]:
        """The request that asks for the answer after the first `kept` steps (and `filler` in
        place of the rest), and the prefill its completion continues."""
        p = self.params
        if self.prompted:  # thinking off: a model told to answer now must not reason afresh
            shown = prompts.shown_steps(trace.cut(kept), trace.steps[0].start) + (f"\n{filler}" if filler else "")
            user = prompts.answer_now_message(self.user, shown, p.answer_prefill)
            return self._request("", p.answer_max_tokens, seed, n=p.samples_per_audit, thinking=False, user=user), ""
        prefill = trace.answer_prefill(kept, p.answer_prefill, filler)
        return self._request(prefill, p.answer_max_tokens, seed, n=p.samples_per_audit), prefill

    async def _early_answer(self, trace: Trace, kept: int, filler: str = "") -> list[dict[str, Any]]:
        """The answer asked after the first `kept` steps; with `filler`, the rest of the CoT
        replaced by it (the filler arm). Both arms share a seed per cut, so at the full CoT
        they send the same request."""
        seed = _seed(self.params.seed, self.query.id, "answer", kept)
        request, prefill = self._answer_request(trace, kept, filler, seed)
        n = len(trace.steps)
        row = {**self.base, "arm": "filler" if filler else "early_answering",
               "operator": "filler" if filler else "truncate", "step": kept, "n_steps": n,
               "fraction_kept": kept / n, "original_answer": trace.answer}
        if filler:
            row["intervened_step"] = filler
        return await self._score_all(trace, request, prefill, row, early=True)

    async def _fillers(self, trace: Trace) -> list[dict[str, Any]]:
        """For each cut k (the full CoT included, to close the curve), the CoT from step k on
        replaced by filler as long in tokens as what it replaces. Lengths come from the subject:
        the prompt tokens of one-token requests for each cut and for UNIT_REPEATS units."""
        p, n = self.params, len(trace.steps)
        unit_text = prompts.filler_text(p.filler, lanham.UNIT_REPEATS)
        probes = [self._answer_request(trace, k, "", 0)[0] for k in range(n + 1)]
        probes.append(self._answer_request(trace, 0, unit_text, 0)[0])
        try:
            counted = await asyncio.gather(*(self.subject.generate(_one_token(r)) for r in probes))
        except RequestError as e:
            return [{**self.base, "arm": "filler", "operator": "filler", "step": k, "n_steps": n,
                     "fraction_kept": k / n, "original_answer": trace.answer, "status": f"request error: {e}"}
                    for k in range(n + 1)]
        tokens = [c[0].prompt_tokens for c in counted]
        unit_tokens = (tokens[-1] - tokens[0]) / lanham.UNIT_REPEATS
        work = []
        for k in range(n + 1):
            count = lanham.filler_count(tokens[n] - tokens[k], unit_tokens)
            work.append(self._filler_at(trace, k, prompts.filler_text(p.filler, count)))
        return [row for rows in await asyncio.gather(*work) for row in rows]

    async def _filler_at(self, trace: Trace, kept: int, filler: str) -> list[dict[str, Any]]:
        rows = await self._early_answer(trace, kept, filler)
        return [{**r, "arm": "filler", "operator": "filler"} for r in rows]

    # ---- scoring ------------------------------------------------------------------------------

    async def _score_all(self, trace: Trace, request: Request, prefill: str, row: dict[str, Any],
                         early: bool = False) -> list[dict[str, Any]]:
        try:
            completions = await self.subject.generate(request)
        except RequestError as e:  # e.g. the prefix no longer fits the context: a row, not a lost query
            return [{**row, "status": f"request error: {e}"}]
        return [{**row, **self._score(trace, c, prefill, i, early)} for i, c in enumerate(completions)]

    def _score(self, trace: Trace, completion: Completion, prefill: str, index: int, early: bool) -> dict[str, Any]:
        """A regeneration's row: "ok" when both answers are there for the judging stage."""
        text = prefill + completion.text
        if early:
            answer = lanham.early_answer(completion.text, self.params.answer_prefill, self.prompted)
        else:
            answer, _ = parse_answer(text)
        out: dict[str, Any] = {
            "sample_index": index, "counterfactual_trace": text, "counterfactual_answer": answer,
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "finish_reason": completion.finish_reason,
        }
        if answer is None or trace.answer is None:
            return {**out, "status": "no final answer in the regeneration"}
        return {**out, "status": "ok"}


def _one_token(request: Request) -> Request:
    """`request` asking for one token: its prompt_tokens measure the text it sends."""
    return request.model_copy(update={"sampling": request.sampling.model_copy(update={"max_tokens": 1, "n": 1})})
