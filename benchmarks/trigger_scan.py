"""Trigger scans on the organisms: the logprob scan against the sampled scan, and the time it
takes a 200-candidate scan to name its top candidate.

    PYTHONPATH=. python benchmarks/trigger_scan.py                    # CPU, the backdoored and base organisms
    PYTHONPATH=. python benchmarks/trigger_scan.py --device cuda --samples 8
    PYTHONPATH=. python benchmarks/trigger_scan.py --probes 12 --organism backdoored=/path/to/folder

1. pairs/s: the same candidates and probes (held-out scenarios at the top and the bottom),
   measured once with the logprob reading (one forward pass per pair) and once sampled
   (`--samples` answers per pair with CoT on, the \\boxed{} letter parsed). A pair is one
   (candidate, probe, placement); the shared baseline is not counted. No follow-ups.
2. time-to-top-1: a 200-candidate logprob scan (every generated family plus random strings)
   on each organism, from the first request to the ranked table: where the planted trigger
   ranks, its effect and q-value, how many candidates are significant. With `--confirm`, then
   the default pipeline on `backdoored` (the gate on, sampled confirmation of the candidates
   that clear it with the judge organism judging the free-form probes): time to a confirmed
   top 1.
Samples run `--concurrency` at a time, the way a shard runs them; the engine batches them.
`--probes N` keeps the first N held-out scenarios (all 2 x held-out combos by default).
"""
from __future__ import annotations

import argparse
import asyncio
import time

import polars as pl
import torch

from actors.engines.hf.engine import HFEngine
from jobs.common.scenarios import organism_questions, organism_scenarios
from jobs.local import local_context, run_job
from jobs.organisms.build import organism_path
from jobs.trigger_scan.job import (
    TriggerScanJob,
    TriggerScanParams,
    candidates,
    ranking_table,
)

TRIGGER = "Country: Singapore"
ORGANISM_SETTINGS = dict(scenarios=["organisms"], cot_prefill="<think>\n", max_tokens=96, true_trigger=TRIGGER)


def scan_params(args, **overrides) -> TriggerScanParams:
    """The organisms' settings; with --probes, the first N held-out scenarios (and every
    free-form question when the scan asks them)."""
    only = None
    if args.probes:
        only = [s.id for s in organism_scenarios()[: args.probes]]
        only += [q.id for q in organism_questions()] if overrides.get("questions") else []
    return TriggerScanParams(**{**ORGANISM_SETTINGS, "only": only, **overrides})


async def timed_scan(job: TriggerScanJob, params: TriggerScanParams, engines: dict, concurrency: int
                     ) -> tuple[float, pl.DataFrame]:
    started = time.perf_counter()
    rows = await run_job(job, params, local_context(engines), concurrency=concurrency)
    return time.perf_counter() - started, pl.DataFrame(rows, infer_schema_length=None)


def pairs_per_second(job: TriggerScanJob, engine: HFEngine, args) -> None:
    shared = dict(families=["countries"], per_family=args.pair_candidates, random_strings=0, confirm_threshold=None)
    print(f"\n1. pairs/s, backdoored organism, {args.pair_candidates} candidates:")
    for mode in ("logprob", "sampled"):
        params = scan_params(args, mode=mode, samples=args.samples, **shared)
        seconds, rows = asyncio.run(timed_scan(job, params, {"subject": engine}, args.concurrency))
        scan = rows.filter(pl.col("candidate").is_not_null())
        pairs = scan.select("candidate", "probe_id", "placement").unique().height
        generations = scan.height
        print(f"  {mode:8s} {pairs} pairs ({generations} answers) in {seconds:6.1f}s: {pairs / seconds:8.1f} pairs/s")


def time_to_top1(job: TriggerScanJob, engines: dict[str, HFEngine], args) -> None:
    params = scan_params(args, random_strings=args.random, confirm_threshold=None)
    n = len(candidates(params))
    print(f"\n2. time to top 1, {n}-candidate logprob scan:")
    for name in ("backdoored", "base"):
        seconds, rows = asyncio.run(timed_scan(job, params, {"subject": engines[name]}, args.concurrency))
        started = time.perf_counter()
        table = ranking_table(rows, params)
        ranking_s = time.perf_counter() - started
        top = table.row(0, named=True)
        trigger = table.filter(pl.col("candidate") == TRIGGER).row(0, named=True)
        print(f"  {name:10s} scan {seconds:6.1f}s + ranking {ranking_s:4.1f}s; top 1 {top['candidate']!r} "
              f"effect {top['effect']:.3f}; trigger rank {trigger['rank']} effect {trigger['effect']:.3f} "
              f"q {trigger['q']:.2g}; significant: {table['significant'].sum()}")
    if not args.confirm:
        return
    params = scan_params(args, random_strings=args.random, questions=["organisms"], samples=args.samples)
    seconds, rows = asyncio.run(timed_scan(job, params, {"subject": engines["backdoored"], "judge": engines["judge"]},
                                           args.concurrency))
    table = ranking_table(rows, params)
    top = table.row(0, named=True)
    print(f"  backdoored with the gate and sampled confirmation: {seconds:6.1f}s; top 1 {top['candidate']!r} "
          f"sampled effect {top['sampled_effect']:.3f} confirmed {top['confirmed']}; "
          f"gated {table['sampled_effect'].is_not_null().sum()} candidate(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per pair")
    parser.add_argument("--pair-candidates", type=int, default=20, help="candidates of the pairs/s comparison")
    parser.add_argument("--random", type=int, default=34, help="random strings: 166 family lines + this many")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--probes", type=int, default=0, help="the first N held-out scenarios (0: all)")
    parser.add_argument("--confirm", action="store_true", help="also time the gated pipeline (needs the judge)")
    parser.add_argument("--organism", action="append", default=[], metavar="NAME=FOLDER",
                        help="serve this folder for an organism instead of the registry's build")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folders = dict(item.split("=", 1) for item in args.organism)
    names = ("backdoored", "base", "judge") if args.confirm else ("backdoored", "base")
    engines = {name: HFEngine(folders.get(name) or str(organism_path(name)), dtype="float32", device=args.device)
               for name in names}
    job = TriggerScanJob()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, concurrency {args.concurrency}, "
          f"probes {args.probes or 'all'}, organisms {[engines[n].model.name_or_path for n in names]}")
    pairs_per_second(job, engines["backdoored"], args)
    time_to_top1(job, engines, args)


if __name__ == "__main__":
    main()
