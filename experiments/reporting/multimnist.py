"""Multi-MNIST: the paper's Figure 2 (task-1 vs task-2 test accuracy) and the table of its points.

    python experiments/figures_multimnist.py [--results results]     (also called by make_figures / make_tables)

Each finished run (``status.json`` present) of ``<results>/multimnist/`` is one point: both tasks' test accuracy
at the epoch of the best mean validation accuracy over the two tasks (both are main tasks). Families:
AuxiNash with fixed p = (p₁, 1 − p₁) (folders ``auxinash_p<p1>``), Nash-MTL over seeds (``nashmtl``), linear
scalarisation with weights (w₁, 1 − w₁) (``equal_w<w1>``); any other method folder is drawn in grey. Further seeds
of one p₁ are diamonds (the line joins each p₁'s mean) and get the table's section of ranges over seeds; when
LS's extremes stretch the axes, a second panel zooms on the AuxiNash and Nash-MTL points.
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


def ranges(group: pd.DataFrame) -> dict:
    """Range of each task's test accuracy and of their difference (left − right) over the runs of ``group``."""
    difference = group.test_left - group.test_right
    return {"left_min": group.test_left.min(), "left_max": group.test_left.max(),
            "right_min": group.test_right.min(), "right_max": group.test_right.max(),
            "diff_min": difference.min(), "diff_max": difference.max()}


def family_summary(points: pd.DataFrame) -> pd.DataFrame:
    """Per family: count, ``ranges``, the spread of the difference (left − right) and the Spearman correlation of the
    preference with it (AuxiNash, LS)."""
    rows = []
    for family, group in points.groupby("family", sort=False):
        span = ranges(group)
        rows.append({"family": FAMILIES.get(family, family), "runs": len(group), **span,
                     "diff_spread": span["diff_max"] - span["diff_min"],
                     "spearman_pref_diff": spearman(group.preference, group.test_left - group.test_right)
                     if group.preference.notna().all() else float("nan")})
    return pd.DataFrame(rows)


def seed_spread(points: pd.DataFrame) -> pd.DataFrame:
    """Per (family, preference) run with more than one seed: the seeds (comma-separated) and their ``ranges``."""
    rows = []
    for (family, preference), group in points.dropna(subset=["preference"]).groupby(["family", "preference"]):
        if group.seed.nunique() > 1:
            rows.append({"family": family, "preference": preference,
                         "seeds": ", ".join(str(s) for s in sorted(group.seed)), **ranges(group)})
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
    repeats = seed_spread(points)
    if len(repeats):
        lines += ["", "Seeds of one setting (AuxiNash's p₁, LS's w₁ run with more than one seed): range over the seeds "
                      "of each task's test accuracy and of their difference (left − right).", "",
                  "| method | p₁ / w₁ | seeds | task 1 range | task 2 range | difference range |", "|---|---|---|---|---|---|"]
        for _, row in repeats.iterrows():
            lines.append(f"| {FAMILIES.get(row.family, row.family)} | {row.preference:g} | {row.seeds} | "
                         f"{row.left_min:.2f} – {row.left_max:.2f} | {row.right_min:.2f} – {row.right_max:.2f} | "
                         f"{row.diff_min:+.2f} – {row.diff_max:+.2f} |")
    md_path = os.path.join(out, "multimnist.md")
    write_text(md_path, "\n".join(lines) + "\n")
    return [md_path, csv_path]


def draw_points(axis, points: pd.DataFrame, annotate: bool = True):
    """Every run of ``points`` on ``axis``: AuxiNash coloured by p₁, a grey line through its mean point per p₁ (over
    seeds), LS as squares coloured by w₁, Nash-MTL as crosses, other methods as grey triangles. Returns AuxiNash's
    scatter (for the colour bar) or None."""
    colormap, norm = plt.get_cmap("viridis"), matplotlib.colors.Normalize(0, 1)
    scatter = None
    aux = points[points.family == "auxinash"].sort_values(["preference", "seed"])
    if len(aux):
        means = aux.groupby("preference")[["test_left", "test_right"]].mean()
        axis.plot(means.test_left, means.test_right, color="0.8", lw=0.8, zorder=1)
        first = aux.seed == aux.groupby("preference").seed.transform("min")  # further seeds of a p₁: diamonds
        scatter = axis.scatter(aux.test_left[first], aux.test_right[first], c=aux.preference[first], cmap=colormap,
                               norm=norm, s=60, edgecolors="k", linewidths=0.5, label=FAMILIES["auxinash"], zorder=3)
        if (~first).any():
            axis.scatter(aux.test_left[~first], aux.test_right[~first], c=aux.preference[~first], cmap=colormap,
                         norm=norm, marker="D", s=40, edgecolors="k", linewidths=0.5, zorder=3,
                         label=f"{FAMILIES['auxinash']}, further seeds")
        if annotate:
            for _, row in aux[first].iterrows():
                axis.annotate(f"{row.preference:g}", (row.test_left, row.test_right), textcoords="offset points",
                              xytext=(4, 4), fontsize=7)
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
    axis.grid(alpha=0.3)
    return scatter


def zoom_box(points: pd.DataFrame, margin: float = 0.08) -> Optional[Tuple[Tuple[float, float], Tuple[float, float]]]:
    """((x0, x1), (y0, y1)) around the AuxiNash and Nash-MTL points with ``margin`` of their range on each side, or
    None when no other point lies outside it (a zoomed panel would repeat the first)."""
    inner = points[points.family.isin(["auxinash", "nashmtl"])]
    if inner.empty:
        return None
    box = []
    for column in ("test_left", "test_right"):
        low, high = inner[column].min(), inner[column].max()
        pad = max(margin * (high - low), 0.05)
        box.append((low - pad, high + pad))
    (x0, x1), (y0, y1) = box
    outside = ~points.test_left.between(x0, x1) | ~points.test_right.between(y0, y1)
    return (box[0], box[1]) if outside.any() else None


def draw_figure(results: str, points: Optional[pd.DataFrame] = None, include_unfinished: bool = False) -> List[str]:
    """figures/multimnist_figure2.png: every point of ``points``; when LS (or another method) stretches the axes
    beyond AuxiNash's and Nash-MTL's points, a second panel zooms on those (the box drawn in the first)."""
    points = collect_points(results, not include_unfinished) if points is None else points
    if points.empty:
        return []
    out = os.path.join(results, "figures")
    os.makedirs(out, exist_ok=True)
    box = zoom_box(points)
    figure, axes = plt.subplots(1, 2 if box else 1, figsize=(12.4 if box else 6.4, 5.6), squeeze=False)
    axis = axes[0, 0]
    scatter = draw_points(axis, points, annotate=box is None)
    axis.set_xlabel("task 1 (top-left digit): test accuracy (%)")
    axis.set_ylabel("task 2 (bottom-right digit): test accuracy (%)")
    axis.legend(fontsize=8, loc="lower left")
    axis.set_title("Multi-MNIST: fixed bargaining powers steer the trade-off", fontsize=10)
    if box:
        (x0, x1), (y0, y1) = box
        axis.add_patch(matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", color="0.4"))
        zoom = axes[0, 1]
        draw_points(zoom, points)
        zoom.set_xlim(x0, x1)
        zoom.set_ylim(y0, y1)
        zoom.set_xlabel("task 1 test accuracy (%)")
        zoom.set_title("zoom on AuxiNash and Nash-MTL (dashed box)", fontsize=10)
    text = caption(points, left_out_note(results, [BENCHMARK], include_unfinished))
    figure.text(0.01, 0.005, "\n".join(wrap(text, 110 if box is None else 220)), fontsize=6.5, va="bottom")
    figure.tight_layout(rect=(0, 0.07, 0.96 if scatter is not None else 1, 1))
    if scatter is not None:  # after the layout: the colour bar takes its room from the panels' right edge
        figure.colorbar(scatter, ax=list(axes.ravel()), label="p₁ (AuxiNash) / w₁ (LS)", fraction=0.04, pad=0.02)
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
