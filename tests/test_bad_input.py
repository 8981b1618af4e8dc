"""Bad input is refused before anything starts: a corpus of malformed sweep files and data
files, each run through `orchestrate validate` and `orchestrate plan`.

Every `tests/data/bad_input/*.yaml` is one case. Its header says what is wrong and, on one or
more `# expect: ...` lines, what the error must say: `file:line: field: message` as printed,
with data files named relative to the corpus folder (the test strips the copy's folder). The
sweeps' data files are under `bad_input/data/`. A `@@10MB@@` in a case is replaced by 10 MB of
text when the corpus is copied (a 10 MB file has no place in the repository).

Each command must exit 2 with the expected message, print no traceback, create no results
folder and start no Ray (in-process: Ray not initialised; in a real process: `ray` never even
imported, seen through `python -X importtime`).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main

CORPUS = Path(__file__).parent / "data" / "bad_input"
HUGE = b"@@10MB@@"
CASES = sorted(p.stem for p in CORPUS.glob("*.yaml"))


def expectations(case: str) -> list[str]:
    lines = (CORPUS / f"{case}.yaml").read_bytes().split(b"\n")
    return [line.removeprefix(b"# expect: ").decode() for line in lines if line.startswith(b"# expect: ")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the corpus with the huge values written out."""
    folder = tmp_path_factory.mktemp("bad-input") / "corpus"
    shutil.copytree(CORPUS, folder)
    for case in folder.glob("*.yaml"):
        raw = case.read_bytes()
        if HUGE in raw:
            case.write_bytes(raw.replace(HUGE, b"x" * (10 << 20)))
    return folder


def test_the_corpus_covers_the_list() -> None:
    assert len(CASES) >= 60, len(CASES)
    for case in CASES:
        assert expectations(case), f"{case}.yaml has no `# expect:` line"
    kinds = {case.split("_")[0] for case in CASES}
    assert {"type", "unknown", "missing", "cycle", "duplicate", "yaml", "huge", "name", "data", "sweep"} <= kinds


def test_the_corpus_data_is_otherwise_good(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the good data files the cases lean on validate, so each case fails for
    its own reason."""
    monkeypatch.chdir(corpus)
    control = corpus / "control.yml"
    control.write_text('name: control\nmodels:\n  m: {path: "organism:faithful"}\n'
                       "finetunes:\n  ft: {base: m, data: data/train.jsonl}\n"
                       "jobs:\n  - kind: generate\n    models: [m, ft]\n    params: {prompts: data/prompts.jsonl}\n")
    for command in ("validate", "plan"):
        result = CliRunner().invoke(main, [command, control.name])
        assert result.exit_code == 0, result.output
    shutil.rmtree(corpus / "results", ignore_errors=True)
    control.unlink()


@pytest.mark.parametrize("command", ["validate", "plan"])
@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_with_file_line_and_field(corpus: Path, monkeypatch: pytest.MonkeyPatch,
                                                       case: str, command: str) -> None:
    monkeypatch.chdir(corpus)  # the cases' `output` is the default, ./results
    result = CliRunner().invoke(main, [command, f"{case}.yaml"])
    assert isinstance(result.exception, SystemExit), f"a traceback: {result.exception!r}"
    output = result.output.replace(f"{corpus}/", "")
    assert result.exit_code == 2, output[:2000]
    assert output.startswith("error: ") and "Traceback" not in output, output[:2000]
    for expected in expectations(case):
        assert expected in output, f"expected {expected!r} in:\n{output[:2000]}"
    assert len(output) < 20_000, "the error echoes a huge value"
    assert not (corpus / "results").exists(), "a refused sweep created its results folder"
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()


REAL_PROCESS_CASES = ["yaml_python_object", "sweep_latin1", "huge_grid", "data_finetune_not_json",
                      "data_prompts_messages_empty", "name_dotdot", "cycle_finetune_pair"]


@pytest.mark.parametrize("case", REAL_PROCESS_CASES)
def test_a_real_process_exits_2_without_importing_ray(corpus: Path, case: str) -> None:
    code = "from orchestrator.cli import main; main()"
    for command in ("validate", "plan"):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", code, command, f"{case}.yaml"],
                              check=False, cwd=corpus, capture_output=True, text=True, timeout=300)
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
        errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        assert done.returncode == 2, done.stderr[-3000:]
        assert errors and errors[0].startswith("error: ") and "Traceback" not in done.stderr, errors
        assert expectations(case)[0] in "\n".join(errors).replace(f"{corpus}/", ""), errors
        assert "ray" not in imported, "refusing a sweep imported Ray"
        assert not (corpus / "results").exists()
    assert not (corpus / "pwned").exists(), "a YAML tag ran a command"
