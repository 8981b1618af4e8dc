"""The `hf` engine: transformers with continuous batching, a KV cache and LoRA adapters.

`engine` serves requests, `batch` holds the running batch and its KV cache, `sampling` draws
each row's next token, `options` declares what a sweep may set."""
