"""`python -m orchestrator ...`: the `orchestrate` command from this copy of the code (a Ray
Job's entrypoint runs it so, from its working_dir, ahead of any installed copy)."""
from orchestrator.cli import main

main()
