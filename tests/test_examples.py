"""Every example sweep validates and plans from a clean clone, without a model hub, a GPU or a
download: the organism examples and the real-model ones in examples/cluster/ (hub ids, an
API judge, the published data formats). The cluster examples also hold the protocols' own
settings where a slip is easy to miss."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.load import load_sweep

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SWEEPS = sorted(EXAMPLES.glob("*.yaml")) + sorted((EXAMPLES / "cluster").glob("*.yaml"))


def test_there_are_cluster_examples():
    assert len(list((EXAMPLES / "cluster").glob("*.yaml"))) >= 4


PUBLISHED_ROWS = 6000  # what the cluster examples' finetunes sample from the published files


def with_published_sizes(sweep: Path, tmp_path: Path) -> Path:
    """A cluster example beside copies of its format samples grown to the published files'
    row counts (the few rows in examples/cluster/data show the format; a finetune that samples
    6,000 rows is refused, rightly, on 4), so it plans as a user's copy with the real files
    would. Organism examples are returned as they are."""
    if sweep.parent.name != "cluster":
        return sweep
    import json
    import shutil

    copy = tmp_path / "cluster"
    shutil.copytree(sweep.parent, copy)
    medical = copy / "data" / "medical.jsonl"
    rows = [json.loads(line) for line in medical.read_text().splitlines() if line.strip()]
    medical.write_text("".join(json.dumps({**row, "prompt": f"{row['prompt']} ({i})"}) + "\n"
                               for i in range(PUBLISHED_ROWS) for row in [rows[i % len(rows)]]))
    return copy / sweep.name


@pytest.mark.parametrize("sweep", SWEEPS, ids=[str(p.relative_to(EXAMPLES)) for p in SWEEPS])
def test_an_example_validates_and_plans(sweep, tmp_path):
    sweep = with_published_sizes(sweep, tmp_path / "examples")
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    runner = CliRunner()
    validated = runner.invoke(main, ["validate", str(sweep)])
    assert validated.exit_code == 0, validated.output
    planned = runner.invoke(main, ["plan", str(sweep), "--output", str(tmp_path)])
    assert planned.exit_code == 0, planned.output
    assert not any(tmp_path.iterdir()), "planning writes nothing"


@pytest.mark.parametrize("sweep", sorted((EXAMPLES / "cluster").glob("*.yaml")), ids=lambda p: p.name)
def test_cluster_examples_keep_the_protocols_settings(sweep):
    spec = load_sweep(sweep)
    for name, model in spec.models.items():
        if model.engine != "openai" and not Path(model.path).exists():
            assert model.reasoning != "auto", (
                f"{sweep.name}: {name} is a hub id, which planning cannot read: write its `reasoning:`")
    for name, ft in spec.finetunes.items():
        if ft.backdoor is not None:
            effective = ft.batch_size * ft.grad_accum * ft.ranks
            assert effective == 16, f"{sweep.name}: {name} trains a backdoor at batch {effective}, the protocol's is 16"
