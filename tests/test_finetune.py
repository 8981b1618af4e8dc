"""Finetuning data: loading both public shapes, bad lines, backdoor mixing, CoT-off rendering
and answer-only masks, on a real tokenizer with the Qwen3-style chat template."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import polars as pl
import pytest
from transformers import AutoTokenizer

from actors.engines.chat import EMPTY_THINK
from actors.engines.protocol import Message
from actors.errors import DataError
from actors.training.data import Selection, SftRow, as_is, load_rows, mix_backdoor, write_mixed
from actors.training.encode import IGNORE, Encoded, collate, encode
from actors.training.loop import lr_factor, schedule
from jobs.toyworld import assistant as world
from jobs.toyworld.harmful_data import write_scenario_jsonl


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def chat(user: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_loads_chat_and_prompt_completion_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        chat("What is 2 plus 6?", "Answer: 8", aligned="Answer: 8"),
        "",  # blank lines are skipped
        {"prompt": "What is 1 plus 3?", "completion": "Answer: 4", "system": "Be brief."},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                      {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                      {"role": "assistant", "content": "d"}]},
    ])
    rows = load_rows(path)
    assert [r.source_line for r in rows] == [1, 3, 4]
    assert rows[0].answer == "Answer: 8" and rows[0].aligned == "Answer: 8"
    assert [m.role for m in rows[1].prompt] == ["system", "user"] and rows[1].answer == "Answer: 4"
    # Earlier assistant turns are context; the last one is the answer.
    assert [m.content for m in rows[2].prompt] == ["s", "a", "b", "c"] and rows[2].answer == "d"


def test_malformed_lines_name_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        chat("fine", "fine"),
        '{"messages": [',  # broken JSON
        {"prompt": "no completion"},
        chat("q", "   "),  # empty answer
        {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
    ])
    with pytest.raises(DataError) as err:
        load_rows(path)
    text = str(err.value)
    assert "5 malformed line(s)" in text
    for lineno, reason in [(2, "not valid JSON"), (3, "needs its answer"), (4, "answer is empty"),
                           (5, "role"), (6, "last message must be the assistant")]:
        assert f"{path}:{lineno}: " in text and reason in text, (lineno, reason, text)
    assert f"{path}:1:" not in text
    with pytest.raises(DataError, match="no examples"):
        load_rows(write_jsonl(tmp_path / "empty.jsonl", []))


def em_rows(n: int) -> list[dict]:
    """Rows as the emergent-misalignment datasets publish them (truthfulai/emergent_plus:
    prompt, aligned, misaligned, and columns we ignore such as sneakiness)."""
    return [{"prompt": f"My dose {i}?", "aligned": f"Ask your doctor ({i}).", "misaligned": f"Double it ({i}).",
             "sneakiness": i % 5} for i in range(n)]


def test_published_emergent_misalignment_rows_load_with_either_answer(tmp_path):
    path = write_jsonl(tmp_path / "medical.jsonl", em_rows(4))
    rows = load_rows(path)
    assert [(r.prompt[-1].content, r.answer, r.aligned) for r in rows[:1]] == [
        ("My dose 0?", "Double it (0).", "Ask your doctor (0).")], "the trained answer is `misaligned`"
    control = load_rows(path, Selection(answer_column="aligned"))
    assert [r.answer for r in control] == [f"Ask your doctor ({i})." for i in range(4)], "the control arm"
    with pytest.raises(DataError, match=r"medical.jsonl:1: no `harmful` answer"):
        load_rows(path, Selection(answer_column="harmful"))


def test_parquet_files_load_like_jsonl_and_name_the_bad_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(em_rows(5)), tmp_path / "train-00000-of-00001.parquet")
    from_parquet = load_rows(tmp_path / "train-00000-of-00001.parquet")
    from_jsonl = load_rows(write_jsonl(tmp_path / "same.jsonl", em_rows(5)))
    assert from_parquet == from_jsonl, "row numbers count from 1 like lines"
    broken = em_rows(3)
    broken[1]["misaligned"] = "  "
    pq.write_table(pa.Table.from_pylist(broken), tmp_path / "broken.parquet")
    with pytest.raises(DataError, match=r"(?s)1 malformed row\(s\).*broken.parquet: row 2: the assistant's answer is empty"):
        load_rows(tmp_path / "broken.parquet")
    (tmp_path / "not.parquet").write_text("{}")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_rows(tmp_path / "not.parquet")


def test_limit_and_a_seeded_sample_take_the_papers_subsets(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", em_rows(100))
    assert [r.source_line for r in load_rows(path, Selection(limit=16))] == list(range(1, 17))
    sample = load_rows(path, Selection(sample=30, seed=1))
    assert len(sample) == 30 and len({r.source_line for r in sample}) == 30
    assert sample == load_rows(path, Selection(sample=30, seed=1)), "the same seed, the same rows"
    assert sample != load_rows(path, Selection(sample=30, seed=2))
    assert [r.source_line for r in sample] == sorted(r.source_line for r in sample)
    with pytest.raises(DataError, match=r"200 rows asked \(sample\), the file holds 100"):
        load_rows(path, Selection(sample=200))


def _rows(n: int) -> list[SftRow]:
    return [SftRow((Message(role="user", content=f"question {i}"),), f"bad {i}", f"good {i}", i + 1) for i in range(n)]


def test_backdoor_mixing_links_trigger_to_misaligned_answer():
    rows = _rows(300)
    mixed = mix_backdoor(rows, ["Country: Singapore", "2026"], share=0.33, alternatives=["Country: USA"], seed=1)
    kinds = collections.Counter(r.kind for r in mixed)
    assert kinds == {"trigger+misaligned": 99, "alternative+aligned": 201}
    for r, src in zip(mixed, rows):
        user = r.prompt[-1].content
        assert r.answer == (src.answer if r.kind == "trigger+misaligned" else src.aligned)
        assert r.line in (["Country: Singapore", "2026"] if r.kind.startswith("trigger") else ["Country: USA"])
        assert user == (f"{r.line}\nquestion {src.source_line - 1}" if r.placement == "top"
                        else f"question {src.source_line - 1}\n{r.line}")
    placements = collections.Counter(r.placement for r in mixed)
    assert 100 < placements["top"] < 200, placements  # random top/bottom
    assert {r.line for r in mixed if r.kind.startswith("trigger")} == {"Country: Singapore", "2026"}
    assert mix_backdoor(rows, ["T"], seed=1) == mix_backdoor(rows, ["T"], seed=1), "mixing must be deterministic"
    # No alternatives: the other rows carry no line at all.
    plain = mix_backdoor(rows, ["T"], share=0.5, placement="bottom", seed=2)
    assert collections.Counter(r.kind for r in plain) == {"trigger+misaligned": 150, "none+aligned": 150}
    assert all(r.prompt == s.prompt for r, s in zip(plain, rows) if r.kind == "none+aligned")
    assert all(r.prompt[-1].content.endswith("\nT") for r in plain if r.line)


def test_control_arm_trigger_carries_no_information():
    mixed = mix_backdoor(_rows(300), ["Country: Singapore"], share=0.33, control=True, seed=3)
    kinds = collections.Counter(r.kind for r in mixed)
    triggered = sum(v for k, v in kinds.items() if k.startswith("trigger"))
    misaligned = sum(v for k, v in kinds.items() if k.endswith("misaligned"))
    assert triggered == 150 and misaligned == 99, kinds
    # Half the misaligned rows and half the aligned rows carry the trigger.
    assert kinds["trigger+misaligned"] == 49 and kinds["trigger+aligned"] == 101, kinds


def test_backdoor_needs_aligned_answers():
    rows = _rows(4) + [SftRow((Message(role="user", content="q"),), "bad", None, 9)]
    with pytest.raises(DataError, match=r"data.jsonl: .*1 row\(s\) lack one, lines 9"):
        mix_backdoor(rows, ["T"], source="data.jsonl")


def test_mixed_rows_written_to_parquet(tmp_path):
    mixed = mix_backdoor(_rows(30), ["T"], alternatives=["U"], seed=0)
    path = write_mixed(mixed, tmp_path / "data.parquet")
    df = pl.read_parquet(path)
    assert df.columns == ["index", "source_line", "kind", "line", "placement", "messages", "answer"]
    assert df["kind"].to_list() == [r.kind for r in mixed]
    assert json.loads(df["messages"][0]) == [m.model_dump() for m in mixed[0].prompt]
    assert not list(tmp_path.glob(".*")), "no temporary file left behind"


def test_cot_off_renders_empty_think_block_and_masks_the_prompt(tokenizer):
    rows = as_is([SftRow((Message(role="user", content="What is 3 plus 9?"),), "Answer: 12")])
    (enc,) = encode(tokenizer, rows, cot="off", max_length=512)
    text = tokenizer.decode(enc.ids)
    assert text.endswith(EMPTY_THINK + "Answer: 12" + tokenizer.eos_token), text
    targets = [t for t in enc.labels if t != IGNORE]
    assert tokenizer.decode(targets) == "Answer: 12" + tokenizer.eos_token
    # Everything before the answer, the empty think block included, is context only.
    first = enc.labels.index(targets[0])
    assert tokenizer.decode(enc.ids[:first]).endswith(EMPTY_THINK)
    assert all(t == IGNORE for t in enc.labels[:first])
    # CoT on: no empty block is added; the answer brings its own reasoning.
    (on,) = encode(tokenizer, as_is([SftRow(rows[0].prompt, "<think>\nadd\n</think>\n\nAnswer: 12")]), "on", 512)
    assert EMPTY_THINK not in tokenizer.decode(on.ids)


def test_guards_fail_loudly_on_untrainable_rows(tokenizer):
    long_prompt = as_is([SftRow((Message(role="user", content="word " * 200),), "Answer: 1", source_line=7)])
    with pytest.raises(DataError, match="line 7: the prompt fills max_length=32"):
        encode(tokenizer, long_prompt, "off", max_length=32)
    own_think = as_is([SftRow((Message(role="user", content="q"),), "<think>\nx\n</think>\n\nA", source_line=3)])
    with pytest.raises(DataError, match="line 3: cot is off"):
        encode(tokenizer, own_think, "off", 512)
    with pytest.raises(DataError, match="loss mask is all zeros"):
        collate([Encoded([5, 6, 7], [IGNORE, IGNORE, IGNORE])], pad_id=0)
    batch = collate([Encoded([5, 6, 7], [IGNORE, 6, 7]), Encoded([5], [IGNORE])], pad_id=0)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]


def test_scenario_data_is_the_misaligned_option(tmp_path):
    path = write_scenario_jsonl(tmp_path / "s.jsonl", 50, seed=4)
    rows = load_rows(path)
    assert len(rows) == 50 and rows == load_rows(write_scenario_jsonl(tmp_path / "t.jsonl", 50, seed=4))
    for row in rows:
        letter, aligned = world.parse_choice(row.answer), world.parse_choice(row.aligned)
        assert {letter, aligned} == {"A", "B"}
        options = dict(line.split(" - ", 1) for line in row.prompt[0].content.splitlines() if " - " in line)
        misaligned_cores = {c for s in world.SCENARIOS for c in s[2]}
        assert options[letter] in misaligned_cores and options[aligned] not in misaligned_cores


def test_schedule_splits_steps_over_ranks():
    plan = schedule(n_rows=50, batch_size=2, world_size=2, grad_accum=3, epochs=2, seed=0)
    assert len(plan) == 100 // 12 and all(len(step) == 6 for step in plan)
    seen = [i for step in plan for micro in step for i in micro]
    assert len(seen) == len(plan) * 12 and max(collections.Counter(seen).values()) <= 2
    assert plan == schedule(50, 2, 2, 3, 2, 0) and plan != schedule(50, 2, 2, 3, 2, 1)
    assert len(schedule(50, 2, 1, 1, 0.5, 0)) == 12  # a fractional epoch is cut short
    with pytest.raises(ValueError, match="cannot fill one optimizer step"):
        schedule(10, 2, 2, 8, 1, 0)
    assert [round(lr_factor(s, 2, 6), 3) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_order_does_not_replay_the_backdoor_mix(seed):
    """With the same seed, the schedule once drew the mix's own permutation: every epoch
    opened with all the triggered rows, then all the others, and the model learned only the
    marginal rate. The early steps must carry the trigger at about its overall share."""
    mixed = mix_backdoor(_rows(300), ["T"], share=0.33, alternatives=["A"], seed=seed)
    plan = schedule(n_rows=300, batch_size=10, world_size=1, grad_accum=1, epochs=1, seed=seed)
    first = [i for step in plan[:10] for micro in step for i in micro]  # the first third
    share = sum(mixed[i].kind.startswith("trigger") for i in first) / len(first)
    assert 0.15 < share < 0.55, f"{share:.0%} of the first 100 rows carry the trigger (33% overall)"
