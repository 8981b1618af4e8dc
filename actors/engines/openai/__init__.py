"""The `openai` engine: any OpenAI-compatible HTTP endpoint (an API, `vllm serve`).

`engine` sends requests with bounded concurrency and retries, `options` declares what a
sweep may set."""
