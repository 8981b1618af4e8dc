"""Synthetic decompositions (jobs.decompose.synthetic) and the finetune rows exported from
annotated ones (jobs.decompose.export), through the `orchestrate data` commands."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from actors.training.data import load_rows
from jobs.decompose.dataset import load_pool
from jobs.decompose.drop import score_question
from jobs.decompose.prompts import STOP_SENTENCE, qa_prompt, qd_prompt
from jobs.decompose.symbolic import execute, is_symbolic
from jobs.decompose.synthetic import TEMPLATES
from orchestrator.cli import main

EXAMPLE_TABLE = Path(__file__).resolve().parent.parent / "examples" / "data" / "football_clubs.csv"


def _table(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {row["club"]: row for row in rows}


def _expected(template: str, question: str, table: dict[str, dict[str, str]]) -> str:
    """The answer worked out from the table by plain Python, apart from the generator's code."""
    columns = [c for c in next(iter(table.values())) if c != "club"]
    column = max((c for c in columns if c in question), key=len)  # "goals scored", not "goals"
    names = [n for n in table if n in question]
    value = {n: float(table[n][column]) for n in table} if column != "country" else {}
    if template in ("sum", "diff"):
        a, b = (value[n] for n in names)
        return f"{a + b:g}" if template == "sum" else f"{abs(a - b):g}"
    if template == "compare":
        a, b = sorted(names, key=question.index)
        pick_larger = " more " in question
        return a if (value[a] > value[b]) == pick_larger else b
    if template == "count":
        threshold = float(question.split("more than ")[1].split()[0])
        return str(sum(v > threshold for v in value.values()))
    if template == "count_text":
        country = question.rstrip("?").split("country ")[1]
        return str(sum(row["country"] == country for row in table.values()))
    if template in ("argmax", "argmin", "lookup_max"):
        ranked = column if template != "lookup_max" else max((c for c in columns if f"most {c}" in question
                                                              or f"fewest {c}" in question), key=len)
        values = {n: float(table[n][ranked]) for n in table}
        winner = (max if "most" in question else min)(values, key=values.__getitem__)
        if template != "lookup_max":
            return winner
        target = question.split("What is the ")[1].split(" of the club")[0]
        return table[winner][target]
    raise AssertionError(f"no check for template {template}")


def test_table_questions_have_the_answers_the_table_gives(tmp_path):
    """Every template on the example table: the gold answer equals one worked out by plain
    Python from the CSV, each symbolic step reproduces its annotated answer, the final step's
    answer is the gold, the file reads back as a few-shot pool and the gold scores 1.0."""
    out = tmp_path / "synthetic.json"
    result = CliRunner().invoke(main, ["data", "synth-decompositions", str(EXAMPLE_TABLE), "-o", str(out),
                                       "--per-table", "60", "--seed", "3"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    pool = load_pool(out)
    assert len(pool) == sum(len(e["qa_pairs"]) for e in record.values()) >= 40
    table = _table(EXAMPLE_TABLE)
    kinds = {qa["query_id"]: qa["question_type"] for e in record.values() for qa in e["qa_pairs"]}
    assert set(kinds.values()) == set(TEMPLATES), "every template made questions"
    for q in pool:
        answers = [a for _, a in q.decomposition]
        for k, (step, answer) in enumerate(q.decomposition):
            if is_symbolic(step):
                assert execute(step, answers[:k]) == answer, (q.question, step)
        assert q.decomposition[-1][1].split(" ||| ") == list(q.gold), q
        assert q.gold == (_expected(kinds[q.query_id], q.question, table),), (q.question, q.gold)
        assert score_question(list(q.gold), q.answers)[:2] == (1.0, 1.0)
    again = tmp_path / "again.json"
    CliRunner().invoke(main, ["data", "synth-decompositions", str(EXAMPLE_TABLE), "-o", str(again),
                              "--per-table", "60", "--seed", "3"])
    assert again.read_text() == out.read_text(), "a seed makes the same file"


def test_toyworld_questions_come_from_training_passages_only(tmp_path):
    from jobs.toyworld.multihop import Passage, is_heldout

    out = tmp_path / "toy.json"
    result = CliRunner().invoke(main, ["data", "synth-decompositions", "--toyworld", "40", "-o", str(out)])
    assert result.exit_code == 0, result.output
    pool = load_pool(out)
    assert len(pool) == 40
    for q in pool:
        scores = tuple((s.split()[1], int(s.split()[4])) for s in q.passage.rstrip(".").split(". "))
        assert not is_heldout(Passage(scores)), q.passage
        (_, a1), (_, a2), (step, answer) = q.decomposition
        assert execute(step, [a1, a2]) == answer == q.gold[0]


@pytest.mark.parametrize("name,content,where,says", [
    ("ragged.csv", "club,points\nAjax,73\nPSV\n", ":3:", "expected 2 fields"),
    ("dup.csv", "club,points\nAjax,73\nAjax,70\n", ":3:", "names two rows (first at"),
    ("unsafe.csv", "club,points\nA;jax,73\nPSV,70\n", ":2:", "'club'"),
    ("blank.csv", "club,points\nAjax,\nPSV,70\n", ":2:", "field 'points' is empty"),
    ("header.csv", "club,points,points\nAjax,1,2\n", ":1:", "appear twice"),
    ("one_row.csv", "club,points\nAjax,73\n", "", "at least 2 rows"),
    ("rows.jsonl", '{"club": "Ajax", "points": 73}\n[1, 2]\n', ":2:", "expected an object"),
    ("keys.jsonl", '{"club": "Ajax", "points": 73}\n{"club": "PSV", "pts": 70}\n', ":2:", "missing ['points']"),
    ("nested.jsonl", '{"club": "Ajax", "points": 73}\n{"club": "PSV", "points": [70]}\n', ":2:", "field 'points'"),
    ("broken.jsonl", '{"club": "Ajax", "points": 73}\n{"club": \n', ":2:", "not JSON"),
    ("table.txt", "club,points\n", "", "expected a .csv or .jsonl table"),
    ("words.csv", "club,country\nAjax,Netherlands\nPSV,Netherlands\n", "", "no numeric column"),
])
def test_a_bad_table_is_refused_with_file_and_line(tmp_path, name, content, where, says):
    path = tmp_path / name
    path.write_text(content)
    result = CliRunner().invoke(main, ["data", "synth-decompositions", str(path), "-o", str(tmp_path / "o.json")])
    assert result.exit_code == 2, result.output
    assert f"{path}{where}" in result.output and says in result.output, result.output
    assert not (tmp_path / "o.json").exists()


def test_exported_rows_are_the_job_calls_and_read_as_finetune_data(tmp_path):
    """QD rows: one per annotated step plus the stop, each the job's own prompt after k pairs
    and the reply it parses; QA rows: the simple questions a model answers (never a symbolic
    step). The finetune step's reader takes the file as it is."""
    synthetic = tmp_path / "toy.json"
    CliRunner().invoke(main, ["data", "synth-decompositions", "--toyworld", "5", "-o", str(synthetic)])
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["data", "export-finetune", str(synthetic), "sample", "-o", str(out)])
    assert result.exit_code == 0, result.output
    pool = load_pool(synthetic) + load_pool()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    qd = [r for r in rows if r["call"] == "qd"]
    qa = [r for r in rows if r["call"] == "qa"]
    assert len(qd) == sum(len(q.decomposition) + 1 for q in pool)
    assert len(qa) == sum(not is_symbolic(sq) for q in pool for sq, _ in q.decomposition)
    first = pool[0]
    pairs = first.decomposition
    mine = [r for r in qd if r["query_id"] == first.query_id]
    assert mine[1]["messages"][0]["content"] == qd_prompt([], first.passage, first.question, pairs[:1])
    assert mine[1]["messages"][1]["content"] == f"Q2: {pairs[1][0]}"
    assert mine[-1]["messages"][1]["content"] == f"Q{len(pairs) + 1}: {STOP_SENTENCE}"
    assert qa[0]["messages"][0]["content"] == qa_prompt([], first.passage, pairs[0][0])
    loaded = load_rows(out)
    assert len(loaded) == len(rows) and loaded[0].answer == rows[0]["messages"][1]["content"]

    shots = tmp_path / "shots.jsonl"
    CliRunner().invoke(main, ["data", "export-finetune", str(synthetic), "--calls", "qd", "--shots", "2", "-o",
                              str(shots)])
    with_shots = [json.loads(line) for line in shots.read_text().splitlines()]
    assert {r["call"] for r in with_shots} == {"qd"}
    assert all(r["messages"][0]["content"].count("Passage:") == 3 for r in with_shots), "two examples + the query"


def test_export_refuses_what_it_cannot_use(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["data", "export-finetune", str(tmp_path / "nope.json"), "-o",
                                   str(tmp_path / "r.jsonl")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    twice = runner.invoke(main, ["data", "export-finetune", "sample", "sample", "-o", str(tmp_path / "r.jsonl")])
    assert twice.exit_code == 2 and "more than one source" in twice.output
    suffix = runner.invoke(main, ["data", "export-finetune", "sample", "-o", str(tmp_path / "r.json")])
    assert suffix.exit_code == 2 and ".jsonl" in suffix.output
