"""Command: the figures from the finished runs, ``python experiments/make_figures.py [--results results]`` (the code:
``experiments/reporting/figures.py``; ``--help`` for the options)."""
import sys

from experiments.reporting.figures import main

if __name__ == "__main__":
    sys.exit(main())
