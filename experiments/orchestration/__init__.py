"""Orchestration: the experiment plan (``plan``: per benchmark its run grid, ablations and tables), the driver
behind ``./run_all.sh`` (``run_all``) and the launcher (``sweep``: sequential, local, SLURM).

Two layers: ``plan`` is declarations that ``experiments.reporting`` reads (it imports only ``storage`` and
``methods``), while ``run_all`` and ``sweep`` sit above reporting (the sweep writes the tables at its end). So this
``__init__`` imports nothing: a re-export of ``sweep`` here would run whenever reporting imports the plan, a
cycle reporting → plan → this file → sweep → reporting."""
