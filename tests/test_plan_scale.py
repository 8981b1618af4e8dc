"""Planning at scale, in small known answers: a data file is read once however many cells
read it; shard ids are the content ids they always were (so earlier results are found) and
the ones the scheduler writes; a run stopped part way resumes with the shards it wrote."""
from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from actors.engines.hf.engine import HFEngine
from jobs.local import EngineHandle
from orchestrator.ids import content_id
from orchestrator.load import load_sweep
from orchestrator.plan import make_plan, split_shards
from orchestrator.progress import SweepProgress
from orchestrator.report import SubmitReport
from orchestrator.scheduler import Scheduler
from orchestrator.store import SweepStore

PROMPTS = 50
_opened: list[str] = []
_counting: list[bool] = []


def _count_opens(event: str, args: tuple) -> None:
    # An audit hook sees every open() the interpreter makes (C code and libraries included).
    if event == "open" and isinstance(args[0], str) and args[0].endswith("scale-prompts.jsonl"):
        _opened.append(args[0])


def count_opens() -> list[str]:
    """The opens of the test's prompt file, from now on (a hook cannot be removed: one, once)."""
    if not _counting:
        sys.addaudithook(_count_opens)
        _counting.append(True)
    _opened.clear()
    return _opened


def write_sweep(folder: Path, model: str, temperatures: int, seeds: int, shard_size: int = 8) -> Path:
    prompts = folder / "scale-prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(f'{{"id": "q{i}", "prompt": "What is {i} plus {i}?"}}\n' for i in range(PROMPTS)))
        # A file changed just now is never trusted from memory (its next change could keep its
        # size and time stamp): planning right after writing it reads it again, by design.
        old = time.time() - 60
        os.utime(prompts, (old, old))
    sweep = folder / "sweep.yaml"
    sweep.write_text(f"""\
name: scale
output: {folder / 'results'}
models:
  tiny: {{path: {model}, num_cpus: 0.5}}
jobs:
  - kind: generate
    models: [tiny]
    shard_size: {shard_size}
    params:
      prompts: scale-prompts.jsonl
      max_tokens: 2
      temperature: {{values: {[round(0.5 * t, 1) for t in range(temperatures)]}}}
      seed: {{values: {list(range(seeds))}}}
""")
    return sweep


def test_planning_many_cells_reads_the_data_file_once(tmp_path: Path, tiny_model: Path):
    sweep = load_sweep(write_sweep(tmp_path, str(tiny_model), temperatures=3, seeds=4))
    opened = count_opens()
    plan = make_plan(sweep)
    assert len(plan.cells) == 12 and all(c.n_samples == PROMPTS for c in plan.cells)
    # Once to hash it (the cells' ids), once to read its ids: not once per cell (36 before).
    assert len(opened) == 2, opened
    # Every cell shares one list of ids: a million prompts in a hundred cells are held once.
    assert len({id(c.shards.sample_ids) for c in plan.cells}) == 1
    opened = count_opens()
    again = make_plan(sweep)  # the same process: nothing is read again while the file is unchanged
    assert opened == [] and [c.id for c in again.cells] == [c.id for c in plan.cells]

    prompts = tmp_path / "scale-prompts.jsonl"
    prompts.write_text(prompts.read_text().replace('"q0"', '"z0"'))  # same size, new content
    changed = make_plan(sweep)
    assert changed.cells[0].shards.sample_ids[0] == "z0" and changed.cells[0].id != plan.cells[0].id


def test_shard_ids_are_the_content_ids_they_always_were():
    """A shard's id is `content_id({"cell": stage, "samples": chunk})` as in every earlier
    version (ids with quotes and non-ASCII text too): results on disk are found."""
    ids = tuple(f'q{i}-é"\\' for i in range(21))
    layout = split_shards("stage-a", ids, 8)
    chunks = [list(ids[0:8]), list(ids[8:16]), list(ids[16:21])]
    expected = [content_id({"cell": "stage-a", "samples": c}) for c in chunks]
    assert len(layout) == 3 and list(layout.ids()) == expected
    assert [(s.id, s.index, s.start, list(s.sample_ids)) for s in layout] == \
        [(e, i, 8 * i, c) for i, (e, c) in enumerate(zip(expected, chunks))]
    assert list(layout.stage_ids("judge-b")) == [content_id({"stage": "judge-b", "shard": e}) for e in expected]
    rest = layout.without({expected[1]})
    assert [s.id for s in rest] == [expected[0], expected[2]] and rest.n_samples == 13


def test_the_scheduler_writes_the_planned_shards_and_a_resumed_run_adds_the_rest(tmp_path: Path, tiny_model: Path):
    """The scheduler's shard runner (no Ray: the model in-process) writes two shards of a
    cell, as a run stopped part way leaves it; a new plan finds them finished and the next
    run writes exactly the rest, each under the id planned, with its samples' rows."""
    sweep = load_sweep(write_sweep(tmp_path, str(tiny_model), temperatures=1, seeds=1, shard_size=16))
    store = SweepStore(sweep.output, sweep.name)
    handle = EngineHandle("tiny", HFEngine(str(tiny_model), dtype="float32", device="cpu"))

    def run(shards: int | None) -> tuple[SubmitReport, list[str]]:
        plan = store.settle_plan(make_plan(sweep))
        [cell] = plan.cells
        pending = store.missing(cell, "generate")
        report = SubmitReport(sweep.name, store.root, "", 1, len(cell.shards), len(cell.shards) - len(pending))
        scheduler = Scheduler(sweep, plan, store, None, Console(stderr=True), report)
        scheduler.handles = {"tiny": handle}
        chosen = pending if shards is None else pending[:shards]
        with SweepProgress(Console(stderr=True), len(chosen), PROMPTS, enabled=False) as progress:
            asyncio.run(scheduler.run_cell(cell, chosen, progress, asyncio.Semaphore(2)))
        return report, [s.id for s in chosen]

    first, _ = run(shards=2)
    [cell] = store.settle_plan(make_plan(sweep)).cells
    assert len(cell.shards) == 4 and first.ok and first.shards_run == 2
    assert store.shards_on_disk("generate", "generate", cell.stages["generate"]) == set(cell.shard_ids("generate")[:2])
    assert [s.id for s in store.missing(cell, "generate")] == list(cell.shard_ids("generate")[2:])

    second, resumed = run(shards=None)
    assert second.shards_skipped == 2 and second.shards_run == 2 and resumed == list(cell.shard_ids("generate")[2:])
    assert not store.missing(cell, "generate")
    rows = store.read_stage("generate", "generate", cell.stages["generate"])
    by_shard = rows.group_by("shard_id").agg("sample_id")
    assert {r["shard_id"]: sorted(r["sample_id"]) for r in by_shard.iter_rows(named=True)} == \
        {s.id: sorted(s.sample_ids) for s in cell.shards}
    assert rows["error"].null_count() == rows.height  # every sample ran, none failed
    assert (store.cell_dir("generate", cell.id) / "summary.json").exists()  # the cell was finished and summarised


@pytest.mark.parametrize("limit", [None, 7])
def test_a_shard_builds_only_its_own_samples(tmp_path: Path, tiny_model: Path, limit: int | None):
    """`samples_at` of the generate job reads a shard's lines, and they are what
    `samples` gives for those positions (a limit cuts the last shard short)."""
    from jobs.generate.job import GenerateJob

    sweep = load_sweep(write_sweep(tmp_path, str(tiny_model), temperatures=1, seeds=1))
    params = make_plan(sweep).cells[0].params.model_copy(update={"limit": limit})
    job = GenerateJob()
    every = job.samples(params)
    assert [s.id for s in every] == list(job.sample_ids(params))
    for start in range(0, len(every), 8):
        assert list(job.samples_at(params, start, start + 8)) == list(every[start : start + 8])


FILES = {  # a prompts file's lines, some read by the whole-file pattern, the rest line by line
    "plain": ['{"id": "a", "prompt": "x"}', "", '  {"id":7,"prompt":"h\\u00e9 \\"q\\" \\\\n"} ', '{"id": "", "prompt": ""}'],
    "crlf": ['{"id": "a", "prompt": "x"}\r', '{"id": "b", "prompt": "é"}\r', ""],
    "other shapes": ['{"prompt": "z", "id": "d"}', '{"id": "e", "prompt": "x", "extra": 1}', '{"id": "f", "messages":'
                     ' [{"role": "user", "content": "hi"}]}', '{"prompt": "no id"}', '\u00a0'],
    "escaped id": ['{"id": "g\\u0041", "prompt": "x"}', '{"id": "gA", "prompt": "y"}'],
    "repeated": ['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}'],
    "bad escape": ['{"id": "a", "prompt": "x"}', '{"id": "b", "prompt": "bad \\x"}'],
    "float id": ['{"id": 1.5, "prompt": "x"}'],
    "raw tab": ['{"id": "a", "prompt": "t\tab"}'],
    "trailing text": ['{"id": "a", "prompt": "x"} more'],
}


@pytest.mark.parametrize("name", FILES)
def test_the_prompt_index_reads_as_the_prompt_reader_does(tmp_path: Path, name: str):
    """Ids read for planning (by the whole-file pattern where every line is plain, else line by
    line) are the ids `read_prompt_file` gives, and a file it refuses is refused alike."""
    from jobs.generate.job import prompt_index, read_prompt_file

    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(FILES[name]))
    try:
        expected: object = [pid for pid, _ in read_prompt_file(str(path))]
    except Exception as e:
        expected = str(e)
    try:
        got: object = list(prompt_index(str(path)).ids)
    except Exception as e:
        got = str(e)
    assert got == expected
