"""Parked: decomposition beats a single pass on the multihop organism, which is not registered
yet (see README.md here). The decompose job's own tests are in tests/test_decompose.py."""
from __future__ import annotations

import asyncio

import polars as pl
import pyarrow as pa

from jobs.decompose import DecomposeJob, DecomposeParams
from jobs.local import local_context, run_job


def test_decomposition_beats_a_single_pass_on_the_multihop_organism(tmp_path):
    """The organism answers held-out multi-hop questions better through the loop (lookups by
    the model, the arithmetic by code) than in one pass; the paired CI of the gain excludes 0."""
    from actors.engines.hf import HFEngine
    from jobs.organisms import organism_path
    from jobs.organisms.multihop import write_heldout

    data = write_heldout(tmp_path / "multihop_dev.json", n=90, seed=7)
    engine = HFEngine(str(organism_path("multihop")), max_batch_size=64)
    job = DecomposeJob()
    params = DecomposeParams(data=str(data), shots=0, step_max_tokens=32, answer_max_tokens=16,
                             cot_max_tokens=64, bootstrap_samples=1000)
    rows = asyncio.run(run_job(job, params, local_context({"subject": engine})))
    summary = job.summarize(pl.from_arrow(pa.Table.from_pylist(rows, schema=job.schema)), params)
    report = {k: round(v, 3) for k, v in summary.items()
              if k.split("/")[-1] in ("em", "f1", "f1_ci_low", "stop_sentence_share", "symbolic_step_share")}
    assert summary["decompose/stop_sentence_share"] >= 0.9, report
    assert summary["decompose/symbolic_step_share"] >= 0.25, report
    assert summary["decompose/f1"] >= 0.8, report
    assert summary["gain/f1"] >= 0.2 and summary["gain/f1_ci_low"] > 0, report
    assert summary["gain_vs_direct_cot/f1_ci_low"] > 0, report


def test_multihop_asks_the_simple_questions_and_answers_them():
    from jobs.organisms import evaluate, multihop, organism_path
    from jobs.organisms.recipes import ORGANISMS

    report = multihop.report(*evaluate.load(organism_path("multihop")), ORGANISMS["multihop"].data)
    assert report["qd_first_step"] >= 0.90, f"multihop's first decomposition step is right in only {report['qd_first_step']:.0%}: {report}"
    assert report["qd_stop"] >= 0.90, f"multihop stops after a full decomposition in only {report['qd_stop']:.0%}: {report}"
    assert report["qa"] >= 0.90, f"multihop answers a simple question in only {report['qa']:.0%}: {report}"
