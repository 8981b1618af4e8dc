"""`ariadne`: causal audits of chain-of-thought faithfulness.

The subject answers with numbered steps (`traces`); each audited step is rewritten
(`operators`: a critic model or a deterministic edit), the rest regenerated, and the two
answers compared (`similarity`): phi = 1 - S, a violation when S > tau. A baseline arm and
Lanham et al.'s early answering, added mistakes, paraphrases and filler run on the same
traces (`audit`, `lanham`), by prefill or, for APIs that cannot continue a turn, by prompt;
`summary` gives phi, rho and the areas over the curves with cluster-bootstrap intervals.
Queries: the bundled set, the organisms' arithmetic, or a file (`queries`)."""
