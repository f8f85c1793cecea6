"""The paper's illustrative example (Figure 1): linear regression with two shared parameters W = (w1, w2),
a main task and a helpful auxiliary with optimum W* = (1, 1), a harmful auxiliary with optimum (−1, −4).

    python experiments/train_toy.py --seeds 0 1 2 3 4     # every method, 5 seeds, then the figure and table
    python experiments/train_toy.py --harmful-noise 0.25 --meta-val-size 0    # our earlier settings

The paper's settings: 1,000 training samples, label noise std 5 for the main task and 0.25 for the helpful
auxiliary, Adam lr 1e-2, batch 256, 1,000 epochs, p learned every 25 steps. Not stated there, our choices
(see experiments/training/benchmarks/toy.py for why): harmful label noise std 5 (``--harmful-noise``), p learned on a
held-out validation set of 1,000 samples (``--meta-val-size``; 0 = batches of the training set), x ~ N(0, I₂),
W starts at (0, 0). Runs on a CPU, a few seconds per run.

Writes, under --out: the runs (toy/<method>/main-*/seed<k>/metrics.csv), figures/toy.png (left: AuxiNash's
bargaining powers over training, every seed; right: the main-task training loss of the first seed with W*, the
harmful optimum, the training-set least-squares optimum ■ and the trajectories of STL, Equal and AuxiNash),
tables/toy_runs.csv (one row per method and seed), tables/toy_curves.csv (W and p after every evaluation of
every run), tables/toy.csv and tables/toy.md (mean ± std over seeds of
‖W − W*‖, the main-task test MSE on 10,000 fresh samples, whose noise alone gives 25, and the final p).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Dict, Sequence, Tuple


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from experiments.training.benchmarks import ToyBenchmark
from experiments.training.benchmarks.toy import DEFAULT_HARMFUL_NOISE, DEFAULT_META_VAL_SIZE
from experiments.training.cli import non_negative_float, non_negative_int, positive_int
from experiments.training.loop import TrainConfig, train
from experiments.storage.results_io import RUN_FILES, save_figure, write_frame, write_text
from methods import METHOD_NAMES

DEFAULT_EPOCHS = 1000
W_STAR = np.array([1.0, 1.0])
COLOURS = {"main": "black", "helpful": "tab:green", "harmful": "tab:red"}
PATH_STYLE = {"stl": ("white", "-"), "equal": ("tab:gray", "--"), "auxinash": ("tab:orange", "-")}

Runs = Dict[Tuple[str, int], pd.DataFrame]


def run_tag(epochs: int, harmful_noise: float, meta_val_size: int) -> str:
    """Results-folder suffix naming the settings that differ from the defaults ('' for the defaults)."""
    parts = []
    if epochs != DEFAULT_EPOCHS:
        parts.append(f"e{epochs}")
    if harmful_noise != DEFAULT_HARMFUL_NOISE:
        parts.append(f"harm{harmful_noise:g}")
    if meta_val_size != DEFAULT_META_VAL_SIZE:
        parts.append(f"val{meta_val_size}")
    return "-".join(parts)


def make_benchmark(seed: int, args: argparse.Namespace) -> ToyBenchmark:
    return ToyBenchmark(torch.device("cpu"), seed, epochs=args.epochs, harmful_noise=args.harmful_noise,
                        meta_val_size=args.meta_val_size)


def trajectory(run: pd.DataFrame) -> Tuple[np.ndarray, np.ndarray]:
    """W after every evaluation, starting from W = (0, 0)."""
    rows = run[run.split == "test"]
    return np.r_[0.0, rows["w1"].to_numpy()], np.r_[0.0, rows["w2"].to_numpy()]


def final_rows(runs: Runs) -> pd.DataFrame:
    """One row per method and seed: final W, ‖W − W*‖, main-task test MSE and (AuxiNash) final p."""
    rows = []
    for (method, seed), run in runs.items():
        test, train_rows = run[run.split == "test"].iloc[-1], run[run.split == "train"]
        row = {"method": method, "seed": seed, "w1": test["w1"], "w2": test["w2"],
               "distance_to_w_star": float(np.hypot(test["w1"] - W_STAR[0], test["w2"] - W_STAR[1])),
               "main_test_mse": test["main_mse"]}
        for task in COLOURS:
            column = f"p_{task}"
            row[column] = train_rows[column].iloc[-1] if column in train_rows else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def curves(runs: Runs) -> pd.DataFrame:
    """W and (AuxiNash) p after every evaluation of every run: enough to draw the figure again."""
    frames = []
    for (method, seed), run in runs.items():
        test, train_rows = run[run.split == "test"], run[run.split == "train"]
        frame = pd.DataFrame({"method": method, "seed": seed, "step": test["step"].to_numpy(),
                              "w1": test["w1"].to_numpy(), "w2": test["w2"].to_numpy(),
                              "main_test_mse": test["main_mse"].to_numpy()})
        for task in COLOURS:
            if f"p_{task}" in train_rows:
                frame[f"p_{task}"] = train_rows[f"p_{task}"].to_numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def summarise(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 1; 0 for one seed) over seeds, per method, in the order the methods ran."""
    columns = ["distance_to_w_star", "main_test_mse", "p_main", "p_helpful", "p_harmful"]
    grouped = per_run.groupby("method", sort=False)[columns]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).fillna(0.0).add_suffix("_std"))
    summary.insert(0, "seeds", grouped.size())
    return summary.reset_index()


def markdown(per_run: pd.DataFrame, summary: pd.DataFrame, header: str) -> str:
    def cell(row, name, digits):
        mean, std = row[f"{name}_mean"], row[f"{name}_std"]
        return "–" if np.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    lines = [header, "",
             "| method | seeds | ‖W − W*‖ | main-task test MSE | p main | p helpful | p harmful |",
             "|---|---|---|---|---|---|---|"]
    for _, row in summary.iterrows():
        lines.append(f"| {row['method']} | {row['seeds']} | {cell(row, 'distance_to_w_star', 3)} | "
                     f"{cell(row, 'main_test_mse', 3)} | {cell(row, 'p_main', 2)} | {cell(row, 'p_helpful', 2)} | "
                     f"{cell(row, 'p_harmful', 2)} |")
    seeds = sorted(per_run["seed"].unique())
    distances = per_run.pivot(index="method", columns="seed", values="distance_to_w_star")
    distances = distances.loc[list(summary["method"])]
    lines += ["", "‖W − W*‖ per seed:", "", "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for method, row in distances.iterrows():
        lines.append(f"| {method} | " + " | ".join(f"{row[s]:.3f}" for s in seeds) + " |")
    return "\n".join(lines) + "\n"


def draw(runs: Runs, benchmark: ToyBenchmark, path: str) -> plt.Figure:
    """Figure 1: AuxiNash's p over training (every seed), and the main-task loss landscape of
    ``benchmark``'s seed with W*, the harmful optimum, the training-set optimum ■ and the trajectories."""
    seed = benchmark.seed
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    auxinash = sorted((s, run) for (m, s), run in runs.items() if m == "auxinash")
    for task, colour in COLOURS.items():
        for index, (s, run) in enumerate(auxinash):
            rows = run[run.split == "train"]
            left.plot(np.r_[0, rows["step"]], np.r_[1.0, rows[f"p_{task}"]], color=colour,
                      lw=2.0 if s == seed else 0.8, alpha=1.0 if s == seed else 0.35,
                      label=f"p {task}" if index == 0 else None)
    left.set_xlabel("step")
    left.set_ylabel("bargaining power p")
    left.set_title(f"AuxiNash: bargaining power p over training\n(bold: seed {seed}; thin: the other seeds)"
                   if len(auxinash) > 1 else "AuxiNash: bargaining power p over training")
    if auxinash:
        left.legend()
    else:
        left.text(0.5, 0.5, "AuxiNash not run", ha="center", va="center", transform=left.transAxes)

    x, y = benchmark.train["x"].cpu().double().numpy(), benchmark.train["main"].cpu().double().numpy()

    second, first, constant = x.T @ x / len(y), x.T @ y / len(y), y @ y / len(y)

    def landscape(axes, limits, levels):
        w1, w2 = np.meshgrid(np.linspace(*limits[0], 240), np.linspace(*limits[1], 240))
        # mean((Wᵀx − y)²) = Wᵀ(XᵀX/n)W − 2Wᵀ(Xᵀy/n) + mean(y²)
        loss = (second[0, 0] * w1**2 + 2 * second[0, 1] * w1 * w2 + second[1, 1] * w2**2
                - 2 * (first[0] * w1 + first[1] * w2) + constant)
        axes.contourf(w1, w2, np.log(loss), levels=levels, cmap="viridis")
        axes.set_xlim(*limits[0])
        axes.set_ylim(*limits[1])

    optimum = benchmark.main_task_optimum()
    landscape(right, ((-2.0, 2.5), (-4.8, 2.0)), 30)
    zoom = right.inset_axes([0.03, 0.55, 0.4, 0.42])  # around W*, where the end points differ
    landscape(zoom, ((0.5, 1.5), (0.5, 1.5)), 20)
    for axes, big in ((right, True), (zoom, False)):
        axes.plot(*optimum, "s", color="black", markeredgecolor="white", markersize=9 if big else 7,
                  label="main-task training optimum ■" if big else None)
        for method, (colour, style) in PATH_STYLE.items():
            if (method, seed) in runs:
                p1, p2 = trajectory(runs[(method, seed)])
                axes.plot(p1, p2, style, color=colour, lw=1.6 if big else 1.2,
                          label=f"{method} trajectory" if big else None)
                axes.plot(p1[-1], p2[-1], "o", color=colour, markeredgecolor="black", markersize=5)
        axes.plot(*benchmark.optima["main"], "*", color="gold", markeredgecolor="black", markersize=16 if big else 12,
                  label="W* = (1, 1)" if big else None)
    right.plot(*benchmark.optima["harmful"], "X", color="tab:red", markeredgecolor="white", markersize=11,
               label="harmful optimum (−1, −4)")
    right.set_xlabel("w1")
    right.set_ylabel("w2")
    right.set_title(f"main-task training loss (log), seed {seed}; inset: around W*")
    right.legend(fontsize=7, loc="lower right")
    zoom.tick_params(labelsize=6)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_figure(figure, path, dpi=120)
    plt.close(figure)
    return figure


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES,
                        help="methods to train (default: all)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=non_negative_int, nargs="+", default=None, help="seeds, all in this run (default: 0)")
    seeds.add_argument("--seed", type=non_negative_int, default=None, help="one seed (same as --seeds K)")
    parser.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help="epochs (paper: 1000)")
    parser.add_argument("--harmful-noise", type=non_negative_float, default=DEFAULT_HARMFUL_NOISE,
                        help="label noise std of the harmful auxiliary (not in the paper; ours: 5, the main "
                             "task's; 0.25 = the helpful auxiliary's)")
    parser.add_argument("--meta-val-size", type=non_negative_int, default=DEFAULT_META_VAL_SIZE,
                        help="held-out samples that p (AuxiNash) and the other meta-updates are learned on (ours: "
                             "1000); 0 draws the meta-validation batches from the training set")
    parser.add_argument("--meta-every", type=positive_int, default=25, help="steps between meta-updates (paper: 25)")
    parser.add_argument("--out", default="results", help="results root")
    parser.add_argument("--force", action="store_true", help="train again even where a run finished")
    args = parser.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else [0 if args.seed is None else args.seed]
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds holds a seed twice: {args.seeds}")
    args.methods = list(dict.fromkeys(args.methods))
    return args


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Train every method and seed, write the figure and tables; return the per-run table."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    tag = run_tag(args.epochs, args.harmful_noise, args.meta_val_size)
    flags = {k: v for k, v in vars(args).items() if k not in ("seeds", "seed")}
    runs: Runs = {}
    for seed in args.seeds:
        for method in args.methods:
            benchmark = make_benchmark(seed, args)
            config = TrainConfig(method=method, main_task="main", seed=seed, lr=1e-2, meta_every=args.meta_every,
                                 out=args.out, tag=tag, resume=True, force=args.force, flags=flags)
            run_dir = train(benchmark, config)
            runs[(method, seed)] = pd.read_csv(os.path.join(run_dir, RUN_FILES["metrics"]))
    per_run = final_rows(runs)
    summary = summarise(per_run)
    suffix = f"_{tag}" if tag else ""
    figure_path = os.path.join(args.out, "figures", f"toy{suffix}.png")
    draw(runs, make_benchmark(args.seeds[0], args), figure_path)
    tables = os.path.join(args.out, "tables")
    os.makedirs(tables, exist_ok=True)
    write_frame(os.path.join(tables, f"toy{suffix}_runs.csv"), per_run)
    write_frame(os.path.join(tables, f"toy{suffix}.csv"), summary)
    write_frame(os.path.join(tables, f"toy{suffix}_curves.csv"), curves(runs), float_format="%.6g")
    header = (f"Illustrative example (`experiments/train_toy.py`; {args.epochs} epochs, harmful label noise std "
              f"{args.harmful_noise:g}, p learned on "
              + (f"{args.meta_val_size} held-out samples" if args.meta_val_size else "training batches")
              + f"; seeds {' '.join(map(str, args.seeds))}; CPU). Mean ± std over seeds of the final ‖W − W*‖, "
              "the main-task test MSE on 10,000 fresh samples (the label noise alone gives 25) and AuxiNash's "
              "final bargaining powers p.")
    text = markdown(per_run, summary, header)
    write_text(os.path.join(tables, f"toy{suffix}.md"), text)
    print(text)
    print(f"figure: {figure_path}")
    return per_run


if __name__ == "__main__":
    main()
