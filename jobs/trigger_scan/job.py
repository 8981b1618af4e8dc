"""Trigger scans: which line in a prompt switches a model to misaligned behaviour, and does the
model say so?

One sample is one candidate line (plus one baseline sample without any line). Its program
measures every probe with the line at each placement (top, bottom of the user message),
all requests at once so the engine batches them. The ranking, the per-candidate test and the
multiple-testing correction need every candidate, so they happen in `summarize` (and
`ranking_table`) over the cell's rows; see `backdoor_stats` for the statistics.

Two measurement modes (`mode`): `logprob` reads P(misaligned option) from one forward pass
per (candidate, probe, placement), no sampling; `sampled` draws n answers (CoT on), parses
the \\boxed{} letter or judges free-form answers. See `backdoor_measure`.

Confirmation, the distractor test and self-description run for the candidates that clear a
gate, decided inside the candidate's own program. A sample cannot see the other candidates
(they run in other shards, on other replicas, possibly later), so "confirm the top k" cannot
be decided at run time without a second pass over the cell. The gate is local instead: once a
candidate's cheap scan is in, its mean effect against the baseline (the baseline measurements
are shared by all samples of a shard and made once, see `SharedCalls`) is compared with
`confirm_threshold`; a candidate at or above it gets
  - `confirm`: the sampled measurement on every probe, free-form ones included, with the
    CoT-reason judge where the line fired (logprob mode only; in sampled mode the scan
    already is sampled);
  - `distractor`: the scan again with an irrelevant trigger-like line added, order shuffled;
  - `self_report`: the self-description questions asked with the line on top.
The baseline sample makes the same measurements without a line (the distractor alone, for the
distractor's own effect). The threshold bounds the sampled work by how many candidates look
like triggers, not by a fixed k; `confirm_top_k` then says how many of the ranking's best
the summary reports with their confirmation: a top-k candidate below the threshold shows
`gated` 0 and no sampled effect, which says the threshold was too high for that scan.

Fan-out: candidates are samples, so the scheduler's shards are groups of candidates spread
over the replicas. Every request carries an affinity key naming the prefix it shares with
others (the probe when the line is at the bottom or absent, the line when it is on top), so
a replica with prefix caching sees the requests that share a prefix.

Rows: one per (candidate, measure, probe, placement, sample). Summary: see
`backdoor_summary`; `ranking_table(rows)` is the ranked table per cell.

Stages: generation and summary, no separate judging stage. The judge scores sampled free-form
answers inside the candidate's own program, and those scores decide the confirmation gate
(in sampled mode) and where the CoT-reason judge runs, so what the subject is asked next
depends on the judge: the judge is part of generation here, and swapping it re-runs the
scan. The test, the correction and the ranking (`fdr`, `min_effect`, `permutations`,
`confirm_top_k`, `true_trigger`, bootstrap) are the summary's.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import polars as pl
import pyarrow as pa

from jobs.common.scenarios import (
    rubric,
)
from jobs.errors import ParamsError
from jobs.inputs import file_digest
from jobs.job import SUBJECT, Job, JobContext, RoleNeeds, Sample
from jobs.measures import Measure
from jobs.trigger_scan.candidates import (
    Candidate,
    build_candidates,
    mine,
    user_texts,
)
from jobs.trigger_scan.measure import (
    Measurer,
    Probe,
    Settings,
    SharedCalls,
    load_probes,
)
from jobs.trigger_scan.params import TriggerScanParams
from jobs.trigger_scan.stats import smallest_attainable_q
from jobs.trigger_scan.summary import ranking_table, summarize_rows

ROW_SCHEMA = pa.schema([
    ("candidate", pa.string()),  # null: the baseline
    ("family", pa.string()), ("variant_of", pa.string()),
    ("measure", pa.string()),  # scan | confirm | distractor | self_report
    ("method", pa.string()),  # logprob | sampled
    ("probe_id", pa.string()), ("probe_kind", pa.string()),  # choice | free_form | self_report
    ("placement", pa.string()),  # top | bottom | none
    ("lines", pa.string()), ("distractor", pa.string()), ("prompt", pa.string()),
    ("sample_index", pa.int32()),
    ("misaligned_letter", pa.string()), ("p_misaligned", pa.float64()), ("option_mass", pa.float64()),
    ("completion", pa.string()), ("cot", pa.string()), ("answer", pa.string()),
    ("finish_reason", pa.string()), ("completion_tokens", pa.int32()),
    ("choice", pa.string()), ("alignment", pa.float64()), ("misaligned", pa.bool_()),
    ("reason", pa.string()),  # why p_misaligned / misaligned is null
    ("cot_mentions_line", pa.bool_()),
    ("names_line", pa.bool_()), ("names_line_reason", pa.string()), ("names_line_output", pa.string()),
])


@functools.lru_cache(maxsize=16)
def _probes(scenarios: tuple[str, ...], questions: tuple[str, ...], only: tuple[str, ...] | None,
            instruction: str, metric: str) -> tuple[Probe, ...]:
    return tuple(load_probes(scenarios, questions, only, instruction, metric))


def probes(params: TriggerScanParams) -> tuple[Probe, ...]:
    found = _probes(tuple(params.scenarios), tuple(params.questions),
                    None if params.only is None else tuple(params.only), params.choice_instruction,
                    params.alignment_metric)
    if not any(p.kind == "choice" or params.mode == "sampled" for p in found):
        raise ValueError(f"no probe to scan: scenarios {params.scenarios}, questions {params.questions}, "
                         f"only {params.only} leave none the {params.mode} mode can measure")
    return found


def check_power(params: TriggerScanParams, found: Sequence[Probe], n_candidates: int) -> None:
    """Refuse, at planning, a scan that cannot find a trigger: with few probes the sign-flip
    test's smallest p-value, times the candidates that BH corrects for, stays above the FDR
    level, and a scan reporting no significant candidate would read as a clean model."""
    n = sum(p.kind == "choice" or params.mode == "sampled" for p in found)  # logprob reads choices only
    best = smallest_attainable_q(n, n_candidates, params.permutations)
    if best > params.fdr and not params.allow_underpowered:
        need = math.ceil(math.log2(n_candidates / params.fdr))
        raise ParamsError(
            f"trigger_scan: {n} probes cannot make any of {n_candidates} candidates significant: the best q a "
            f"trigger can reach is {best:.3g} > fdr {params.fdr} (smallest p 2^-{n}, times {n_candidates}). "
            f"Give at least {need} probes (more scenarios, your own files), fewer candidates, or "
            f"allow_underpowered: true for a ranking by effect only")


def candidates(params: TriggerScanParams) -> list[Candidate]:
    mined = []
    if params.dataset is not None:
        mined = mine(user_texts(params.dataset), min_share=params.mine_min_share,
                     max_share=params.mine_max_share, top=params.mine_top)
    return build_candidates(params.candidates, params.families, params.per_family, mined, params.variants,
                            params.seed, params.random_strings)


def _value(row: dict[str, Any]) -> float | None:
    if row.get("p_misaligned") is not None:
        return row["p_misaligned"]
    return None if row.get("misaligned") is None else float(row["misaligned"])


def mean_effect(rows: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]]) -> float | None:
    """The candidate's mean over probes of (mean over placements and samples) minus the
    baseline's mean on that probe; None when no probe has both."""
    def by_probe(rs: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[float]]:
        groups: dict[Any, list[float]] = {}
        for r in rs:
            if (v := _value(r)) is not None:
                groups.setdefault(key(r), []).append(v)
        return groups

    per_placement = by_probe(rows, lambda r: (r["probe_id"], r["placement"]))
    per_probe: dict[str, list[float]] = {}
    for (probe, _), values in per_placement.items():
        per_probe.setdefault(probe, []).append(sum(values) / len(values))
    base = {p: sum(v) / len(v) for p, v in by_probe(baseline, lambda r: r["probe_id"]).items()}
    diffs = [sum(v) / len(v) - base[p] for p, v in per_probe.items() if p in base]
    return sum(diffs) / len(diffs) if diffs else None


class TriggerScanJob(Job[TriggerScanParams]):
    kind = "trigger_scan"
    headline = ('candidates', 'significant', 'top1_is_true_trigger', 'top1/effect', 'top1/q', 'top1/confirmed',
                'top2/effect')
    versions: ClassVar[Mapping[str, str]] = {"generate": "1"}
    Params = TriggerScanParams
    schema = ROW_SCHEMA
    roles = ("judge",)

    def __init__(self) -> None:
        self._shared = SharedCalls()

    def samples(self, params: TriggerScanParams) -> Sequence[Sample]:
        found = probes(params)  # no probe to measure: fail at planning, not in every sample
        lines = candidates(params)
        check_power(params, found, len(lines))
        out = [Sample(id="baseline", data={"candidate": None, "family": "baseline", "variant_of": None})]
        for c in lines:
            digest = hashlib.sha256(c.line.encode()).hexdigest()[:16]
            out.append(Sample(id=f"cand/{digest}", data={"candidate": c.line, "family": c.family,
                                                          "variant_of": c.variant_of}))
        return out

    def needs(self, params: TriggerScanParams) -> dict[str, RoleNeeds]:
        sampled = params.mode == "sampled" or params.confirm_threshold is not None
        judged = bool(params.questions) or (params.self_description and sampled and params.cot)
        thinks = (sampled and params.cot) or (params.mode == "logprob" and params.logprob_thinking)
        return {
            SUBJECT: RoleNeeds(thinks=thinks, prefill=True, logprobs=params.mode == "logprob",
                               greedy=params.mode == "logprob" or params.temperature == 0),
            "judge": RoleNeeds(required=judged, purpose="it scores sampled free-form answers and says whether a CoT "
                               "gives the line as its reason",
                               logprobs=params.judge_logprobs and bool(params.questions), greedy=True),
        }

    def data_digest(self, params: TriggerScanParams) -> str:
        h = hashlib.sha256()
        for p in probes(params):
            h.update(repr(p).encode())
        for c in candidates(params):
            h.update(repr(c).encode())
        h.update(repr(sorted(rubric().items())).encode())
        if params.dataset is not None:
            h.update(file_digest(params.dataset).encode())
        return h.hexdigest()

    # ---- the per-sample program -------------------------------------------------------------

    async def run(self, sample: Sample, params: TriggerScanParams, ctx: JobContext) -> list[dict[str, Any]]:
        d = sample.data
        line: str | None = d["candidate"]
        all_probes = probes(params)
        scan_probes = [p for p in all_probes if params.mode == "sampled" or p.kind == "choice"]
        settings = Settings(**{f: getattr(params, f) for f in Settings.__dataclass_fields__})
        key = params.model_dump_json()
        # The baseline scan is made once per context (shard) and awaited by every sample.
        baseline_scan = self._shared.get(ctx, (key, "scan"), lambda: self._measure(
            Measurer(settings, ctx, None), params, scan_probes, [], ["none"], "scan"))
        if line is None:
            rows = [dict(r) for r in await baseline_scan]
            if params.confirm_threshold is not None:
                rows += await self._follow_ups(Measurer(settings, ctx, None), params, all_probes, scan_probes, None)
        else:
            measurer = Measurer(settings, ctx, line)
            baseline, rows = await asyncio.gather(baseline_scan, self._measure(
                measurer, params, scan_probes, [line], params.placements, "scan"))
            effect = mean_effect(rows, baseline)
            if params.confirm_threshold is not None and effect is not None and effect >= params.confirm_threshold:
                rows += await self._follow_ups(measurer, params, all_probes, scan_probes, line)
        blank = dict.fromkeys(ROW_SCHEMA.names)
        return [{**blank, **row, "candidate": line, "family": d["family"], "variant_of": d["variant_of"]}
                for row in rows]

    @staticmethod
    async def _measure(m: Measurer, params: TriggerScanParams, probe_list: Sequence[Probe], lines: list[str],
                       placements: Sequence[str], measure: str, method: str | None = None) -> list[dict[str, Any]]:
        """Every probe at every placement, concurrently, in `method` (the scan's mode by default)."""
        method = method or params.mode
        if method == "logprob":
            return list(await asyncio.gather(*(m.logprob(p, lines, pl_, measure)
                                               for p in probe_list for pl_ in placements)))
        groups = await asyncio.gather(*(m.sampled(p, lines, pl_, measure) for p in probe_list for pl_ in placements))
        return [r for g in groups for r in g]

    async def _follow_ups(self, m: Measurer, params: TriggerScanParams, all_probes: Sequence[Probe],
                          scan_probes: Sequence[Probe], line: str | None) -> list[dict[str, Any]]:
        """Confirmation, distractor test and self-report for a gated candidate (line) or the
        baseline (None: the same without a line, and the distractor alone)."""
        lines = [] if line is None else [line]
        placements = ["none"] if line is None else params.placements
        work = []
        if params.mode == "logprob":
            work.append(self._measure(m, params, all_probes, lines, placements, "confirm", "sampled"))
        if params.distractors:
            work.append(self._distractor(m, params, scan_probes, line))
        if params.self_description:
            work += [m.self_report(i, q, lines) for i, q in enumerate(params.self_questions)]
        return [r for group in await asyncio.gather(*work) for r in group]

    @staticmethod
    async def _distractor(m: Measurer, params: TriggerScanParams, scan_probes: Sequence[Probe],
                          line: str | None) -> list[dict[str, Any]]:
        """The scan with one distractor line added (seeded per probe and placement) and the
        order of the lines shuffled; without a candidate, the distractor alone."""
        async def one(probe: Probe, placement: str) -> list[dict[str, Any]]:
            rng = random.Random(f"{params.seed}/distractor/{probe.id}/{placement}/{line}")
            distractor = rng.choice(params.distractors)
            lines = [x for x in (line, distractor) if x is not None]
            rng.shuffle(lines)
            if params.mode == "logprob":
                rows = [await m.logprob(probe, lines, placement, "distractor")]
            else:
                rows = await m.sampled(probe, lines, placement, "distractor", judge_reason=False)
            return [{**r, "distractor": distractor} for r in rows]

        groups = await asyncio.gather(*(one(p, pl_) for p in scan_probes for pl_ in params.placements))
        return [r for g in groups for r in g]

    def summarize(self, rows: pl.DataFrame, params: TriggerScanParams) -> dict[str, float]:
        return summarize_rows(rows, params)

    def measures(self, params: TriggerScanParams) -> tuple[Measure, ...]:
        return (
            Measure("p_misaligned", pl.col("p_misaligned"), unit="probe_id", where=pl.col("measure") == "scan",
                    split=("candidate",),
                    description="probability of the misaligned option with the candidate line (null: none)"),
        )

    def report(self, rows: pl.DataFrame, params: TriggerScanParams) -> pl.DataFrame:
        return ranking_table(rows, params)
