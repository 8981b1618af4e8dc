"""Successive prompting's trained component, a known answer on the user's own path: synthetic
decompositions of the toy world (`orchestrate data synth-decompositions`), exported as QD
finetune rows (`orchestrate data export-finetune`), train `multihop-direct` (never shown a
decomposition step) in a sweep's `finetunes:`; the tuned decomposer then beats its untuned
self on held-out multi-hop questions, the gain's paired-bootstrap interval above 0 in
`orchestrate compare` (examples/decompose_trained.yaml, with half its held-out questions)."""
from __future__ import annotations

import io
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from orchestrator.cli import main
from tests.test_submit import ray_tmp  # noqa: F401 (a fixture)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
QUESTIONS = 45  # held-out questions per decomposer (the example audits 90)


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_decomposer_finetuned_on_synthetic_decompositions_beats_its_untuned_self(tmp_path, ray_tmp, monkeypatch):
    # The example's data, made again as its header says: the committed file is reproducible.
    synthetic, rows = tmp_path / "toy.json", tmp_path / "toyworld_decompositions.jsonl"
    invoke("data", "synth-decompositions", "--toyworld", "300", "--toyworld-answers", "sentence", "--seed", "1",
           "-o", str(synthetic))
    invoke("data", "export-finetune", str(synthetic), "--calls", "qd", "-o", str(rows))
    assert rows.read_text() == (EXAMPLES / "data" / "toyworld_decompositions.jsonl").read_text()

    sweep = tmp_path / "decompose_trained.yaml"
    text = (EXAMPLES / "decompose_trained.yaml").read_text()
    for old, new in (("output: results", f"output: {tmp_path / 'results'}"),
                     ("data: data/toyworld_decompositions.jsonl", f"data: {rows}"),
                     ("limit: 90", f"limit: {QUESTIONS}")):
        assert old in text, f"the example no longer says {old!r}"
        text = text.replace(old, new)
    sweep.write_text(text)
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    invoke("submit", str(sweep), "--no-progress")

    table = tmp_path / "gain.csv"
    invoke("compare", str(sweep), "--kind", "decompose", "--diff", "role.decomposer", "--baseline", "multihop-direct",
           "--measure", "f1", "--resamples", "1000", "--out", str(table))
    gains = pl.read_csv(table, infer_schema_length=None)
    print(gains)
    [gain] = gains.filter(pl.col("level") == "decomposer-tuned").to_dicts()
    assert gain["paired"] and gain["baseline"] == "multihop-direct", gain
    assert gain["diff"] >= 0.5 and gain["ci_lo"] > 0.3, f"the tuned decomposer should decompose: {gain}"
    # both decomposers met every held-out question: the pairing is over all of them
    rows = pl.read_csv(io.StringIO(invoke("results", str(sweep), "--kind", "decompose", "--rows", "--format", "csv")),
                       infer_schema_length=None)
    assert rows.height == 2 * QUESTIONS and rows["sample_id"].n_unique() == QUESTIONS, rows
