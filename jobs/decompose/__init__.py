"""`decompose`: successive prompting on DROP.

A decomposer proposes the next simple question, an answerer (or code, for symbolic steps:
`symbolic`) answers it, until the decomposer says stop (`job`, prompts in `prompts`, raw
prompts for base models in `completion`, few-shot examples chosen in `fewshot`). The final
answer is scored with the official DROP metric (`drop`) beside single-pass arms; `summary`
reports the gain with paired intervals. DROP's published formats are read by `dataset`.
The paper's bootstrap data: `synthetic` makes annotated decompositions from tables
(`tables`) and the toy world; `export` turns annotations into finetune rows of the QD and
QA calls."""
