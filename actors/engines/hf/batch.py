"""The running batch of the HF engine: rows decoding together over one KV cache.

Rows are left-padded so that every row's newest token sits in the last cache slot; each row
keeps its own attention mask and position ids, so padding changes nothing a row computes.
Keys are cached after rotary embedding, so a row's cache entries do not depend on the slot
they sit in: that is what lets new rows join a running batch (continuous batching). Their
prompts are prefilled on their own, the two caches are left-padded to one length and
concatenated along the batch. Finished rows are evicted and cache columns that no remaining
row attends to are trimmed.

Caches of other layer kinds (sliding windows, recurrent states) hold positions that cannot be
shifted this way: such a model decodes in plain dynamic batches, admitting rows only when the
previous batch is done.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from actors.engines.hf.sampling import (
    RowSampling,
    choose_tokens,
    draw_uniforms,
    step_logprobs,
)
from actors.engines.protocol import Completion, Sampling, TokenLogprob, TopLogprob

# forward(input_ids, attention_mask, position_ids, cache, adapters) -> logits of the last position [B, V]
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DynamicCache, list[str | None]], torch.Tensor]

ABORTED = "aborted"  # internal finish reason: the caller went away, nothing to report


@dataclass(eq=False)
class Row:
    """One sequence being generated: sample `index` of the request held by `owner`."""

    prompt_ids: list[int]
    sampling: Sampling
    adapter: str | None
    generator: torch.Generator | None  # None for greedy rows
    owner: Any
    index: int
    token_ids: list[int] = field(default_factory=list)
    # per generated token: (logprob of the chosen token, top ids, top logprobs)
    logprobs: list[tuple[float, list[int], list[float]]] = field(default_factory=list)
    finish_reason: str | None = None
    stopped_by: str | None = None  # the stop string that ended the row, if any

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Finisher:
    """Decides when a row is complete (an end-of-sequence id, a stop string, or max_tokens)
    and what it reports then."""

    eos_ids: frozenset[int]
    strip_ids: frozenset[int]  # ids never shown in text (eos, pad)
    decode: Callable[[list[int]], str]
    _token_text: dict[int, str] = field(default_factory=dict)

    def accept(self, row: Row, token: int) -> None:
        row.token_ids.append(token)
        if token in self.eos_ids:
            row.finish_reason = "stop"
        elif row.sampling.stop and (hit := self._stop_hit(row)) is not None:
            row.finish_reason, row.stopped_by = "stop", hit
        elif len(row.token_ids) >= row.sampling.max_tokens:
            row.finish_reason = "length"

    def _stop_hit(self, row: Row) -> str | None:
        # A stop string of b bytes spans at most b tokens (every token is at least one byte),
        # plus one whose leading bytes may belong to an unfinished character: decoding that
        # tail suffices, since an earlier occurrence would have ended the row earlier.
        stops = [s for s in row.sampling.stop if s]
        if not stops:
            return None
        window = max(len(s.encode()) for s in stops) + 2
        tail = self.decode([t for t in row.token_ids[-window:] if t not in self.strip_ids])
        return next((s for s in stops if s in tail), None)

    def completion(self, row: Row) -> Completion:
        # Special tokens such as <think> stay in the text (reasoning parsing needs them); only
        # end-of-sequence and padding ids are dropped.
        text = self.decode([t for t in row.token_ids if t not in self.strip_ids])
        if row.stopped_by is not None and (cut := text.find(row.stopped_by)) >= 0:
            text = text[:cut]
        logprobs = None
        if row.sampling.logprobs is not None:
            logprobs = tuple(
                TokenLogprob(
                    token=self._token(token), logprob=chosen,
                    top=tuple(TopLogprob(token=self._token(t), logprob=lp) for t, lp in zip(top_ids, top_lps)),
                )
                for token, (chosen, top_ids, top_lps) in zip(row.token_ids, row.logprobs)
            )
        return Completion(
            text=text, prompt_tokens=len(row.prompt_ids), completion_tokens=len(row.token_ids),
            finish_reason=row.finish_reason, logprobs=logprobs,
        )

    def _token(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.decode([token_id])
        return text


class RunningBatch:
    """Rows decoding together. Not thread-safe: the engine calls it from one worker at a time."""

    def __init__(self, forward: Forward, new_cache: Callable[[], DynamicCache], finisher: Finisher,
                 pad_id: int, device: torch.device) -> None:
        self._forward, self._new_cache, self._finisher = forward, new_cache, finisher
        self._pad_id, self._device = pad_id, device
        self.reset()

    def reset(self) -> None:
        self.rows: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [B, T] bool: where a cache slot holds a real token
        self._positions: torch.Tensor | None = None  # [B]: position id of each row's next input
        self._next: torch.Tensor | None = None  # [B]: each row's next input token
        self._sampling: RowSampling | None = None
        self.mergeable = True

    @property
    def live(self) -> int:
        return sum(not r.done for r in self.rows)

    def can_admit(self) -> bool:
        return not self.rows or self.mergeable

    def admit(self, rows: list[Row]) -> list[Row]:
        """Prefill `rows`, choose their first tokens and join them to the batch. Returns the
        rows that finished on that first token."""
        assert self.can_admit(), "rows may join a running batch only when its cache can be merged"
        assert rows, "admit needs at least one row"
        # Samples of one request share their prompt: prefill each distinct prompt once and
        # copy its cache rows (the n=100 sampling protocols would otherwise prefill 100 times).
        distinct: dict[tuple[str | None, tuple[int, ...]], int] = {}
        source = [distinct.setdefault((r.adapter, tuple(r.prompt_ids)), len(distinct)) for r in rows]
        prompts = [(adapter, list(ids)) for adapter, ids in distinct]
        width = max(len(ids) for _, ids in prompts)
        input_ids = torch.tensor(
            [[self._pad_id] * (width - len(ids)) + ids for _, ids in prompts], dtype=torch.long, device=self._device
        )
        filled = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for _, ids in prompts], dtype=torch.long, device=self._device
        )
        position_ids = (filled.cumsum(-1) - 1).clamp_(min=0)
        mask_t = filled.bool()
        cache = self._new_cache()
        logits = self._forward(input_ids, mask_t, position_ids, cache, [adapter for adapter, _ in prompts])
        if len(prompts) < len(rows):
            index = torch.tensor(source, dtype=torch.long, device=self._device)
            cache.batch_select_indices(index)
            logits, mask_t = logits.index_select(0, index), mask_t.index_select(0, index)
        sampling = _sampling_of(rows, self._device)
        tokens, finished = self._choose(rows, logits, sampling)
        positions = torch.tensor([len(r.prompt_ids) for r in rows], dtype=torch.long, device=self._device)
        self._merge(rows, cache, mask_t, positions, tokens)
        return finished

    def step(self) -> list[Row]:
        """One decode step for every row. Returns the rows that finished on it."""
        assert (self._cache is not None and self._mask is not None and self._positions is not None
                and self._next is not None and self._sampling is not None), "step needs admitted rows"
        ones = torch.ones((len(self.rows), 1), dtype=torch.bool, device=self._device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        logits = self._forward(
            self._next[:, None], self._mask, self._positions[:, None], self._cache, [r.adapter for r in self.rows]
        )
        self._positions = self._positions + 1
        self._next, finished = self._choose(self.rows, logits, self._sampling)
        return finished

    def abort(self, should_abort: Callable[[Row], bool]) -> int:
        """End the rows whose caller went away; returns how many."""
        aborted = 0
        for row in self.rows:
            if not row.done and should_abort(row):
                row.finish_reason = ABORTED
                aborted += 1
        return aborted

    def compact(self, force: bool = False) -> None:
        """Evict finished rows once they are a quarter of the batch (or on `force`): each
        eviction copies the cache, about the cost of one step's attention reads."""
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if not keep:
            self.reset()
            return
        dead = len(self.rows) - len(keep)
        if dead == 0 or not self.mergeable or not (force or dead * 4 >= len(self.rows)):
            return
        assert (self._cache is not None and self._mask is not None and self._positions is not None
                and self._next is not None), "rows without a batch"
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        mask = self._mask.index_select(0, index)
        # Leading columns that no remaining row attends to are padding for everyone: drop them.
        first = int(mask.any(dim=0).nonzero()[0])
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self._mask = mask[:, first:]
        self._positions = self._positions.index_select(0, index)
        self._next = self._next.index_select(0, index)
        self.rows = [self.rows[i] for i in keep]
        self._sampling = _sampling_of(self.rows, self._device)

    def _choose(self, rows: list[Row], logits: torch.Tensor, sampling: RowSampling) -> tuple[torch.Tensor, list[Row]]:
        generators = [r.generator if not r.done and r.sampling.temperature > 0 else None for r in rows]
        chosen = choose_tokens(logits, sampling, draw_uniforms(generators, self._device))
        lps = step_logprobs(logits, chosen, [None if r.done else r.sampling.logprobs for r in rows])
        if lps is not None:
            for j, i in enumerate(lps.rows):
                rows[i].logprobs.append((lps.chosen[j], lps.top_ids[j], lps.top_logprobs[j]))
        finished: list[Row] = []
        for row, token in zip(rows, chosen.tolist()):
            if not row.done:
                self._finisher.accept(row, token)
                if row.done:
                    finished.append(row)
        return chosen, finished

    def _merge(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor,
               tokens: torch.Tensor) -> None:
        if self._cache is None:
            self._cache, self._mask, self._positions, self._next = cache, mask, positions, tokens
            self.rows = list(rows)
            self.mergeable = all(type(layer) is DynamicLayer for layer in cache.layers)
        else:
            assert self._mask is not None and self._positions is not None and self._next is not None
            width = max(self._mask.shape[1], mask.shape[1])
            for old, new in zip(self._cache.layers, cache.layers):
                old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], dim=0)
                old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)], dim=0)
            self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)], dim=0)
            self._positions = torch.cat([self._positions, positions])
            self._next = torch.cat([self._next, tokens])
            self.rows = self.rows + list(rows)
        self._sampling = _sampling_of(self.rows, self._device)


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the sequence axis on the left to `width`: axis 2 of [B, H, T, D] keys/values
    or axis 1 of a [B, T] mask. Zeros (False) are safe in the cache: the mask hides them."""
    axis = 2 if t.dim() == 4 else 1
    missing = width - t.shape[axis]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)


def _sampling_of(rows: list[Row], device: torch.device) -> RowSampling:
    return RowSampling.of([r.sampling.temperature for r in rows], [r.sampling.top_p for r in rows], device)
