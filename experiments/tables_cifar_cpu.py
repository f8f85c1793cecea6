"""Command: semi-supervised CIFAR-10 at CPU scale (the plan's ``cifar10_ssl_cpu``: calibration, table, figure) alone,
``python experiments/tables_cifar_cpu.py --results DIR`` (the code: ``experiments/reporting/cifar_cpu.py``;
``--help`` for the options)."""
import sys

from experiments.reporting.cifar_cpu import main

if __name__ == "__main__":
    sys.exit(main())
