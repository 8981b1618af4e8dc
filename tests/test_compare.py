"""`orchestrate compare`: intervals that mean what they say (coverage, pairing, replicas), and
on real sweeps of the organisms, the known differences found with the right sign and width:
the backdoor's trigger gap, faithful against decoupled reasoning, a shorter token budget
across two sweeps; and sweeps that cannot be compared said so."""
from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.compare.intervals import Pooled, Resampler
from tests.report_sweeps import PROMPTS, run


def pooled(values: np.ndarray, rate: bool = False, unit_names: list[str] | None = None) -> Pooled:
    """cells x units of one value each (s = value, n = 1)."""
    cells, units = values.shape
    names = unit_names or [f"u{i:03d}" for i in range(units)]
    return Pooled(tuple(f"c{i}" for i in range(cells)), tuple(names), values.astype(float), np.ones_like(values,
                  dtype=float), rate)


def test_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    """Clustered data (a random effect per unit): the unit bootstrap's interval holds the
    true mean in roughly 95% of repeated experiments; a broken resampler (too narrow, too
    wide) lands outside."""
    rng = np.random.default_rng(1)
    hits, runs = 0, 300
    for r in range(runs):
        unit_effect = rng.normal(0.0, 1.0, size=30)
        values = unit_effect[None, :] + rng.normal(0.0, 0.5, size=(1, 30))
        lo, hi = Resampler(draws=1000, seed=r).mean_ci(pooled(values))
        hits += lo <= 0.0 <= hi
    assert 0.88 <= hits / runs <= 0.99, hits / runs


def test_replicates_that_disagree_widen_the_interval():
    """Three seeds of one condition whose means differ: resampling the seeds as well as the
    units gives a wider interval than pretending the rows came from one run."""
    rng = np.random.default_rng(0)
    values = np.stack([rng.normal(m, 0.1, size=40) for m in (0.2, 0.5, 0.8)])
    three = Resampler(draws=2000).mean_ci(pooled(values))
    one = Resampler(draws=2000).mean_ci(pooled(values.reshape(1, -1)))
    assert (three[1] - three[0]) > 2 * (one[1] - one[0]), (three, one)


def test_a_paired_difference_is_narrower_than_an_unpaired_one():
    """Two arms over the same questions, with a large per-question spread and a small
    constant effect: pairing cancels the spread, so the interval excludes 0; the same numbers
    treated as independent samples do not."""
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1.0, size=(1, 40))
    a, b = pooled(base + 0.2), pooled(base)
    paired = Resampler().difference_ci(a, b)
    unpaired = Resampler().difference_ci(a, pooled(base, unit_names=[f"v{i:03d}" for i in range(40)]))
    assert paired[0] > 0.15 and paired[1] < 0.25, paired
    assert unpaired[0] < 0 < unpaired[1], unpaired


def test_a_rate_of_zero_keeps_an_honest_width():
    lo, hi = Resampler().mean_ci(pooled(np.zeros((1, 16)), rate=True))
    assert lo == 0 and 0.15 < hi < 0.25, (lo, hi)  # Wilson over 16 units: [0, 0.194]


def compare_csv(tmp_path, *args: str) -> pl.DataFrame:
    out = tmp_path / "table.csv"
    result = CliRunner().invoke(main, ["compare", *args, "--resamples", "500", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return pl.read_csv(out, infer_schema_length=None)


def row(table: pl.DataFrame, **keys: str) -> dict:
    rows = table.filter(*[pl.col(k) == v for k, v in keys.items()])
    assert rows.height == 1, (keys, rows)
    return rows.row(0, named=True)


def test_the_backdoors_trigger_gap_is_found_paired(every_kind_sweep, tmp_path):
    _, store = every_kind_sweep
    diffs = compare_csv(tmp_path, str(store.root), "--kind", "misalignment", "--measure", "misaligned",
                        "--diff", "arm")
    backdoored = row(diffs, model="backdoored", level="trigger")
    assert backdoored["baseline"] == "none" and backdoored["paired"], backdoored
    assert backdoored["diff"] > 0.4 and backdoored["ci_lo"] > 0.2, backdoored
    base = row(diffs, model="base", level="trigger")
    assert base["ci_lo"] <= 0 <= base["ci_hi"] and abs(base["diff"]) < 0.15, base


def test_faithful_and_decoupled_reasoning_differ_in_rho(every_kind_sweep, tmp_path):
    """The decoupled organism ignores its CoT (interventions leave the answer: rho high), the
    faithful one uses it."""
    _, store = every_kind_sweep
    diffs = compare_csv(tmp_path, str(store.root), "--kind", "ariadne", "--measure", "rho", "--measure", "phi",
                        "--diff", "model", "--baseline", "faithful")
    rho = row(diffs, measure="rho", level="decoupled")
    assert rho["diff"] > 0.5 and rho["ci_lo"] > 0.2 and rho["paired"], rho
    phi = row(diffs, measure="phi", level="decoupled")
    assert phi["diff"] < -0.5 and phi["ci_hi"] < 0, phi


def test_seeds_are_pooled_unless_asked_for(every_kind_sweep, tmp_path):
    _, store = every_kind_sweep
    means = compare_csv(tmp_path, str(store.root), "--kind", "generate", "--measure", "completion_tokens")
    assert means.height == 1 and row(means, model="faithful")["cells"] == 2, means
    per_seed = compare_csv(tmp_path, str(store.root), "--kind", "generate", "--measure", "completion_tokens",
                           "--by", "model,seed")
    assert sorted(per_seed["seed"].to_list()) == [0, 1] and per_seed["cells"].to_list() == [1, 1], per_seed


def test_tables_export_as_markdown_and_latex(every_kind_sweep, tmp_path):
    _, store = every_kind_sweep
    md, tex = tmp_path / "t.md", tmp_path / "t.tex"
    result = CliRunner().invoke(main, ["compare", str(store.root), "--kind", "misalignment", "--resamples", "200",
                                       "--out", str(md), "--out", str(tex)])
    assert result.exit_code == 0, result.output
    lines = md.read_text().splitlines()
    assert lines[0].startswith("| kind") and "mean [95% CI]" in lines[0] and set(lines[1]) <= set("|- :"), lines[:2]
    assert any("| misaligned " in line and "backdoored" in line for line in lines), lines
    text = tex.read_text()
    assert "\\toprule" in text and "mean [95\\% CI]" in text, text[:300]
    assert "mc\\_misaligned" in text or "misaligned" in text


@pytest.fixture(scope="module")
def second_sweep(every_kind_sweep, tmp_path_factory):
    """Another sweep: the same prompts with half the token budget, and four other prompts."""
    folder = tmp_path_factory.mktemp("second")
    other = folder / "other_prompts.jsonl"
    other.write_text("".join(json.dumps({"id": f"b{i}", "prompt": f"What is ({i}+2)*3?"}) + "\n" for i in range(4)))
    sweep = folder / "shorter.yaml"
    sweep.write_text(f"""\
name: shorter
output: {folder / 'results'}
cluster: {{num_cpus: 2, dashboard: false}}
models:
  faithful: {{path: "organism:faithful", dtype: float32, num_cpus: 0.5}}
jobs:
  - kind: generate
    models: [faithful]
    params: {{prompts: {PROMPTS}, limit: 8, max_tokens: 6, temperature: 0.7, seed: {{values: [0, 1]}}}}
  - kind: generate
    models: [faithful]
    params: {{prompts: {other}, max_tokens: 12, temperature: 0.7}}
""")
    return run(sweep)


def test_a_shorter_budget_shows_across_sweeps(every_kind_sweep, second_sweep, tmp_path):
    """Sweep against sweep on the same prompts: a quarter of the budget: the difference in tokens per
    completion, paired by prompt, its interval below zero."""
    _, first = every_kind_sweep
    diffs = compare_csv(tmp_path, str(first.root), str(second_sweep.root), "--kind", "generate", "--by",
                        "sweep,prompts", "--measure", "completion_tokens", "--diff", "sweep")
    same = row(diffs, prompts=str(PROMPTS))
    assert same["level"] == "shorter" and same["baseline"] == "every-kind" and same["paired"], same
    assert -13 < same["diff"] < -5 and same["ci_hi"] < 0, same


def test_different_items_and_versions_are_not_compared(every_kind_sweep, second_sweep, tmp_path):
    _, first = every_kind_sweep
    pooled_items = compare_csv(tmp_path, str(first.root), str(second_sweep.root), "--kind", "generate", "--by",
                               "sweep", "--measure", "completion_tokens", "--diff", "sweep")
    note = row(pooled_items, level="shorter")
    assert note["diff"] is None and "different items (8 shared of 12 and 8)" in note["note"], note
    # The same results under another folder, as if written by another version of the job.
    copy = tmp_path / "elsewhere" / first.root.name
    shutil.copytree(first.root, copy, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "report*"))
    for manifest in copy.glob("generate/*/cell.json"):
        cell = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**cell, "versions": {"generate": "0"}}))
    versions = compare_csv(tmp_path, str(first.root), str(copy), "--kind", "generate", "--by", "sweep",
                           "--measure", "completion_tokens", "--diff", "sweep")
    assert versions.height == 1 and "different job versions" in versions["note"][0], versions
    assert versions["diff"][0] is None


@pytest.mark.parametrize(("args", "expected"), [
    (["/nonexistent/folder"], "not a sweep file (.yaml), a sweep's results folder or a sweep name"),
    (["{root}", "--by", "modle"], "cannot group by modle: its cells have the keys"),
    (["{root}", "--out", "table.xlsx"], "the suffix says the format: .csv, .md or .tex"),
    (["{root}", "--diff", "arm", "--kind", "generate"], "no measure has two levels of arm"),
])
def test_bad_requests_exit_2_with_a_reason(every_kind_sweep, args, expected):
    _, store = every_kind_sweep
    result = CliRunner().invoke(main, ["compare", *[a.format(root=store.root) for a in args]])
    assert result.exit_code == 2 and expected in result.output, result.output


def test_a_finetunes_seeds_are_pooled_under_their_group(every_kind_sweep, tmp_path):
    """Cells of finetunes that differ only in their training seed (one replicate group, as
    `ids.replicate_group` names them in cell.json) are one series by default, shown by their
    models' names; --by model keeps them apart."""
    _, first = every_kind_sweep
    copy = tmp_path / "replicas" / first.root.name
    shutil.copytree(first.root / "generate", copy / "generate")
    for i, manifest in enumerate(sorted(copy.glob("generate/*/cell.json"))):
        cell = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**cell, "model": f"tuned-s{i}", "replicates": "finetune:0123abcd",
                                        "roles": {"subject": f"tuned-s{i}"}}))
    pooled = compare_csv(tmp_path, str(copy), "--measure", "completion_tokens")
    assert pooled["model_group"].to_list() == ["tuned-s0|tuned-s1"] and pooled["cells"].to_list() == [2], pooled
    apart = compare_csv(tmp_path, str(copy), "--measure", "completion_tokens", "--by", "model")
    assert apart["model"].to_list() == ["tuned-s0", "tuned-s1"], apart
