"""The `vllm` engine: vLLM's LLMEngine in the replica's process (or its ranks' processes).

`engine` serves requests, `arguments` builds vllm.EngineArgs (LoRA slots, CPU defaults, CPU
rank binding), `options` declares what a sweep may set."""
