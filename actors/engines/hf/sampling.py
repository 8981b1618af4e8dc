"""Per-row token choice for the HF engine's decode loop.

Every row of a batch carries its own temperature, top_p and random stream, so rows from
different requests share one forward pass without sharing sampling behaviour. Randomness comes
from one uniform draw per sampled row per step, taken from that row's own CPU generator: a
seeded sample therefore draws the same numbers whatever else shares its batch, and on any
device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowSampling:
    """The sampling settings of the rows of one step, as tensors on the model's device."""

    temperature: torch.Tensor  # [B] float; 0 means greedy
    top_p: torch.Tensor  # [B] float in (0, 1]
    any_sampled: bool  # known on the host, so an all-greedy step never syncs to ask
    any_top_p: bool

    @classmethod
    def of(cls, temperatures: list[float], top_ps: list[float], device: torch.device) -> RowSampling:
        sampled = [t > 0 for t in temperatures]
        return cls(
            torch.tensor(temperatures, dtype=torch.float32, device=device),
            torch.tensor(top_ps, dtype=torch.float32, device=device),
            any(sampled),
            any(s and p < 1 for s, p in zip(sampled, top_ps)),
        )


def draw_uniforms(generators: list[torch.Generator | None], device: torch.device) -> torch.Tensor | None:
    """One uniform in [0, 1) per row; greedy rows (generator None) draw nothing, so a row's
    stream advances exactly once per sampled step. None when no row samples."""
    if all(g is None for g in generators):
        return None
    values = [float(torch.rand(1, generator=g)) if g is not None else 0.0 for g in generators]
    return torch.tensor(values, dtype=torch.float32, device=device)


def choose_tokens(logits: torch.Tensor, sampling: RowSampling, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Next token per row: argmax where temperature is 0, otherwise inverse-CDF sampling from
    softmax(logits / temperature) restricted to the top_p nucleus. logits: [B, V]."""
    chosen = logits.argmax(dim=-1)
    if not sampling.any_sampled or uniforms is None:
        return chosen
    rows = (sampling.temperature > 0).nonzero().squeeze(1)
    probs = torch.softmax(logits[rows].float() / sampling.temperature[rows, None], dim=-1)
    top_p = sampling.top_p[rows]
    if sampling.any_top_p:
        probs, order = probs.sort(dim=-1, descending=True)
        # Keep a token while the mass before it is under top_p: the most likely token always stays.
        keep = (probs.cumsum(dim=-1) - probs) < top_p[:, None]
        probs = probs * keep
    else:
        order = None
    cdf = probs.cumsum(dim=-1)
    target = uniforms[rows, None] * cdf[:, -1:]
    picked = torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[-1] - 1)
    if order is not None:
        picked = order.gather(1, picked)
    chosen[rows] = picked.squeeze(1)
    return chosen


@dataclass(frozen=True)
class StepLogprobs:
    """Logprobs of one step for the rows that asked, on the CPU: rows index into the batch."""

    rows: list[int]
    chosen: list[float]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


def step_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top_k: list[int | None]) -> StepLogprobs | None:
    """Logprob of each chosen token and the top-k alternatives, from log_softmax of the raw
    logits (before temperature and top_p, as vLLM reports them by default). top_k[i] is None
    for a row that did not ask; 0 means the chosen token only."""
    rows = [i for i, k in enumerate(top_k) if k is not None]
    if not rows:
        return None
    index = torch.tensor(rows, device=logits.device)
    logprobs = torch.log_softmax(logits[index].float(), dim=-1)
    chosen_lp = logprobs.gather(1, chosen[index, None]).squeeze(1).tolist()
    k_max = max(top_k[i] or 0 for i in rows)
    if k_max == 0:
        empty: list[list[int]] = [[] for _ in rows]
        return StepLogprobs(rows, chosen_lp, empty, [[] for _ in rows])
    top_lp, top_ids = logprobs.topk(k_max, dim=-1)
    top_lp, top_ids = top_lp.tolist(), top_ids.tolist()
    ks = [top_k[i] or 0 for i in rows]
    return StepLogprobs(
        rows, chosen_lp, [ids[:k] for ids, k in zip(top_ids, ks)], [lp[:k] for lp, k in zip(top_lp, ks)]
    )
