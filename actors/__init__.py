"""Ray actors: long-lived processes that own accelerators (model replicas, finetuning ranks)."""
