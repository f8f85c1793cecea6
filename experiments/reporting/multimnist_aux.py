"""Multi-MNIST in auxiliary mode (issue 23, part 2): the table and the figure of learned task weights.

    python experiments/figures_multimnist_aux.py [--results results]   (also called by make_tables / make_figures)

Reads every finished run (``status.json`` present) of ``<results>/multimnist_aux/``; a run's result is the main
task's (``left``) test accuracy at the epoch of its best validation accuracy. Writes

- ``tables/multimnist_aux.md`` and ``.csv``: main-task test accuracy, mean ± std over seeds, per method (and
  variant: a ``--tag`` of the form ``<auxiliary set>_<variant>``, e.g. ``right-noise3-rotation_meta-lr0.05``) and
  auxiliary set, with the paired (same seed) difference to STL; each auxiliary's measured effect alone (Equal
  with that auxiliary alone − STL; every ``noise<k>`` head takes the effect of ``noise`` alone); AuxiNash's final
  p per task and seed, and whether it orders the auxiliaries as their measured effects do;
- ``figures/multimnist_aux_weights.png``: AuxiNash's p per task over training (every seed), beside the mean
  per-epoch weight that every other method whose weights move (GCS, OL-AUX, AuxiLearn and the methods not in
  the paper) gives each task divided by the main task's (every seed; AuxiLearn's weights grow by orders of
  magnitude over training, so only their ratios compare).
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
import textwrap
from typing import Dict, List, Optional


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.storage.results_io import (RUN_FILES, SPLIT, TRAIN_SPLIT, p_column, save_figure, weight_column,
                                            write_frame, write_text)
from experiments.reporting.command import left_out_note, results_command, write_outputs
from experiments.reporting.multimnist import run_records
from methods import METHOD_NAMES, METHODS, canonical_name

log = logging.getLogger("figures_multimnist_aux")
BENCHMARK = "multimnist_aux"
METHOD_ORDER = METHOD_NAMES
# drawn beside AuxiNash's p: every method whose weights move (all but STL, Equal and AuxiNash), in registry order
WEIGHT_METHODS = tuple(m for m in METHOD_NAMES if m not in ("stl", "equal", "auxinash"))
MIN_GAP = 1.0  # points: two auxiliaries' measured effects closer than this count as tied (seed noise is ~1 point)


def best_val(rows: pd.DataFrame) -> dict:
    val = rows[rows.split == "val"].set_index("round")["left_acc"]
    test = rows[rows.split == "test"].set_index("round")["left_acc"]
    best = val.idxmax()
    return {"best_round": int(best), "val": float(val[best]), "test": float(test[best]), "rounds": int(val.index.max()) + 1}


def collect_runs(results: str, finished_only: bool = True) -> pd.DataFrame:
    """One row per run: method, auxiliary set, seed, tasks, the best-val point, the last epoch's p and weights."""
    runs = []
    for run_dir, config, rows in run_records(results, BENCHMARK, finished_only):
        try:
            point = best_val(rows)
        except (KeyError, ValueError) as error:
            log.warning("skipping %s: %s", run_dir, error)
            continue
        last = rows[rows[SPLIT] == TRAIN_SPLIT].sort_values("round").iloc[-1]
        tasks = list(config["tasks"])
        aux_set = config.get("auxiliary_set", "?")
        tag = config.get("tag", "") or aux_set
        variant = tag[len(aux_set) + 1:] if tag.startswith(aux_set + "_") else ("" if tag == aux_set else tag)
        runs.append({"method": canonical_name(config["method"]), "aux_set": aux_set, "variant": variant,
                     "seed": int(config["seed"]), **point, "tasks": " ".join(tasks),
                     **{f"final_p_{t}": last.get(p_column(t), np.nan) for t in tasks},
                     **{f"final_weight_{t}": last.get(weight_column(t), np.nan) for t in tasks},
                     "run": os.path.relpath(run_dir, results), "preset": config.get("preset", "?"),
                     "n_train": config.get("n_train"), "n_val": config.get("n_val"), "n_test": config.get("n_test"),
                     "epochs": config.get("epochs"), "batch_size": config.get("batch_size"), "lr": config.get("lr"),
                     "olaux_lr": config.get("olaux_lr"), "data_note": config.get("data_note", ""),
                     "device": config.get("device_name", "?"), "synthetic": bool(config.get("synthetic_data"))})
    return pd.DataFrame(runs)


def stl_by_seed(runs: pd.DataFrame) -> Dict[int, float]:
    """STL's test accuracy per seed (its auxiliary set does not matter: STL trains the main task alone; the set
    ``none`` is preferred where several exist)."""
    stl = runs[(runs.method == "stl") & (runs.variant == "")].assign(pref=lambda d: (d.aux_set != "none").astype(int))
    stl = stl.sort_values(["seed", "pref"]).drop_duplicates("seed")
    return dict(zip(stl.seed, stl.test))


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, auxiliary set): seeds, mean and std of the test accuracy, paired difference to STL."""
    stl = stl_by_seed(runs)
    rows = []
    for (method, variant, aux_set), group in runs.groupby(["method", "variant", "aux_set"], sort=False):
        paired = [t - stl[s] for s, t in zip(group.seed, group.test) if s in stl]
        rows.append({"method": method, "variant": variant, "aux_set": aux_set, "seeds": len(group),
                     "seed_list": " ".join(str(s) for s in sorted(group.seed)), "mean": group.test.mean(),
                     "std": group.test.std(ddof=1) if len(group) > 1 else np.nan,
                     "vs_stl": np.mean(paired) if paired and method != "stl" else np.nan,
                     "vs_stl_std": np.std(paired, ddof=1) if len(paired) > 1 and method != "stl" else np.nan,
                     "vs_stl_seeds": len(paired) if method != "stl" else 0,
                     "above_stl": int(sum(d > 0 for d in paired)) if method != "stl" else 0})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["order"] = table.method.map({m: i for i, m in enumerate(METHOD_ORDER)}).fillna(len(METHOD_ORDER))
    table["n_aux"] = table.aux_set.str.count("-") + (table.aux_set != "none")
    return table.sort_values(["n_aux", "aux_set", "order", "variant"]).drop(columns="order").reset_index(drop=True)


def auxiliary_effects(table: pd.DataFrame) -> Dict[str, float]:
    """Measured effect of each single auxiliary: Equal with it alone − STL (paired mean over seeds), in points."""
    single = table[(table.method == "equal") & (table.n_aux == 1) & (table.variant == "")]
    return {row.aux_set: row.vs_stl for row in single.itertuples() if not pd.isna(row.vs_stl)}


def effect_of_task(task: str, effects: Dict[str, float]) -> float:
    """The measured effect that stands for a task: noise<k> heads take that of ``noise`` alone (not that of the
    set ``noise<k>`` of k noise heads, whose label is the same word)."""
    if task.startswith("noise") and task[5:].isdigit():
        return effects.get("noise", np.nan)
    return effects.get(task, np.nan)


def ordering(runs: pd.DataFrame, effects: Dict[str, float], min_gap: float = MIN_GAP) -> pd.DataFrame:
    """Per AuxiNash run: its final p per auxiliary, and how many pairs of auxiliaries whose measured effects
    differ by more than ``min_gap`` points p orders as the effects (concordant pairs / such pairs; closer effects,
    e.g. the noise heads', count as ties and are skipped)."""
    rows = []
    for run in runs[runs.method == "auxinash"].sort_values(["aux_set", "variant", "seed"]).itertuples():
        tasks = run.tasks.split()[1:]
        p = {t: getattr(run, f"final_p_{t}", np.nan) for t in tasks}
        effect = {t: effect_of_task(t, effects) for t in tasks}
        known = [t for t in tasks if not pd.isna(effect[t]) and not pd.isna(p[t])]
        pairs = [(a, b) for a, b in itertools.combinations(known, 2) if abs(effect[a] - effect[b]) > min_gap]
        concordant = sum((p[a] - p[b]) * (effect[a] - effect[b]) > 0 for a, b in pairs)
        ranked = sorted(known, key=lambda t: -p[t])
        rows.append({"aux_set": run.aux_set, "variant": run.variant, "seed": run.seed, "p_main": getattr(run, "final_p_left", np.nan),
                     **{f"p_{t}": p[t] for t in tasks}, "concordant": concordant, "pairs": len(pairs),
                     "order_matches": bool(pairs) and concordant == len(pairs),
                     "ranking": " > ".join(ranked)})
    return pd.DataFrame(rows)


def caption(runs: pd.DataFrame, note: str = "") -> str:
    """The table's and the figure's caption; ``note``: the sentence on runs left out or included unfinished."""
    first = runs.iloc[0]
    devices = ", ".join(sorted(set(runs.device)))
    text = (f"Multi-MNIST in auxiliary mode (main task: the top-left digit), preset '{first.preset}': "
            f"{int(first.n_train)} training + {int(first.n_val)} validation pairs, {int(first.n_test)} test pairs, "
            f"{first.epochs} epochs of batch {first.batch_size}, Adam {first.lr:g}; main-task test accuracy (%) at "
            f"the epoch of the best main-task validation accuracy; device {devices}.")
    if first.data_note:
        text += f" Data: {first.data_note}."
    if (runs.preset != first.preset).any():
        text += " MIXED PRESETS: " + ", ".join(sorted(set(runs.preset))) + "."
    text += note
    if runs.synthetic.any():
        text = "SYNTHETIC SMOKE RUN, not a result. " + text
    return text


def fmt(value: float, digits: int = 2, sign: bool = False) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def write_table(results: str, runs: Optional[pd.DataFrame] = None, include_unfinished: bool = False) -> List[str]:
    runs = collect_runs(results, not include_unfinished) if runs is None else runs
    if runs.empty:
        return []
    out = os.path.join(results, "tables")
    os.makedirs(out, exist_ok=True)
    table = summary(runs)
    effects = auxiliary_effects(table)
    order = ordering(runs, effects)
    csv_path = os.path.join(out, "multimnist_aux.csv")
    write_frame(csv_path, runs.sort_values(["aux_set", "method", "seed"]))
    lines = [caption(runs, left_out_note(results, [BENCHMARK], include_unfinished)), "",
             "Main-task test accuracy, mean ± std over seeds; Δ STL = mean over seeds of (run − STL of the same seed) "
             "± its std.", "",
             "| auxiliary set | method | seeds | test acc. (%) | Δ STL (points) | seeds above STL |",
             "|---|---|---|---|---|---|"]
    for row in table.itertuples():
        label = (METHODS[row.method].label if row.method in METHODS else row.method) + (f" ({row.variant})" if row.variant else "")
        if row.method in METHODS and not METHODS[row.method].in_paper:
            label += " (not in the paper)"
        lines.append(f"| {row.aux_set} | {label} | {row.seeds} ({row.seed_list}) | "
                     f"{fmt(row.mean)} ± {fmt(row.std)} | {fmt(row.vs_stl, sign=True)} ± {fmt(row.vs_stl_std)} | "
                     + (f"{row.above_stl} of {row.vs_stl_seeds} |" if row.vs_stl_seeds else "– |"))
    if effects:
        lines += ["", "Measured effect of each auxiliary alone (Equal with it alone − STL, points): "
                  + ", ".join(f"{name} {value:+.2f}" for name, value in sorted(effects.items(), key=lambda kv: -kv[1]))
                  + ". Each noise<k> head of a larger set is given the effect of `noise` alone."]
    if not order.empty:
        for (aux_set, variant), group in order.groupby(["aux_set", "variant"], sort=False):
            tasks = [c[2:] for c in group.columns if c.startswith("p_") and c != "p_main" and group[c].notna().any()]
            name = "AuxiNash" + (f" ({variant})" if variant else "")
            lines += ["", f"{name}'s final p (last epoch), auxiliary set {aux_set}; ordered pairs: of the pairs of "
                          f"auxiliaries whose measured effects differ by more than {MIN_GAP:g} point, those that p "
                          "orders as the effects.", "",
                      "| seed | p left | " + " | ".join(f"p {t} (effect {fmt(effect_of_task(t, effects), sign=True)})"
                                                        for t in tasks) + " | ordered pairs | order by p |",
                      "|---" * (len(tasks) + 4) + "|"]
            for row in group.itertuples():
                lines.append(f"| {row.seed} | {fmt(row.p_main, 3)} | "
                             + " | ".join(fmt(getattr(row, f'p_{t}'), 3) for t in tasks)
                             + f" | {row.concordant}/{row.pairs} | {row.ranking} |")
            matched = int(group.order_matches.sum())
            lines += ["", f"p orders every such pair as the measured effects in {matched} of {len(group)} seeds."]
    finals = runs[runs.method.isin(WEIGHT_METHODS)]
    if not finals.empty:
        lines += ["", "Last epoch's mean weight of each auxiliary divided by the main task's (GCS: share of steps "
                      "its gradient joined; OL-AUX: its weight, the main task's being 1; AuxiLearn: ∂L_T/∂L_k; the "
                      "methods not in the paper: the weights they report, README \"Choices and known differences\"), "
                      "mean over seeds; after \"main\", the main task's own weight.", ""]
        for (method, aux_set), group in finals[finals.variant == ""].groupby(["method", "aux_set"], sort=False):
            tasks = group.tasks.iloc[0].split()
            relative = {t: (group[f"final_weight_{t}"] / group["final_weight_left"]).mean() for t in tasks[1:]}
            lines.append(f"- {METHODS[method].label} ({aux_set}, {len(group)} seeds; main "
                         f"{group['final_weight_left'].mean():.3g}): "
                         + ", ".join(f"{t} {value:.3f}" for t, value in relative.items()))
    md_path = os.path.join(out, "multimnist_aux.md")
    write_text(md_path, "\n".join(lines) + "\n")
    return [md_path, csv_path]


def series(results: str, run: str) -> pd.DataFrame:
    rows = pd.read_csv(os.path.join(results, run, RUN_FILES["metrics"]))
    return rows[rows.split == "train"].sort_values("round")


def draw_figure(results: str, runs: Optional[pd.DataFrame] = None, include_unfinished: bool = False) -> List[str]:
    """AuxiNash's p per task over training and the weights of GCS, OL-AUX, AuxiLearn (every seed), for the
    auxiliary set with the most auxiliaries that AuxiNash ran."""
    runs = collect_runs(results, not include_unfinished) if runs is None else runs
    runs = runs[runs.variant == ""] if not runs.empty else runs  # ablations (other tags) are in the table only
    if runs.empty or not (runs.method == "auxinash").any():
        return []
    aux = runs[runs.method == "auxinash"]
    aux_set = aux.assign(n=aux.tasks.str.count(" ")).sort_values("n").aux_set.iloc[-1]
    chosen = runs[runs.aux_set == aux_set]
    panels = [("auxinash", "p")] + [(m, "weight") for m in WEIGHT_METHODS if (chosen.method == m).any()]
    tasks = chosen[chosen.method == "auxinash"].tasks.iloc[0].split()
    colors = {t: plt.get_cmap("tab10")(i) for i, t in enumerate(tasks)}
    styles = ["-", "--", ":", "-."]
    columns = min(4, len(panels))
    rows_of_panels = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows_of_panels, columns, figsize=(4.2 * columns, 3.3 * rows_of_panels + 0.6),
                                squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis, (method, prefix) in zip(axes.flat, panels):
        for i, run in enumerate(chosen[chosen.method == method].sort_values("seed").itertuples()):
            rows = series(results, run.run)
            for task in tasks:
                column = f"{prefix}_{task}"
                if column in rows:
                    values = rows[column] if prefix == "p" else rows[column] / rows["weight_left"]
                    axis.plot(rows["step"], values, color=colors[task], ls=styles[i % len(styles)], lw=1.2,
                              label=task if i == 0 else None)
        what = "bargaining power p (end of epoch)" if prefix == "p" else "epoch's mean weight / main task's"
        axis.set_title(f"{METHODS[method].label}: {what}", fontsize=9)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title="task (line style: seed)", title_fontsize=7)
    seeds = sorted(set(chosen[chosen.method == "auxinash"].seed))
    text = (caption(chosen, left_out_note(results, [BENCHMARK], include_unfinished))
            + f" Auxiliary set {aux_set}; seeds {', '.join(map(str, seeds))} (solid, dashed, dotted).")
    text += (" Weights: each method's reported weights (README \"Choices and known differences\"; GradVac and "
             "MetaBalance: the effective multiplier of each task's shared gradient) over the main task's.")
    figure.text(0.01, 0.005, "\n".join(textwrap.wrap(text, 48 * columns)), fontsize=6.5, va="bottom")
    figure.tight_layout(rect=(0, 0.6 / (3.3 * rows_of_panels + 0.6) + 0.03, 1, 1))
    out = os.path.join(results, "figures")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "multimnist_aux_weights.png")
    save_figure(figure, path, dpi=120)
    plt.close(figure)
    return [path]


def make_all(results: str = "results", include_unfinished: bool = False) -> List[str]:
    return write_outputs(results, collect_runs, write_table, draw_figure, include_unfinished=include_unfinished)


def main(argv=None) -> int:
    return results_command(__doc__, make_all, log, argv)


if __name__ == "__main__":
    sys.exit(main())
