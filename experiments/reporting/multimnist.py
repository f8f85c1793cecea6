"""Multi-MNIST: the paper's Figure 2 (task-1 vs task-2 test accuracy) and the table of its points.

    python experiments/figures_multimnist.py [--results results]     (also called by make_figures / make_tables)

Each finished run (``status.json`` present) of ``<results>/multimnist/`` is one point: both tasks' test accuracy
at the epoch of the best mean validation accuracy over the two tasks (both are main tasks). Families:
AuxiNash with fixed p = (p₁, 1 − p₁) (folders ``auxinash_p<p1>``), Nash-MTL over seeds (``nashmtl``), linear
scalarisation with weights (w₁, 1 − w₁) (``equal_w<w1>``); any other method folder is drawn in grey.
Writes ``tables/multimnist.md`` and ``.csv`` and ``figures/multimnist_figure2.png``.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Iterator, List, Optional, Tuple


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.storage.results_io import (RUN_FILES, RunError, read_json, read_metrics, save_figure, select_runs,
                                            write_frame, write_text)
from experiments.reporting.command import left_out_note, results_command, write_outputs
from methods import canonical_name

log = logging.getLogger("figures_multimnist")
BENCHMARK = "multimnist"
TASKS = ("left", "right")
FAMILIES = {"auxinash": "AuxiNash (fixed p)", "nashmtl": "Nash-MTL", "equal": "LS (fixed weights)"}


def best_val_point(rows: pd.DataFrame) -> dict:
    """Validation and test accuracy of both tasks at the round of the best mean validation accuracy."""
    val = rows[rows.split == "val"].set_index("round")
    test = rows[rows.split == "test"].set_index("round")
    columns = [f"{t}_acc" for t in TASKS]
    best = val[columns].mean(axis=1).idxmax()
    return {"best_round": int(best), **{f"val_{t}": float(val.loc[best, f"{t}_acc"]) for t in TASKS},
            **{f"test_{t}": float(test.loc[best, f"{t}_acc"]) for t in TASKS},
            "rounds": int(val.index.max()) + 1}


def run_records(results: str, benchmark: str, finished_only: bool = True) -> Iterator[Tuple[str, dict, pd.DataFrame]]:
    """(run folder, config.json, metrics.csv) of each finished run of ``benchmark`` (each run with a metrics.csv
    when not ``finished_only``); a run whose files cannot be read is named in a warning and left out."""
    for run_dir in select_runs(results, benchmark, include_unfinished=not finished_only)[0]:
        try:
            yield (run_dir, read_json(os.path.join(run_dir, RUN_FILES["config"])),
                   read_metrics(os.path.join(run_dir, RUN_FILES["metrics"])))
        except (OSError, ValueError, RunError) as error:
            log.warning("skipping %s: %s", run_dir, error)


def collect_points(results: str, finished_only: bool = True) -> pd.DataFrame:
    """One row per run: family, preference (p₁ or w₁; NaN for Nash-MTL), seed, the best-val point, config."""
    points = []
    for run_dir, config, rows in run_records(results, BENCHMARK, finished_only):
        try:
            point = best_val_point(rows)
        except (KeyError, ValueError) as error:
            log.warning("skipping %s: %s", run_dir, error)
            continue
        method = canonical_name(config["method"])
        family = method if method in FAMILIES else "other"
        preference = np.nan
        if method == "auxinash" and config.get("p"):
            preference = config["p"][0] / sum(config["p"])
        elif method == "equal" and config.get("weights"):
            preference = config["weights"][0] / sum(config["weights"])
        elif method == "equal":
            preference = 0.5
        points.append({"family": family, "run": os.path.relpath(run_dir, results), "preference": preference,
                       "seed": int(config["seed"]), **point, "preset": config.get("preset", "?"),
                       "data_note": config.get("data_note", ""), "n_train": config.get("n_train"),
                       "n_val": config.get("n_val"), "n_test": config.get("n_test"), "epochs": config.get("epochs"),
                       "device": config.get("device_name", "?"),
                       "synthetic": bool(config.get("synthetic_data"))})
    return pd.DataFrame(points)


def spearman(x: pd.Series, y: pd.Series) -> float:
    if len(x) < 3:
        return float("nan")
    return float(np.corrcoef(x.rank(), y.rank())[0, 1])


def family_summary(points: pd.DataFrame) -> pd.DataFrame:
    """Per family: count, range of each task's test accuracy and of their difference (left − right), and the
    Spearman correlation of the preference with that difference (AuxiNash, LS)."""
    rows = []
    for family, group in points.groupby("family", sort=False):
        difference = group.test_left - group.test_right
        rows.append({"family": FAMILIES.get(family, family), "runs": len(group),
                     "left_min": group.test_left.min(), "left_max": group.test_left.max(),
                     "right_min": group.test_right.min(), "right_max": group.test_right.max(),
                     "diff_min": difference.min(), "diff_max": difference.max(),
                     "diff_spread": difference.max() - difference.min(),
                     "spearman_pref_diff": spearman(group.preference, difference)
                     if group.preference.notna().all() else float("nan")})
    return pd.DataFrame(rows)


def caption(points: pd.DataFrame, note: str = "") -> str:
    """The table's and the figure's caption; ``note``: the sentence on runs left out or included unfinished."""
    first = points.iloc[0]
    notes = sorted(set(points.data_note.dropna()) - {""})
    devices = ", ".join(sorted(set(points.device)))
    text = (f"Multi-MNIST (paper Figure 2), preset '{first.preset}': {first.n_train} training + {first.n_val} "
            f"validation pairs, {first.n_test} test pairs, {first.epochs} epochs"
            + ("" if first.preset == "paper" else " (the paper: 108K + 12K, 20K, 50 epochs)")
            + f"; test accuracy (%) of both tasks at the epoch of the best mean validation accuracy; device {devices}.")
    if notes:
        text += " " + "; ".join(notes) + "."
    if (points.preset != first.preset).any():
        text += " MIXED PRESETS: " + ", ".join(sorted(set(points.preset))) + "."
    text += note
    if points.synthetic.any():  # digits written by data.synthetic (as make_tables marks the other tables)
        text = "SYNTHETIC SMOKE RUN, not comparable to the paper. " + text
    return text


def write_table(results: str, points: Optional[pd.DataFrame] = None, include_unfinished: bool = False) -> List[str]:
    points = collect_points(results, not include_unfinished) if points is None else points
    if points.empty:
        return []
    out = os.path.join(results, "tables")
    os.makedirs(out, exist_ok=True)
    ordered = points.assign(order=points.family.map({f: i for i, f in enumerate(FAMILIES)}).fillna(len(FAMILIES)))
    ordered = ordered.sort_values(["order", "preference", "seed"]).drop(columns="order")
    csv_path = os.path.join(out, "multimnist.csv")
    write_frame(csv_path, ordered)
    lines = [caption(points, left_out_note(results, [BENCHMARK], include_unfinished)), "",
             "| method | p₁ / w₁ | seed | task 1 (left) test acc | task 2 (right) test acc | best epoch |",
             "|---|---|---|---|---|---|"]
    for _, row in ordered.iterrows():
        preference = "" if pd.isna(row.preference) else f"{row.preference:g}"
        lines.append(f"| {FAMILIES.get(row.family, row.run)} | {preference} | {row.seed} | {row.test_left:.2f} | "
                     f"{row.test_right:.2f} | {row.best_round + 1} of {row.rounds} |")
    summary = family_summary(points)
    lines += ["", "Spread per method: range of each task's test accuracy and of their difference (left − right); "
                  "Spearman correlation of p₁ / w₁ with the difference.", "",
              "| method | runs | task 1 range | task 2 range | difference range | spread of difference | "
              "Spearman(preference, difference) |", "|---|---|---|---|---|---|---|"]
    for _, row in summary.iterrows():
        rho = "" if pd.isna(row.spearman_pref_diff) else f"{row.spearman_pref_diff:+.2f}"
        lines.append(f"| {row.family} | {row.runs} | {row.left_min:.2f} – {row.left_max:.2f} | "
                     f"{row.right_min:.2f} – {row.right_max:.2f} | {row.diff_min:+.2f} – {row.diff_max:+.2f} | "
                     f"{row.diff_spread:.2f} | {rho} |")
    md_path = os.path.join(out, "multimnist.md")
    write_text(md_path, "\n".join(lines) + "\n")
    return [md_path, csv_path]


def draw_figure(results: str, points: Optional[pd.DataFrame] = None, include_unfinished: bool = False) -> List[str]:
    points = collect_points(results, not include_unfinished) if points is None else points
    if points.empty:
        return []
    out = os.path.join(results, "figures")
    os.makedirs(out, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6.4, 5.6))
    colormap, norm = plt.get_cmap("viridis"), matplotlib.colors.Normalize(0, 1)
    aux = points[points.family == "auxinash"].sort_values("preference")
    if len(aux):
        axis.plot(aux.test_left, aux.test_right, color="0.8", lw=0.8, zorder=1)
        scatter = axis.scatter(aux.test_left, aux.test_right, c=aux.preference, cmap=colormap, norm=norm, s=60,
                               edgecolors="k", linewidths=0.5, label=FAMILIES["auxinash"], zorder=3)
        for _, row in aux.iterrows():
            axis.annotate(f"{row.preference:g}", (row.test_left, row.test_right), textcoords="offset points",
                          xytext=(4, 4), fontsize=7)
        figure.colorbar(scatter, ax=axis, label="p₁ (AuxiNash) / w₁ (LS)")
    ls = points[points.family == "equal"]
    if len(ls):
        axis.scatter(ls.test_left, ls.test_right, c=ls.preference, cmap=colormap, norm=norm, marker="s", s=40,
                     edgecolors="tab:red", linewidths=1.0, label=FAMILIES["equal"], zorder=2)
    nash = points[points.family == "nashmtl"]
    if len(nash):
        axis.scatter(nash.test_left, nash.test_right, marker="x", s=45, color="tab:red", linewidths=1.5,
                     label=f"{FAMILIES['nashmtl']} ({len(nash)} seed{'' if len(nash) == 1 else 's'})", zorder=4)
    other = points[points.family == "other"]
    if len(other):
        axis.scatter(other.test_left, other.test_right, marker="^", color="0.5", label="other", zorder=2)
    axis.set_xlabel("task 1 (top-left digit): test accuracy (%)")
    axis.set_ylabel("task 2 (bottom-right digit): test accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    axis.set_title("Multi-MNIST: fixed bargaining powers steer the trade-off", fontsize=10)
    text = caption(points, left_out_note(results, [BENCHMARK], include_unfinished))
    figure.text(0.01, 0.005, "\n".join(wrap(text, 110)), fontsize=6.5, va="bottom")
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    path = os.path.join(out, "multimnist_figure2.png")
    save_figure(figure, path, dpi=130)
    plt.close(figure)
    return [path]


def wrap(text: str, width: int) -> List[str]:
    import textwrap
    return textwrap.wrap(text, width)


def make_all(results: str = "results", include_unfinished: bool = False) -> List[str]:
    return write_outputs(results, collect_points, write_table, draw_figure, include_unfinished=include_unfinished)


def main(argv=None) -> int:
    return results_command(__doc__, make_all, log, argv)


if __name__ == "__main__":
    sys.exit(main())
