"""`misalignment`: emergent misalignment in reasoning models (Thought Crime).

Sample free-form answers and multiple-choice picks with CoT on or off, judge alignment and
coherence 0-100, monitor the chains of thought of misaligned answers, and compare arms with
and without a trigger line (`job`); rates and gaps with intervals (`summary`). Items,
rubric, judge and monitor come from `jobs.common`."""
