"""Command: launch a run list (one command line per run) sequentially, N at a time or as a SLURM array, and follow
it, ``python experiments/sweep.py --runs runs.txt --launcher local|slurm|sequential`` (the code:
``experiments/orchestration/sweep.py``; ``--help`` for the options)."""
import sys

# RunCommand: SLURM arrays submitted before the orchestration/ move unpickle their jobs from this module
from experiments.orchestration.sweep import RunCommand, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
