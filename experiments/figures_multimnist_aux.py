"""Command: Multi-MNIST in auxiliary mode (table and figure) alone, ``python experiments/figures_multimnist_aux.py
--results DIR`` (the code: ``experiments/reporting/multimnist_aux.py``; ``--help`` for the options)."""
import sys

from experiments.reporting.multimnist_aux import main

if __name__ == "__main__":
    sys.exit(main())
