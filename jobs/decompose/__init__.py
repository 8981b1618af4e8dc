"""`decompose`: successive prompting on DROP.

A decomposer proposes the next simple question, an answerer (or code, for symbolic steps:
`symbolic`) answers it, until the decomposer says stop (`job`, prompts in `prompts`,
few-shot examples chosen in `fewshot`). The final answer is scored with the official DROP
metric (`drop`) beside single-pass arms; `summary` reports the gain with paired intervals.
DROP's published formats are read by `dataset`."""
