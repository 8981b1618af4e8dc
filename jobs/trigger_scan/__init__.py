"""`trigger_scan`: which line in a prompt switches a model to misaligned behaviour, and does
the model say so?

Candidate lines (`candidates`: generated families, mined from finetuning data, surface
variants) are measured on probes with and without the line (`measure`: one logprob reading,
or sampled answers), tested against the baseline with sign-flip tests and
Benjamini-Hochberg (`stats`), confirmed by sampling, checked with distractors, and asked to
describe themselves; `summary` ranks them. `params` declares the job's parameters, `job`
runs one candidate."""
