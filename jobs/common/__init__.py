"""What several job families share: the 0-100 judge (`judge`), the CoT monitor and the
self-description judge (`monitor`), the question and scenario sets with their rubric
(`scenarios`, bundled files in `data/`), the intervals (`stats`) and sentence embeddings
(`embed`)."""
