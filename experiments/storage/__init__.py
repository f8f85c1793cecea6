"""Results storage: the run-folder layout, metrics.csv columns, locks, atomic writes (``results_io``) and the
optional output sinks (``sinks``). Imports nothing else of ``experiments`` (and not torch at import time)."""
