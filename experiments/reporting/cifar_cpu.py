"""Semi-supervised CIFAR-10 at CPU scale (the plan's ``cifar10_ssl_cpu``, issue 33): the calibration, the table
against the paper's Table 4 and the figure of the learned task weights.

    python experiments/tables_cifar_cpu.py [--results results] [--include-unfinished]

Reads every finished run (``status.json`` present) of ``<results>/cifar10_ssl_<n>/`` whose ``--tag`` starts with
``cpu`` (the preset's runs; a paper-protocol run has no tag). A run's result is its test accuracy of the main task
(``cls_acc``) at the evaluation round of its best validation accuracy (the paper's early stopping; the earliest
round on ties). Runs belong to the protocol of ``plan.CIFAR_CPU_PROTOCOLS`` whose settings they have (labels, width,
batches, iterations, evaluation interval; other settings, e.g. ``--quick`` runs, form their own group); every number
below is computed within one protocol, never across. Writes

- ``tables/cifar10_ssl_cpu.md`` and ``.csv``: one section per protocol, newest first; per configuration (STL,
  Equal with both auxiliaries, Equal with one, every other method with both), the test accuracy as mean ± std over
  seeds, the paired (same seed, hence the same labelled subset) difference to STL and to LS (Equal with both), the
  rank of the mean, and the paper's 5K-label column beside the paper's nine methods (labelled as the paper's); the
  Spearman correlation of our ranking of the paper's nine methods with the paper's, once all nine have finished
  runs (called provisional while their numbers of seeds differ); the calibration's verdict: the protocol is kept
  when Equal with both auxiliaries beats STL by more than twice the std of the paired differences; the question,
  AuxiNash against STL, LS and Nash-MTL paired by seed, "beyond seed noise" by the same criterion (with the paired
  t-test's two-sided p beside it); and per run of AuxiNash and of each other auxiliary-learning method, its learned
  weight of each auxiliary beside the same seed's effect of that auxiliary alone, and in how many seeds the two
  order the auxiliaries alike;
- ``figures/cifar10_ssl_cpu_weights.png``, for the newest protocol with such runs: each auxiliary's effect alone
  (every seed), AuxiNash's bargaining power p per task over training (every seed), and the mean weight per
  evaluation block that each other auxiliary-learning method gives each auxiliary, divided by the main task's.
"""
from __future__ import annotations

import glob
import logging
import os
import sys
from typing import List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from experiments.orchestration.plan import CIFAR_CPU_PROTOCOLS
from experiments.storage.results_io import (PAPER_DIR, SPLIT, TRAIN_SPLIT, p_column, save_figure, weight_column,
                                            write_frame, write_text)
from experiments.reporting.command import left_out_note, results_command
from experiments.reporting.multimnist import run_records, spearman
from experiments.reporting.multimnist_aux import fmt
from methods import METHOD_NAMES, METHODS, canonical_name, paper_methods

log = logging.getLogger("tables_cifar_cpu")
TAG = "cpu"  # the plan's CIFAR_CPU_TAG: every run of the preset carries it (single-auxiliary runs: cpu-<task>)
MAIN = "cls"  # the main task's short name in metrics.csv (classification)
AUXILIARIES = {"rot": "Rotation", "exemplar": "Exemplar-MT"}
TASK_NAMES = {"classification": "cls", "rotation": "rot", "exemplar": "exemplar"}  # --tasks → column names
CALIBRATION_FACTOR = 2.0  # keep the protocol if mean(Equal − STL) > 2 × std of the paired differences (issue 33)
# what a protocol fixes (config.json keys; plan.CIFAR_CPU_PROTOCOLS gives them as flags)
SETTINGS = ("n_labeled", "width", "labeled_batch", "unlabeled_batch", "iterations", "eval_every")


def protocol_settings(arguments) -> dict:
    """A protocol's argument tuple (``plan.CIFAR_CPU_PROTOCOLS``) as {config key: float value}."""
    pairs = dict(zip(arguments[::2], arguments[1::2]))
    return {key: float(pairs["--" + key.replace("_", "-")]) for key in SETTINGS}


def protocol_of(config: dict) -> str:
    """The run's protocol: "protocol <k>" where its settings are the plan's protocol k, else its settings in words
    (a ``--quick`` run, or a run with other settings): runs of different protocols are never paired or averaged."""
    values = {key: config.get(key) for key in SETTINGS}
    for number, arguments in sorted(CIFAR_CPU_PROTOCOLS.items()):
        if all(values[key] is not None and float(values[key]) == value
               for key, value in protocol_settings(arguments).items()):
            return f"protocol {number}"
    return "other settings (" + ", ".join(f"{key} {values[key]}" for key in SETTINGS) + ")"


def protocol_number(label: str) -> Optional[int]:
    """k of a "protocol <k>" label (``protocol_of``); None for other settings."""
    return int(label.split()[1]) if label.startswith("protocol ") else None


def protocol_order(label: str) -> tuple:
    """Newest protocol first, other settings last."""
    number = protocol_number(label)
    return (0, -number) if number is not None else (1, label)


def benchmarks(results: str) -> List[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(results, "cifar10_ssl_*")) if os.path.isdir(p))


def best_val(rows: pd.DataFrame) -> dict:
    """Test accuracy at the round of the best validation accuracy (earliest on ties), and the rounds run."""
    val = rows[rows[SPLIT] == "val"].set_index("round")[f"{MAIN}_acc"]
    test = rows[rows[SPLIT] == "test"].set_index("round")[f"{MAIN}_acc"]
    best = val.idxmax()
    return {"best_round": int(best), "val": float(val[best]), "test": float(test[best]),
            "last_test": float(test[test.index.max()]), "rounds": int(val.index.max()) + 1}


def configuration(method: str, tasks: List[str]) -> str:
    """The table's row: the method's label, with the auxiliaries named where it has not both."""
    label = METHODS[method].label if method in METHODS else method
    auxiliaries = [TASK_NAMES.get(t, t) for t in tasks[1:]]
    if method == "stl" or sorted(auxiliaries) == sorted(AUXILIARIES):
        return label
    return f"{label} + {' + '.join(AUXILIARIES.get(a, a) for a in auxiliaries)} only"


def collect_runs(results: str, finished_only: bool = True) -> pd.DataFrame:
    """One row per preset run: protocol, configuration, method, seed, labels, the best-validation point, seconds."""
    runs = []
    for benchmark in benchmarks(results):
        for run_dir, config, rows in run_records(results, benchmark, finished_only):
            tag = config.get("tag") or ""
            if not (tag == TAG or tag.startswith(TAG + "-")):
                continue
            try:
                point = best_val(rows)
            except (KeyError, ValueError) as error:
                log.warning("skipping %s: %s", run_dir, error)
                continue
            method = canonical_name(config["method"])
            tasks = list(config.get("tasks") or TASK_NAMES)
            train = rows[rows[SPLIT] == TRAIN_SPLIT]
            runs.append({"protocol": protocol_of(config), "configuration": configuration(method, tasks),
                         "method": method, "tag": tag,
                         "seed": int(config["seed"]), "n_labeled": config.get("n_labeled"), **point,
                         "hours": float(train["seconds"].sum()) / 3600, "run": os.path.relpath(run_dir, results),
                         "device": config.get("device_name", "?"), "synthetic": bool(config.get("synthetic_data"))})
    return pd.DataFrame(runs)


def paired(runs: pd.DataFrame, configuration_name: str, baseline: str) -> pd.Series:
    """Per seed, the configuration's test accuracy minus the baseline's (seeds that both have); ``runs`` of one
    protocol (a seed's runs of two protocols would otherwise be averaged).

    Raises:
        ValueError: ``runs`` holds more than one protocol."""
    if "protocol" in runs and runs.protocol.nunique() > 1:
        raise ValueError(f"paired(): runs of {runs.protocol.nunique()} protocols; pass one protocol's runs")
    by_seed = runs.pivot_table(index="seed", columns="configuration", values="test")
    if configuration_name not in by_seed or baseline not in by_seed:
        return pd.Series(dtype=float)
    return (by_seed[configuration_name] - by_seed[baseline]).dropna()


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: seeds, mean ± std, paired Δ to STL and to LS (mean, std, seeds above), rank."""
    stl, ls = METHODS["stl"].label, METHODS["equal"].label
    order = {name: i for i, name in enumerate(METHOD_NAMES)}
    rows = []
    for name, group in runs.groupby("configuration"):
        row = {"configuration": name, "method": group.method.iloc[0], "seeds": len(group),
               "seed_list": " ".join(str(s) for s in sorted(group.seed)), "mean": group.test.mean(),
               "std": group.test.std(ddof=1) if len(group) > 1 else np.nan, "hours": group.hours.mean()}
        for key, baseline in (("stl", stl), ("ls", ls)):
            difference = paired(runs, name, baseline) if name != baseline else pd.Series(dtype=float)
            row.update({f"vs_{key}": difference.mean() if len(difference) else np.nan,
                        f"vs_{key}_std": difference.std(ddof=1) if len(difference) > 1 else np.nan,
                        f"vs_{key}_above": int((difference > 0).sum()), f"vs_{key}_seeds": len(difference)})
        rows.append(row)
    table = pd.DataFrame(rows)
    table["rank"] = table["mean"].rank(ascending=False, method="min").astype(int)
    table["order"] = [order.get(m, len(order)) + (0.5 if " only" in c else 0)
                      for m, c in zip(table.method, table.configuration)]
    return table.sort_values(["order", "configuration"]).drop(columns="order").reset_index(drop=True)


def paper_column() -> dict:
    """The paper's Table 4, 5K labels: {row label: (mean, ±)} (``results/paper/cifar10_ssl.csv``)."""
    path = os.path.join(PAPER_DIR, "cifar10_ssl.csv")
    if not os.path.exists(path):
        return {}
    paper = pd.read_csv(path).set_index("method")
    return {label: (row.acc_5k_labels, row.acc_5k_labels_pm) for label, row in paper.iterrows()}


def calibration(table: pd.DataFrame) -> str:
    """The issue's criterion on Equal (both auxiliaries) against STL, in words."""
    ls = table[table.configuration == METHODS["equal"].label]
    if ls.empty or ls.vs_stl_seeds.iloc[0] < 3:
        return "Calibration: fewer than 3 seeds with both STL and Equal finished; no verdict yet."
    mean, std, n = ls.vs_stl.iloc[0], ls.vs_stl_std.iloc[0], int(ls.vs_stl_seeds.iloc[0])
    kept = mean > CALIBRATION_FACTOR * std
    return (f"Calibration: Equal with both auxiliaries − STL = {mean:+.2f} points, std of the {n} paired differences "
            f"{std:.2f}: {'above' if kept else 'not above'} {CALIBRATION_FACTOR:g} × std = "
            f"{CALIBRATION_FACTOR * std:.2f}, so the protocol is {'kept' if kept else 'NOT kept'}.")


def noise_summary(difference: pd.Series) -> tuple:
    """Paired differences (one per seed) as (std, seeds, "mean ± std points over n seed(s) (each)", beyond):
    beyond is None under 3 seeds, else whether |mean| > ``CALIBRATION_FACTOR`` × std (the calibration's criterion)."""
    mean, n = difference.mean(), len(difference)
    std = difference.std(ddof=1) if n > 1 else np.nan
    words = (f"{fmt(mean, sign=True)} ± {fmt(std)} points over {n} seed(s) "
             f"({', '.join(fmt(d, sign=True) for d in difference)})")
    return std, n, words, (None if n < 3 else bool(abs(mean) > CALIBRATION_FACTOR * std))


def t_test_words(difference: pd.Series) -> str:
    """"; paired t-test p = 0.010": the two-sided p-value of Student's one-sample t-test of the paired differences
    against 0 (``scipy.stats.ttest_1samp``), as a reader's second measure beside the criterion; "" under 3 seeds or
    with no spread (t undefined). The criterion |mean| > 2 × std is t > 2√n, so with 3 seeds it is p < 0.074."""
    if len(difference) < 3 or not difference.std(ddof=1) > 0:
        return ""
    return f"; paired t-test p = {stats.ttest_1samp(difference.to_numpy(), 0.0).pvalue:.3f}"


def against(runs: pd.DataFrame, target: str, name: str) -> str:
    """One line: ``target`` − ``name`` paired by seed, beyond seed noise when the mean paired difference exceeds
    ``CALIBRATION_FACTOR`` × its std (the calibration's criterion), with 3 seeds at least."""
    difference = paired(runs, target, name)
    if difference.empty:
        return f"- {target} − {name}: no seed with both finished yet."
    std, n, words, beyond = noise_summary(difference)
    verdict = ("fewer than 3 seeds, no verdict yet" if beyond is None else
               ("beyond seed noise" if beyond else "within seed noise")
               + f" (|mean| {'>' if beyond else '≤'} {CALIBRATION_FACTOR:g} × std = {CALIBRATION_FACTOR * std:.2f}"
               f"{t_test_words(difference)})")
    return f"- {target} − {name} = {words}, above in {int((difference > 0).sum())} of {n}: {verdict}."


def question(runs: pd.DataFrame) -> List[str]:
    """The issue's question in words: AuxiNash (both auxiliaries) against STL, LS and Nash-MTL, then against every
    other method with a finished run on both auxiliaries (the paper's first finding: AuxiNash beats them all), each
    paired by seed (``against``)."""
    target = METHODS["auxinash"].label
    if target not in set(runs.configuration):
        return ["AuxiNash against STL, LS and Nash-MTL: no finished AuxiNash run yet."]
    named = [METHODS[m].label for m in ("stl", "equal", "nashmtl")]
    lines = ["AuxiNash against STL, LS and Nash-MTL (paired by seed; test accuracy points):", ""]
    lines += [against(runs, target, name) for name in named]
    present = set(runs[~runs.configuration.str.endswith(" only")].configuration)
    others = [METHODS[m].label for m in METHOD_NAMES if METHODS[m].label in present - {target, *named}]
    if others:
        lines += ["", "AuxiNash against every other method (the paper's first finding is that it beats them all; "
                  "paired by seed, test accuracy points):", ""]
        lines += [against(runs, target, name) for name in others]
    return lines


def auxiliary_weights(results: str, run) -> dict:
    """{auxiliary short name: the run's mean over its evaluation blocks of AuxiNash's p (the bargaining power at each
    block's end) or, for another method, of its mean weight per block divided by the main task's}."""
    metrics = pd.read_csv(os.path.join(results, run.run, "metrics.csv"))
    train = metrics[metrics[SPLIT] == TRAIN_SPLIT]
    out = {}
    for task in AUXILIARIES:
        if run.method == "auxinash":
            column = p_column(task)
            out[task] = float(train[column].mean()) if column in train else np.nan
        elif weight_column(task) in train and weight_column(MAIN) in train:
            main = train[weight_column(MAIN)].replace(0.0, np.nan)  # a zero main weight has no ratio
            out[task] = float((train[weight_column(task)] / main).mean())
        else:
            out[task] = np.nan
    return out


def auxiliary_order(values: dict) -> str:
    """"rot > exemplar", "exemplar > rot" or "tie" for a {auxiliary: value} pair; "–" where one is missing."""
    rot, exemplar = values.get("rot", np.nan), values.get("exemplar", np.nan)
    if pd.isna(rot) or pd.isna(exemplar):
        return "–"
    return "tie" if rot == exemplar else ("Rotation first" if rot > exemplar else "Exemplar-MT first")


def weights_against_effects(results: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run of AuxiNash and of every other auxiliary-learning method with both auxiliaries (``draw_figure``'s
    panels): its learned weight per auxiliary (``auxiliary_weights``) beside the same seed's effect of each auxiliary
    alone (Equal with that auxiliary only − STL, test accuracy points), and whether both order the two auxiliaries
    alike."""
    learners = {"auxinash", *(m for m in METHOD_NAMES if METHODS[m].uses_main_task and m != "stl")}
    by_seed = runs.pivot_table(index="seed", columns="configuration", values="test")
    stl = METHODS["stl"].label
    rows = []
    for run in runs[runs.method.isin(learners) & ~runs.configuration.str.endswith(" only")].itertuples():
        weights = auxiliary_weights(results, run)
        effects = {}
        for short, name in AUXILIARIES.items():
            alone = f"{METHODS['equal'].label} + {name} only"
            effects[short] = (by_seed.at[run.seed, alone] - by_seed.at[run.seed, stl]
                              if alone in by_seed and stl in by_seed else np.nan)
        weight_order, effect_order = auxiliary_order(weights), auxiliary_order(effects)
        rows.append({"method": run.method, "configuration": run.configuration, "seed": run.seed,
                     **{f"weight_{a}": weights[a] for a in AUXILIARIES},
                     **{f"alone_{a}": effects[a] for a in AUXILIARIES},
                     "weight_order": weight_order, "effect_order": effect_order,
                     "agree": (np.nan if "–" in (weight_order, effect_order) else weight_order == effect_order)})
    return pd.DataFrame(rows)


def effects_apart(runs: pd.DataFrame) -> str:
    """Whether the two auxiliaries' effects alone differ beyond seed noise: Equal + Rotation only − Equal +
    Exemplar-MT only, paired by seed, by the calibration's criterion. Where they do not, "the weights order the
    auxiliaries as their effects alone" compares with an order that was not measured."""
    rotation, exemplar = (f"{METHODS['equal'].label} + {name} only" for name in AUXILIARIES.values())
    difference = paired(runs, rotation, exemplar)
    if difference.empty:
        return "The effects alone: no seed with both single-auxiliary runs finished yet."
    std, _, words, beyond = noise_summary(difference)
    if beyond is None:
        verdict = "fewer than 3 seeds, so no measured order of the two yet"
    elif beyond:
        verdict = f"beyond seed noise (|mean| > {CALIBRATION_FACTOR:g} × std{t_test_words(difference)}): a measured order"
    else:
        verdict = (f"within seed noise (|mean| ≤ {CALIBRATION_FACTOR:g} × std = {CALIBRATION_FACTOR * std:.2f}"
                   f"{t_test_words(difference)}): the two help alike as far as 3 seeds tell, and the orders below are "
                   "not a measured ranking")
    return f"The effects alone, Rotation − Exemplar-MT paired by seed: {words}: {verdict}."


def weights_section(results: str, runs: pd.DataFrame) -> List[str]:
    """``weights_against_effects`` as a markdown table and, per method, in how many seeds its weights order the two
    auxiliaries as their effects alone do."""
    table = weights_against_effects(results, runs)
    if table.empty:
        return []
    order_of = {m: i for i, m in enumerate(["auxinash", *(m for m in METHOD_NAMES if m != "auxinash")])}
    table = table.assign(order=table.method.map(order_of)).sort_values(["order", "seed"])
    lines = ["Learned weight of each auxiliary (AuxiNash: bargaining power p, mean over the evaluation blocks of p at "
             "each block's end; other methods: mean weight per block / the main task's) beside the same seed's "
             "effect of that auxiliary alone (Equal with it only − STL, points):", "",
             "| method | seed | weight Rotation | weight Exemplar-MT | Rotation alone | Exemplar-MT alone | "
             "weights order | effects order |", "|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.configuration} | {row.seed} | {fmt(row.weight_rot, 3)} | {fmt(row.weight_exemplar, 3)} "
                     f"| {fmt(row.alone_rot, sign=True)} | {fmt(row.alone_exemplar, sign=True)} | {row.weight_order} "
                     f"| {row.effect_order} |")
    lines += ["", effects_apart(runs), ""]
    for configuration, group in table.groupby("configuration", sort=False):
        known = group.agree.dropna()
        lines.append(f"- {configuration}: the weights order the auxiliaries as their effects alone in "
                     f"{int(known.sum())} of {len(known)} seed(s) with both known" + (
                         f" ({len(group) - len(known)} more without the single-auxiliary runs yet)."
                         if len(known) < len(group) else "."))
    return lines


def protocol_section(results: str, runs: pd.DataFrame, paper: dict) -> List[str]:
    """One protocol's table (markdown lines), its calibration verdict, the question (AuxiNash against STL, LS and
    Nash-MTL), the learned weights beside each auxiliary's effect alone and, once the paper's nine have finished
    runs, the Spearman correlation of our ranking with the paper's."""
    table = summary(runs)
    lines = ["| configuration | seeds | test acc. (%) | Δ STL | Δ LS | rank | hours per run | paper (5K) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        in_paper = getattr(METHODS.get(row.method), "in_paper", True) and " only" not in row.configuration
        printed = paper.get(row.configuration) if in_paper else None
        lines.append(f"| {row.configuration}{'' if getattr(METHODS.get(row.method), 'in_paper', True) else ' (not in the paper)'} | "
                     f"{row.seeds} ({row.seed_list}) | {fmt(row.mean)} ± {fmt(row.std)} | "
                     + (f"{fmt(row.vs_stl, sign=True)} ± {fmt(row.vs_stl_std)} ({row.vs_stl_above}/{row.vs_stl_seeds}) | "
                        if row.vs_stl_seeds else "– | ")
                     + (f"{fmt(row.vs_ls, sign=True)} ± {fmt(row.vs_ls_std)} ({row.vs_ls_above}/{row.vs_ls_seeds}) | "
                        if row.vs_ls_seeds else "– | ")
                     + f"{row.rank} | {fmt(row.hours)} | "
                     + (f"{printed[0]:.2f} ± {printed[1]:.2f} |" if printed else "– |"))
    lines += ["", calibration(table), ""] + question(runs)
    weights = weights_section(results, runs)
    lines += [""] + weights if weights else []
    return lines + ["", spearman_line(paper_nine(table, paper), paper, runs)]


def spearman_line(nine: pd.DataFrame, paper: dict, runs: Optional[pd.DataFrame] = None) -> str:
    """The sentence on the Spearman correlation of our ranking of the paper's nine methods (rows of ``summary``:
    ``configuration``, ``mean``, ``seeds``) with the paper's Table 4 at 5K labels (``paper``: label → (mean, std)).
    Waits until each of the nine has a finished run; while they have unequal numbers of seeds the value is given
    as provisional, naming the rows with fewer seeds, since it compares means over different seeds. Once they have
    equal seeds it also gives, from ``runs`` (rows ``configuration``, ``seed``, ``test``), the correlation of each
    seed's own ranking with the paper's (how far seed noise alone moves it) and both orders, best first."""
    if len(nine) < len(paper_methods()):
        return (f"Spearman correlation with the paper's ranking: once all nine of the paper's methods have "
                f"finished runs ({len(nine)} of {len(paper_methods())} now).")
    rho = spearman(nine["mean"].reset_index(drop=True), pd.Series([paper[c][0] for c in nine.configuration]))
    line = f"Spearman correlation of our ranking of the paper's nine methods with the paper's (5K labels): {rho:+.2f}"
    most = int(nine.seeds.max())
    fewer = nine[nine.seeds < most]
    if len(fewer):
        return line + (f", provisional: it compares means over unequal numbers of seeds ({', '.join(fewer.configuration)}"
                       f" with fewer than {most}); it changes as their seeds finish.")
    if runs is not None:
        mine = runs[runs.configuration.isin(nine.configuration)]
        by_seed = mine.pivot_table(index="seed", columns="configuration", values="test").dropna()
        if len(by_seed) > 1:
            per_seed = [spearman(row[nine.configuration].reset_index(drop=True),
                                 pd.Series([paper[c][0] for c in nine.configuration])) for _, row in by_seed.iterrows()]
            line += ("; each seed's own ranking against the paper's: "
                     + ", ".join(f"seed {seed} {value:+.2f}" for seed, value in zip(by_seed.index, per_seed))
                     + " (the spread that seed noise alone gives)")
    ours = " > ".join(nine.sort_values("mean", ascending=False, kind="stable").configuration)
    theirs = " > ".join(sorted(nine.configuration, key=lambda c: -paper[c][0]))
    return line + f". Ours, best first: {ours}; the paper's: {theirs}."


def protocol_heading(label: str) -> str:
    """A section's heading: the protocol and its settings (``plan.CIFAR_CPU_PROTOCOLS``)."""
    number = protocol_number(label)
    if number is None:
        return f"## Runs with {label}"
    last = " (the preset's default)" if number == max(CIFAR_CPU_PROTOCOLS) else ""
    return f"## Protocol {number}{last}: `{' '.join(CIFAR_CPU_PROTOCOLS[number])}`"


def write_table(results: str, runs: Optional[pd.DataFrame] = None, include_unfinished: bool = False) -> List[str]:
    runs = collect_runs(results, not include_unfinished) if runs is None else runs
    if runs.empty:
        return []
    out = os.path.join(results, "tables")
    os.makedirs(out, exist_ok=True)
    paper = paper_column()
    write_frame(os.path.join(out, "cifar10_ssl_cpu.csv"), runs.sort_values(["protocol", "configuration", "seed"]))
    text = (f"Semi-supervised CIFAR-10 at CPU scale (preset cifar10_ssl_cpu, one section per protocol, newest first; "
            f"devices: {', '.join(sorted(set(runs.device)))}): main-task test accuracy (%) at the best validation "
            "accuracy, mean ± std over seeds; Δ = mean over seeds of (run − the same seed's STL or LS run) ± its "
            "std, with the number of seeds above; rank of the mean among the protocol's rows. The paper's column is "
            "its Table 4 at 5K labels and the paper's protocol (WRN-28-2, 128 + 128 images, 50K iterations), not "
            "comparable in level; new methods (not in the paper) have none.")
    text += left_out_note(results, benchmarks(results), include_unfinished)
    if runs.synthetic.any():
        text = "SYNTHETIC SMOKE RUN, not a result. " + text
    lines = [text]
    for label in sorted(set(runs.protocol), key=protocol_order):
        lines += ["", protocol_heading(label), ""] + protocol_section(results, runs[runs.protocol == label], paper)
    path = os.path.join(out, "cifar10_ssl_cpu.md")
    write_text(path, "\n".join(lines) + "\n")
    return [path, os.path.join(out, "cifar10_ssl_cpu.csv")]


def write_figure(figure, results: str, name: str) -> str:
    """``figure`` laid out, written to ``<results>/figures/<name>`` (150 dpi) and closed; returns its path."""
    figure.tight_layout()
    path = os.path.join(results, "figures", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_figure(figure, path, dpi=150)
    plt.close(figure)
    return path


def draw_effects_alone(axis, runs: pd.DataFrame) -> None:
    """Each auxiliary's effect alone (Equal with that auxiliary only − the same seed's STL, test accuracy points):
    one dot per seed, a bar at the mean."""
    stl = METHODS["stl"].label
    for x, (short, name) in enumerate(AUXILIARIES.items()):
        difference = paired(runs, f"{METHODS['equal'].label} + {name} only", stl)
        colour = {"rot": "tab:blue", "exemplar": "tab:orange"}[short]
        if len(difference):
            axis.bar(x, difference.mean(), color=colour, alpha=0.4)
            axis.scatter([x] * len(difference), difference, color=colour, zorder=3)
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set_xticks(range(len(AUXILIARIES)), list(AUXILIARIES.values()))
    axis.set_ylabel("test accuracy − STL (points)")
    axis.set_title("each auxiliary alone (Equal), every seed", fontsize=9)


def draw_figure(results: str, runs: Optional[pd.DataFrame] = None, include_unfinished: bool = False) -> List[str]:
    """A first panel with each auxiliary's effect alone (every seed, ``draw_effects_alone``), then AuxiNash's p per
    task over training (every seed) and the other auxiliary-learning methods' weight per auxiliary relative to the
    main task's; each auxiliary's mean effect alone also in the legends."""
    runs = collect_runs(results, not include_unfinished) if runs is None else runs
    if runs.empty:
        return []
    learners = [m for m in METHOD_NAMES if METHODS[m].uses_main_task and m not in ("stl", "auxinash")]
    with_panels = [label for label in sorted(set(runs.protocol), key=protocol_order)
                   if set(runs[(runs.protocol == label) & ~runs.configuration.str.endswith(" only")].method)
                   & {"auxinash", *learners}]
    if not with_panels:
        return []
    protocol = with_panels[0]  # the newest protocol with runs to draw
    runs = runs[runs.protocol == protocol]
    table = summary(runs)
    effects = {}
    for short, name in AUXILIARIES.items():
        row = table[table.configuration == f"{METHODS['equal'].label} + {name} only"]
        effects[short] = row.vs_stl.iloc[0] if len(row) else np.nan
    both = runs[~runs.configuration.str.endswith(" only")]
    panels = [m for m in ["auxinash", *learners] if m in set(both.method)]
    if not panels:
        return []
    figure, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.4), squeeze=False)
    draw_effects_alone(axes[0][0], runs)
    colours = {"cls": "black", "rot": "tab:blue", "exemplar": "tab:orange"}
    for axis, method in zip(axes[0][1:], panels):
        for run in both[both.method == method].itertuples():
            metrics = pd.read_csv(os.path.join(results, run.run, "metrics.csv"))
            train = metrics[metrics[SPLIT] == TRAIN_SPLIT]
            for task in ("cls", *AUXILIARIES):
                if method == "auxinash":
                    column, values = p_column(task), None
                    if column in train:
                        values = train[column]
                else:
                    column = weight_column(task)
                    values = train[column] / train[weight_column(MAIN)] if column in train and task != MAIN else None
                if values is None:
                    continue
                effect = f" (alone {fmt(effects.get(task), sign=True)})" if task in AUXILIARIES else " (main)"
                label = (AUXILIARIES.get(task, "Classification") + effect) if run.seed == both.seed.min() else None
                axis.plot(train["step"], values, color=colours[task], alpha=0.8, label=label)
        axis.set_title(f"{METHODS[method].label}: " + ("bargaining power p" if method == "auxinash"
                                                       else "weight / main task's"), fontsize=9)
        axis.set_xlabel("iteration")
        axis.legend(fontsize=7)
    figure.suptitle(f"Semi-supervised CIFAR-10, CPU preset ({protocol}): task weights over training, every seed\n"
                    "(alone: Equal with that auxiliary only − STL, test accuracy points)", fontsize=9)
    return [write_figure(figure, results, "cifar10_ssl_cpu_weights.png")]


def paper_nine(table: pd.DataFrame, paper: dict) -> pd.DataFrame:
    """The rows of ``summary`` for the paper's nine methods that the paper's column prints (not the new methods, not
    Equal with one auxiliary)."""
    nine = table[table.configuration.isin([METHODS[m].label for m in paper_methods()])
                 & table.method.isin(paper_methods())]
    return nine[nine.configuration.isin(paper)]


def draw_ranking(results: str, runs: pd.DataFrame) -> List[str]:
    """Our test accuracy of the paper's nine methods (newest protocol; every seed a dot, the mean a bar of ± std)
    against the paper's Table 4 at 5K labels (its ± as the horizontal bar), with the Spearman correlation in the
    title. Drawn once each of the nine has a finished run; the levels differ by design (the preset is CPU scale),
    the order is what to compare."""
    paper = paper_column()
    if runs.empty or not paper:
        return []
    protocol = sorted(set(runs.protocol), key=protocol_order)[0]
    runs = runs[runs.protocol == protocol]
    nine = paper_nine(summary(runs), paper)
    if len(nine) < len(paper_methods()):
        return []
    rho = spearman(nine["mean"].reset_index(drop=True), pd.Series([paper[c][0] for c in nine.configuration]))
    unequal = nine.seeds.nunique() > 1
    figure, axis = plt.subplots(figsize=(6.4, 4.8))
    for row in nine.itertuples():
        x, x_err = paper[row.configuration]
        seeds = runs[runs.configuration == row.configuration].test
        axis.scatter([x] * len(seeds), seeds, color="grey", s=12, zorder=2)
        axis.errorbar(x, row.mean, xerr=x_err, yerr=0.0 if np.isnan(row.std) else row.std, fmt="o",
                      color="tab:red" if row.method == "auxinash" else "tab:blue", capsize=3, zorder=3)
        axis.annotate(f"{row.configuration} ({row.seeds})", (x, row.mean), textcoords="offset points",
                      xytext=(5, 4), fontsize=8)
    axis.set_xlabel("the paper's Table 4, 5K labels: test accuracy (%)")
    axis.set_ylabel(f"ours, {protocol}: test accuracy (%)")
    axis.set_title(f"Semi-supervised CIFAR-10, CPU preset: the paper's nine methods\nSpearman ρ = {rho:+.2f}"
                   + (" (provisional: unequal seeds, in brackets)" if unequal else " (seeds in brackets)")
                   + "; grey dots: single seeds", fontsize=9)
    axis.grid(alpha=0.3)
    return [write_figure(figure, results, "cifar10_ssl_cpu_ranking.png")]


def make_all(results: str = "results", include_unfinished: bool = False) -> List[str]:
    runs = collect_runs(results, not include_unfinished)
    if runs.empty:
        return []
    return (write_table(results, runs, include_unfinished) + draw_figure(results, runs, include_unfinished)
            + draw_ranking(results, runs))


def main(argv=None) -> int:
    return results_command(__doc__, make_all, log, argv)


if __name__ == "__main__":
    sys.exit(main())
