"""Command: the paper's tables from the finished runs, ``python experiments/make_tables.py [--results results]`` (the
code: ``experiments/reporting/tables.py``; ``--help`` for the options)."""
import sys

from experiments.reporting.tables import main

if __name__ == "__main__":
    sys.exit(main())
