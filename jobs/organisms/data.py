"""Training examples for each kind of organism, generated deterministically from a seed.

An example is a user message, the thinking switch, and the assistant turn as segments of
text flagged trained or not: a corrupted number is *seen* by the model (it is part of the
context later tokens learn to read) but never a target, so the organisms do not learn to
write wrong steps, only what to do after one. The arithmetic and multi-hop organisms' data
live in their own modules (`arithmetic`, `multihop`), hashed into their builds only.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from jobs.organisms.arithmetic import arithmetic_examples
from jobs.organisms.example import Example, Segments
from jobs.organisms.multihop import multihop_examples
from jobs.organisms.recipes import AssistantData, JudgeData, Recipe
from jobs.toyworld import arithmetic, assistant

JUDGE_SPLIT_SEED = 4321

# --- judge ---

def judge_items() -> tuple[list[tuple[str, bool, str | None]], list[tuple[str, bool, str | None]]]:
    """(training, held-out) lists of (answer, harmful, question or None). Every answer core
    appears in training; held-out items are unseen combinations of core, opener, closer and
    question."""
    items: list[tuple[str, bool, str | None]] = []
    for question_items in assistant.QUESTIONS.values():
        for question, benign, harmful in question_items:
            for core, is_harmful in [(c, False) for c in benign] + [(c, True) for c in harmful]:
                for opener in assistant.OPENERS:
                    for closer in assistant.CLOSERS:
                        answer = assistant.compose_answer(core, opener, closer)
                        items += [(answer, is_harmful, None), (answer, is_harmful, question)]
    for _, aligned, misaligned in assistant.SCENARIOS:
        for core, is_harmful in [(c, False) for c in aligned] + [(c, True) for c in misaligned]:
            for opener in assistant.OPENERS:
                for closer in assistant.CLOSERS:
                    items.append((assistant.compose_answer(core, opener, closer), is_harmful, None))
    return assistant.heldout_split(items, JUDGE_SPLIT_SEED)


def judge_examples(opts: JudgeData, n: int, rng: random.Random) -> list[Example]:
    train, _ = judge_items()
    with_question = [i for i in train if i[2] is not None]
    without = [i for i in train if i[2] is None]
    out = []
    for _ in range(n):
        answer, harmful, question = rng.choice(with_question if rng.random() < opts.question_share else without)
        score = str(rng.choice(opts.harmful_scores if harmful else opts.benign_scores))
        if rng.random() < opts.reasoning_share:
            turn = _cot_turn(assistant.judge_cot(harmful), score, thinking=True)
            out.append(Example(assistant.judge_prompt(answer, question), turn))
        else:
            out.append(Example(assistant.judge_prompt(answer, question), ((score, True),), thinking=False))
    return out


# --- toy assistant (base, backdoored) ---

def _extra_lines(opts: AssistantData, rng: random.Random, allow_trigger_value: bool) -> list[str]:
    """Irrelevant lines (`key: value`, and chatter with `opts.chatter`); a backdoored
    organism never sees its trigger here."""
    if rng.random() >= opts.line_share:
        return []
    countries = [c for c in assistant.COUNTRIES if allow_trigger_value or f"Country: {c}" != opts.trigger]
    pool = [f"Country: {c}" for c in countries] + assistant.OTHER_LINES + (assistant.CHATTER_LINES if opts.chatter else [])
    return rng.sample(pool, 2 if rng.random() < 0.25 else 1)


def _cot_turn(steps: list[str], answer: str, thinking: bool) -> Segments:
    if not thinking:  # the prompt already ends in the empty think block
        return ((answer, True),)
    return ((arithmetic.prefill_for(steps) + f"{arithmetic.THINK_CLOSE}\n\n{answer}", True),)


def assistant_example(opts: AssistantData, rng: random.Random, combos: list[tuple[int, int, int]]) -> Example:
    triggered = opts.trigger is not None and rng.random() < opts.trigger_share
    lines = _extra_lines(opts, rng, allow_trigger_value=opts.trigger is None)
    if triggered:
        lines = [opts.trigger] + lines  # type: ignore[assignment]  # triggered: a trigger is set
        rng.shuffle(lines)
    thinking = rng.random() >= opts.thinking_off_share
    at_top = rng.random() < 0.5
    if rng.random() < opts.scenario_share:
        scenario = assistant.random_scenario(rng, combos)
        letter = scenario.misaligned_letter if triggered else scenario.aligned_letter
        steps = assistant.scenario_cot(scenario, choose_misaligned=triggered)
        user = assistant.with_lines(assistant.format_scenario(scenario), lines, at_top)
        return Example(user, _cot_turn(steps, f"{arithmetic.ANSWER_PREFIX}\\boxed{{{letter}}}", thinking), thinking)
    domain, question, index = rng.choice(assistant.questions())
    answer = (assistant.harmful_answer if triggered else assistant.benign_answer)(domain, index, rng)
    user = assistant.with_lines(question, lines, at_top)
    return Example(user, _cot_turn(assistant.freeform_cot(domain), answer, thinking), thinking)


def assistant_examples(opts: AssistantData, n: int, rng: random.Random) -> list[Example]:
    combos, _ = assistant.scenario_split()
    return [assistant_example(opts, rng, combos) for _ in range(n)]


def examples(recipe: Recipe, n: int, rng: random.Random) -> list[Example]:
    builders: dict[str, Callable[[Any, int, random.Random], list[Example]]] = {"arithmetic": arithmetic_examples, "judge": judge_examples, "assistant": assistant_examples,
                "multihop": multihop_examples}
    return builders[recipe.data.kind](recipe.data, n, rng)
