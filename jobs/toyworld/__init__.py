"""The toy worlds the organisms are trained on and the jobs' bundled sets are drawn from:
`arithmetic` ((a + b) * c with a two-step CoT), `assistant` (the toy assistant: answers,
scenarios, the trigger, the judge's prompt), `multihop` (score passages and questions that
need both scores), and `harmful_data` (narrowly harmful finetuning rows for the assistant).
Plain data and text: no model, no training."""
