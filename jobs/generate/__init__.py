"""`generate`: prompts through a model with the sweep's sampling parameters (`job`)."""
