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

import json
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


HOSTILE_NAMES = ["../x", "..", ".", "/tmp/x", "a/b", "a\\b", "a\0b", "a\nb", "a\x1bb", "", " x", ".hidden", "x" * 101,
                 "\u2025x", "x:y"]
NAME_PLACES = {
    "name": ("name: {n}\n", "name"),
    "model": ("models:\n  {n}: {{path: 'organism:faithful'}}\n", "models.{n}"),
    "finetune": ("finetunes:\n  {n}: {{base: m, data: data/train.jsonl}}\n", "finetunes.{n}"),
    "job": ("jobs:\n  - {{kind: generate, name: {n}, models: [m], params: {{prompts: [hi]}}}}\n", "jobs[0].name"),
}


@pytest.mark.parametrize("place", list(NAME_PLACES))
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[ascii(n)[:20] for n in HOSTILE_NAMES])
def test_a_name_that_could_leave_its_folder_is_refused_where_it_is_written(place: str, name: str) -> None:
    """Names become folders (<output>/<sweep>/, finetunes/<name>-<id>/) and Ray actor names."""
    from orchestrator.errors import SpecError
    from orchestrator.load import parse_sweep

    parts = {"name": "name: ok\n", "model": "models:\n  m: {path: 'organism:faithful'}\n", "finetune": "",
             "job": "jobs:\n  - {kind: generate, models: [m], params: {prompts: [hi]}}\n"}
    template, field = NAME_PLACES[place]
    quoted = json.dumps(name)  # a YAML 1.2 double-quoted scalar: escapes and all
    if place == "model":
        parts["model"] = "models:\n  m: {path: 'organism:faithful'}\n" + template.format(n=quoted).split("\n", 1)[1]
    else:
        parts[place] = template.format(n=quoted)
    text = parts["name"] + parts["model"] + parts["finetune"] + parts["job"]
    with pytest.raises(SpecError) as caught:
        parse_sweep(text, "sweep.yaml", CORPUS)
    assert any(p.field == field.format(n=name) and p.line is not None for p in caught.value.problems), caught.value


@pytest.mark.parametrize("name", ["a", "a..b", "x.", "A-_.9", "z" * 100])
def test_every_name_the_spec_accepts_stays_one_folder_under_the_root(tmp_path: Path, name: str) -> None:
    from orchestrator.load import parse_sweep
    from orchestrator.store import SweepStore

    sweep = parse_sweep(f"name: {name}\nmodels:\n  {name}: {{path: 'organism:faithful'}}\nfinetunes:\n"
                        f"  {name[:97]}-ft: {{base: {name}, data: data/train.jsonl}}\n"
                        f"jobs:\n  - {{kind: generate, name: {name}, models: [{name}], params: {{prompts: [hi]}}}}\n",
                        "sweep.yaml", CORPUS)
    root = tmp_path.resolve()
    store = SweepStore(root, sweep.name)
    assert store.root.parent == root
    finetunes = store.root / "finetunes"
    for ft in sweep.finetunes:  # the finetune step's folders: <name>-<id>, .work-<name>-<id>, .lock-<name>-<id>
        for folder in (f"{ft}-{'0' * 16}", f".work-{ft}-{'0' * 16}", f".lock-{ft}-{'0' * 16}"):
            assert (finetunes / folder).resolve().parent == finetunes and len(folder.encode()) <= 255


@pytest.mark.parametrize("command", ["status", "results"])
def test_a_sweep_name_on_the_command_line_cannot_leave_the_output_root(tmp_path: Path, command: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outside").mkdir()
    result = CliRunner().invoke(main, [command, "../outside", "--output", str(tmp_path / "results")])
    assert result.exit_code == 2 and "is not a sweep name" in result.output, result.output
