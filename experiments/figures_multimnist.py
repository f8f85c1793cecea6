"""Command: Multi-MNIST's Figure 2 (table and figure) alone, ``python experiments/figures_multimnist.py --results DIR``
(the code: ``experiments/reporting/multimnist.py``; ``--help`` for the options)."""
import sys

from experiments.reporting.multimnist import main

if __name__ == "__main__":
    sys.exit(main())
