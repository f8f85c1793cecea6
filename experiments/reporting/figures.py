"""Figures from the runs' metrics.csv files: ``results/figures/*.png``.

    python experiments/make_figures.py [--results results] [--include-unfinished]

Only finished runs are drawn unless ``--include-unfinished``; the runs left out are listed in a warning.

- ``<benchmark>_auxinash_weights.png``: AuxiNash's bargaining powers p (top) and the share of each task in
  the weights α (bottom) over training, one panel per main task (as the paper's Figure 4); seed 0.
- ``<benchmark>_curves.png``: each task's first test metric over training for every method, from the run
  whose main task it is (or the multi-task run); seed 0.
- ``multimnist_figure2.png``: the paper's Figure 2 (``reporting/multimnist.py``).
- ``multimnist_aux_weights.png``: issue 23's AuxiNash p and baseline weights (``reporting/multimnist_aux.py``).
- ``cifar10_ssl_cpu_weights.png``: the CPU-scale CIFAR-10 preset's p and weights (``reporting/cifar_cpu.py``).
The illustrative example draws its own figure (``experiments/train_toy.py``).
"""
from __future__ import annotations

import glob
import logging
import os
import sys


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments.reporting import cifar_cpu, multimnist, multimnist_aux
from experiments.reporting.command import results_command
from experiments.storage.results_io import (RUN_FILES, SPLIT, STEP, TRAIN_SPLIT, RunError, RunFolder, p_column,
                                            read_json, read_metrics, save_figure, select_runs, weight_column)

log = logging.getLogger("make_figures")


def runs_of(results: str, benchmark: str, seed: int = 0, include_unfinished: bool = False):
    """(method folder, main folder, config, metrics) of every finished run of ``benchmark`` with this seed
    (every run with a metrics.csv under ``include_unfinished``)."""
    for run_dir in select_runs(results, benchmark, include_unfinished)[0]:
        run = RunFolder.parse(run_dir)
        if run.seed != seed:
            continue
        try:
            rows = read_metrics(os.path.join(run_dir, RUN_FILES["metrics"]))
        except RunError as error:
            log.warning("leaving out %s: %s", run_dir, error)
            continue
        yield run.method_folder, run.main_folder, read_json(run.file("config")), rows


def weights_figure(results: str, benchmark: str, path: str, include_unfinished: bool = False) -> bool:
    runs = [(main, config, rows) for method, main, config, rows in runs_of(results, benchmark, 0, include_unfinished)
            if method == "auxinash"]
    if not runs:
        return False
    figure, axes = plt.subplots(2, len(runs), figsize=(4.5 * len(runs), 6), squeeze=False)
    for column, (main, config, rows) in enumerate(runs):
        train_rows = rows[rows[SPLIT] == TRAIN_SPLIT]
        tasks = config["tasks"]
        alpha = train_rows[[weight_column(t) for t in tasks]]
        share = alpha.div(alpha.sum(axis=1), axis=0)
        for task in tasks:
            axes[0, column].plot(train_rows[STEP], train_rows[p_column(task)], label=task)
            axes[1, column].plot(train_rows[STEP], share[weight_column(task)], label=task)
        axes[0, column].set_title(f"main task: {main.removeprefix('main-')}")
        axes[0, column].set_ylabel("bargaining power p")
        axes[1, column].set_ylabel("share of α")
        axes[1, column].set_xlabel("step")
        axes[0, column].legend(fontsize=8)
    figure.suptitle(f"{benchmark}: AuxiNash bargaining power and task weights (seed 0)")
    figure.tight_layout()
    save_figure(figure, path, dpi=110)
    plt.close(figure)
    return True


def curves_figure(results: str, benchmark: str, path: str, include_unfinished: bool = False) -> bool:
    runs = list(runs_of(results, benchmark, 0, include_unfinished))
    if not runs:
        return False
    tasks = runs[0][2]["tasks"]
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for column, task in enumerate(tasks):
        axis = axes[0, column]
        for method, main, config, rows in runs:
            if main not in (f"main-{task}", "main-all"):
                continue
            test = rows[rows[SPLIT] == "test"]
            metric = next((c for c in test.columns if c.startswith(f"{task}_") and test[c].notna().any()), None)
            if metric is not None:
                axis.plot(test[STEP], test[metric], label=method)
                axis.set_ylabel(metric)
        axis.set_title(f"{task} (as main task)")
        axis.set_xlabel("step")
        if axis.lines:
            axis.legend(fontsize=7)
    figure.suptitle(f"{benchmark}: test metric of the main task over training (seed 0)")
    figure.tight_layout()
    save_figure(figure, path, dpi=110)
    plt.close(figure)
    return True


def make_figures(results: str = "results", include_unfinished: bool = False) -> list:
    out = os.path.join(results, "figures")
    os.makedirs(out, exist_ok=True)
    written = []
    benchmarks = sorted({os.path.basename(os.path.dirname(os.path.dirname(p)))
                         for p in glob.glob(os.path.join(results, "*", "*", "main-*"))} - {"toy", "multimnist", "multimnist_aux"})
    for benchmark in benchmarks:
        for name, draw in (("auxinash_weights", weights_figure), ("curves", curves_figure)):
            path = os.path.join(out, f"{benchmark}_{name}.png")
            if draw(results, benchmark, path, include_unfinished):
                written.append(path)
    written += multimnist.draw_figure(results, include_unfinished=include_unfinished)  # Figure 2
    written += multimnist_aux.draw_figure(results, include_unfinished=include_unfinished)  # p and weights
    written += cifar_cpu.draw_figure(results, include_unfinished=include_unfinished)  # the CPU preset's weights
    return written


def main(argv=None) -> int:
    return results_command(__doc__, make_figures, log, argv)


if __name__ == "__main__":
    sys.exit(main())
