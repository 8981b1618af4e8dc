"""`orchestrate data`: make the data files the jobs and finetunes read (registered on the main
command in `orchestrator.cli`): synthetic decompositions from tables and the toy world, and
finetune rows from annotated decompositions."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from orchestrator.errors import OrchestrateError


@click.group()
def data() -> None:
    """Make data files: synthetic decompositions, finetune rows for trained components."""


@data.command("synth-decompositions")
@click.argument("tables", nargs=-1, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="the annotated file to write (.json, the DROP release format with `decomp_qas`)")
@click.option("--per-table", default=20, show_default=True, type=click.IntRange(min=1),
              help="questions per table (fewer where a table has fewer to give)")
@click.option("--toyworld", default=0, show_default=True, type=click.IntRange(min=0),
              help="also this many multi-hop questions of the organisms' toy world (training passages only)")
@click.option("--toyworld-answers", type=click.Choice(["number", "sentence"]), default="number", show_default=True,
              help="how the toy world's lookups are answered: the number, or the passage's sentence stating it")
@click.option("--seed", default=0, show_default=True, type=int)
def synth_decompositions(tables: tuple[str, ...], output: str, per_table: int, toyworld: int,
                         toyworld_answers: str, seed: int) -> None:
    """Complex questions over the rows of TABLES (.csv with a header, or .jsonl of objects; the
    first column names the rows), each with its simple-question decomposition and answers
    computed by the symbolic operations; usable as the decompose job's `pool` or `data`."""
    from jobs.decompose.export import write_atomic
    from jobs.decompose.synthetic import question_count, tables_record, toyworld_record
    from jobs.decompose.tables import read_table

    if not tables and not toyworld:
        raise OrchestrateError("nothing to make: give one or more TABLES, or --toyworld N")
    if Path(output).suffix != ".json":
        raise OrchestrateError(f"{output}: the output is a DROP release file and must end in .json "
                               "(the decompose job reads annotated pools from .json files)")
    record = tables_record([read_table(t) for t in tables], per_table, seed)
    empty = [t for t, entry in zip(tables, record.values()) if not entry["qa_pairs"]]
    if empty:
        raise OrchestrateError(f"{', '.join(empty)}: no numeric column, so no question can be made "
                               "(a column is numeric when every cell holds a number)")
    if toyworld:
        record.update(toyworld_record(toyworld, seed, toyworld_answers))  # type: ignore[arg-type]
    write_atomic(output, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    click.echo(f"{output}\t{question_count(record)} questions")


@data.command("export-finetune")
@click.argument("sources", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="the JSONL file to write")
@click.option("--calls", type=click.Choice(["qd", "qa", "both"]), default="both", show_default=True,
              help="the decomposer's rows (qd), the simple-question answerer's (qa), or both")
@click.option("--shots", default=0, show_default=True, type=click.IntRange(min=0),
              help="few-shot examples in each prompt (0: the prompt a job with shots: 0 sends)")
@click.option("--seed", default=0, show_default=True, type=int, help="seeds the choice of few-shot examples")
def export_finetune(sources: tuple[str, ...], output: str, calls: str, shots: int, seed: int) -> None:
    """Chat rows (JSONL, {"messages": [...]}) of the decompose job's QD and/or QA calls, from
    annotated decompositions: SOURCES are files in the authors' format (e.g. the output of
    synth-decompositions) or the bundled pools `sample` and `multihop`."""
    from jobs.decompose.dataset import load_pool
    from jobs.decompose.export import CALLS, finetune_rows, write_jsonl
    from jobs.decompose.job import BUNDLED_SETS, bundled_pool

    if Path(output).suffix != ".jsonl":
        raise OrchestrateError(f"{output}: the output is JSONL (one chat row a line) and must end in .jsonl")
    pool = []
    for source in sources:
        if source in BUNDLED_SETS:
            pool += bundled_pool(source)
        elif not Path(source).is_file():
            raise OrchestrateError(f"{source}: no such file (nor a bundled pool: {', '.join(BUNDLED_SETS)})")
        else:
            pool += load_pool(source)
    repeated = sorted(i for i, n in Counter(q.query_id for q in pool).items() if n > 1)
    if repeated:
        raise OrchestrateError(f"query id(s) {repeated[:5]} appear in more than one source: each question once")
    chosen = CALLS if calls == "both" else (calls,)
    rows = finetune_rows(pool, chosen, shots, seed)  # type: ignore[arg-type]
    write_jsonl(rows, output)
    counts = {c: sum(1 for r in rows if r["call"] == c) for c in chosen}
    click.echo(f"{output}\t{len(rows)} rows ({', '.join(f'{n} {c}' for c, n in counts.items())}) "
               f"from {len(pool)} annotated questions")
