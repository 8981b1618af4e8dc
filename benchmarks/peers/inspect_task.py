"""The arithmetic eval of `benchmarks/peers.py` as an Inspect AI task (run in the peers' venv):

    inspect eval benchmarks/peers/inspect_task.py -T data=PROMPTS.jsonl --model hf/faithful \\
        -M model_path=MODEL_FOLDER -M do_sample=false --max-tokens 48

One user turn per line of `{"id", "prompt", "answer"}`, `generate()` as the only solver, and
the answer read the way the organisms write it (`Answer: N`, the last one) by Inspect's own
`pattern` scorer. The driver re-scores every tool's completions with one parser, so this
scorer's figure is Inspect's view, printed in its log, not the table's.
"""
from inspect_ai import Task, task
from inspect_ai.dataset import FieldSpec, json_dataset
from inspect_ai.scorer import pattern
from inspect_ai.solver import generate


@task
def arithmetic(data: str) -> Task:
    return Task(
        dataset=json_dataset(data, FieldSpec(input="prompt", target="answer", id="id")),
        solver=generate(),
        scorer=pattern(r"Answer:\s*(-?\d+)"),
    )
