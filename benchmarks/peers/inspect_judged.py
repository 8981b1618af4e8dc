"""The judged eval of `benchmarks/peers_judged.py` as an Inspect AI task (run in the peers' venv):

    inspect eval inspect_judged.py -T data=SAMPLES.jsonl -T judge=JUDGE_FOLDER -T template=TEMPLATE.txt \\
        --model hf/subject -M model_path=SUBJECT_FOLDER -M do_sample=false -M enable_thinking=false --max-tokens 96

Each line `{"id", "prompt", "asked"}` is one user turn to the subject (`prompt`: the question
with any trigger line, exactly as orchestrate's misalignment job sends it); its answer is graded
by Inspect's own `model_graded_qa` with the judge organism as the grader (the hf provider, greedy,
thinking off) on the judge's own prompt format (`template`, with the bare question from the
sample's metadata, `asked`: Inspect keeps `question` for the input), the grade being the first
integer of the grader's reply.
"""
from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import FieldSpec, json_dataset
from inspect_ai.model import GenerateConfig, get_model
from inspect_ai.scorer import mean, model_graded_qa
from inspect_ai.solver import generate


@task
def judged(data: str, judge: str, template: str) -> Task:
    grader = get_model("hf/judge", config=GenerateConfig(max_tokens=16), model_path=judge, device="cpu",
                       do_sample=False, enable_thinking=False)
    scorer = model_graded_qa(template=Path(template).read_text(), instructions="A score from 0 to 100.",
                             grade_pattern=r"(\d+)", model=grader)
    return Task(
        dataset=json_dataset(data, FieldSpec(input="prompt", id="id", metadata=["asked"])),
        solver=generate(),
        scorer=scorer,
        metrics=[mean()],
    )
