"""Orchestration: the experiment plan (``plan``: per benchmark its run grid, ablations and tables), the driver
behind ``./run_all.sh`` (``run_all``) and the launcher (``sweep``: sequential, local, SLURM)."""
