"""The paper's illustrative example (Figure 1): linear regression with two shared parameters W = (w1, w2),
a main task and a helpful auxiliary with optimum (1, 1), a harmful auxiliary with optimum (−1, −4).

    python experiments/train_toy.py            # every method, then results/figures/toy.png and tables/toy.md

The paper's settings: 1,000 training samples, label noise std 5 for the main task and 0.25 for the helpful
auxiliary, Adam lr 1e-2, batch 256, 1,000 epochs. Not stated there, our choices: x ~ N(0, I₂), harmful noise
std 0.25, W starts at (0, 0), p learned every 25 steps from training batches (the paper's default). Runs on a
CPU in seconds each. The figure shows AuxiNash's bargaining powers over training and the main-task loss
landscape with its optimum, the main-task-only (STL) solution and AuxiNash's; the table compares every
method's main-task test loss (10,000 fresh samples, whose noise alone gives 25).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from experiments.benchmarks import ToyBenchmark  # noqa: E402
from experiments.loop import TrainConfig, run_directory, train  # noqa: E402
from methods import METHOD_NAMES  # noqa: E402


def draw(runs: dict, benchmark: ToyBenchmark, path: str) -> None:
    """Bargaining powers over training, and the main-task loss landscape with the solutions."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if "auxinash" in runs:
        train_rows = runs["auxinash"][runs["auxinash"].split == "train"]
        for task, colour in zip(benchmark.task_names, ("black", "tab:green", "tab:red")):
            left.plot(train_rows["step"], train_rows[f"p_{task}"], label=f"p {task}", color=colour)
        left.set_xlabel("step")
        left.set_ylabel("bargaining power p")
        left.set_title("AuxiNash: learned bargaining power")
        left.legend()
    w1, w2 = np.meshgrid(np.linspace(-2.5, 3.0, 200), np.linspace(-5.0, 3.0, 200))
    x, y = benchmark.train["x"].cpu().numpy(), benchmark.train["main"].cpu().numpy()
    residual = x[:, 0, None, None] * w1 + x[:, 1, None, None] * w2 - y[:, None, None]
    loss = (residual**2).mean(0)
    right.contourf(w1, w2, np.log(loss), levels=30, cmap="viridis")
    right.plot(*benchmark.optima["main"], "w*", markersize=14, label="optimum W* = (1, 1)")
    right.plot(*benchmark.optima["harmful"], "rx", markersize=10, label="harmful optimum (−1, −4)")
    for method, marker in (("stl", "o"), ("equal", "s"), ("auxinash", "D")):
        if method in runs:
            path_rows = runs[method][runs[method].split == "test"]
            right.plot(path_rows["w1"], path_rows["w2"], "-", color="white", alpha=0.4)
            right.plot(path_rows["w1"].iloc[-1], path_rows["w2"].iloc[-1], marker, label=f"{method} final W")
    right.set_xlim(-2.5, 3.0)
    right.set_ylim(-5.0, 3.0)
    right.set_xlabel("w1")
    right.set_ylabel("w2")
    right.set_title("main-task training loss (log)")
    right.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--meta-every", type=int, default=25)
    parser.add_argument("--out", default="results")
    parser.add_argument("--force", action="store_true", help="train again even where a run finished")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    runs = {}
    for method in args.methods:
        benchmark = ToyBenchmark(torch.device("cpu"), args.seed, epochs=args.epochs)
        config = TrainConfig(method=method, main_task="main", seed=args.seed, lr=1e-2, meta_every=args.meta_every,
                             out=args.out, resume=True, force=args.force, flags=vars(args))
        train(benchmark, config)
        runs[method] = pd.read_csv(os.path.join(run_directory(benchmark, config), "metrics.csv"))
    draw(runs, ToyBenchmark(torch.device("cpu"), args.seed, epochs=args.epochs),
         os.path.join(args.out, "figures", "toy.png"))
    table = pd.DataFrame([{"method": m, "main-task test MSE": r[r.split == "test"]["main_mse"].iloc[-1],
                           "final w1": r[r.split == "test"]["w1"].iloc[-1], "final w2": r[r.split == "test"]["w2"].iloc[-1]}
                          for m, r in runs.items()])
    os.makedirs(os.path.join(args.out, "tables"), exist_ok=True)
    with open(os.path.join(args.out, "tables", "toy.md"), "w") as f:
        f.write(f"Illustrative example (experiments/train_toy.py, seed {args.seed}, {args.epochs} epochs, CPU). "
                "The noise of the main task alone gives a test MSE of 25.\n\n")
        f.write("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n")
        for row in table.itertuples(index=False):
            f.write(f"| {row[0]} | " + " | ".join(f"{value:.4f}" for value in row[1:]) + " |\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
