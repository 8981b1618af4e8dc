"""Figures of a sweep's results, one small function per figure kind, one module per job
family (`common` holds what they share). Drawn with matplotlib's object API: no pyplot state,
no display, safe in a worker thread."""
