"""Turn every run's metrics.csv into the paper's tables: ``results/tables/<table>.md`` and ``.tex``.

    python experiments/make_tables.py [--results results] [--include-unfinished]

Per run: the mean test metrics over the last 10 evaluations (NYUv2, Cityscapes: the paper's protocol) or the
test metrics at the best validation accuracy (CIFAR-10 SSL: early stopping). Per method: multi-task methods
(STL aside) train one model whose metrics fill every column (``main-all``); STL and the auxiliary-learning
methods train one model per main task and each column comes from the model whose main task it measures. Cells
are mean ± std over seeds, the best mean of each column in bold; the paper's value (``results/paper/`` of this
repository, the paper's Tables 1-4, 8, 9) stands in parentheses. Speech Commands (Tables 5-7) and Multi-MNIST
have their own modules (``speech_commands.py``, ``multimnist.py``, ``multimnist_aux.py`` here in ``reporting/``),
called from here. Which tables there are, their rows and columns: ``experiments/orchestration/plan.py``
(``tables()``). The caption says what each Δm is measured against:
"Δm (ours)" against our own STL row, "Δm (paper)" the paper's printed Δm, against the paper's STL row (for NYUv2
that row equals the official code's hard-coded baseline, AvivSham/auxinash ``experiments/nyuv2/calc_delta.py``).
Only finished runs count (status.json present and from the settings in config.json); the runs left out are
listed in a warning and in the table's caption; ``--include-unfinished`` shows runs in progress (and says so).
"""
from __future__ import annotations

import glob
import logging
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple


import numpy as np
import pandas as pd

from experiments.orchestration.plan import Table, method_rows, tables
from experiments.reporting import cifar_cpu, multimnist, multimnist_aux, speech_commands
from experiments.reporting.command import left_out_note, results_command
from experiments.training.benchmarks import BENCHMARK_TASKS
from experiments.training.metrics import delta_m
from experiments.storage.results_io import (PAPER_DIR, RUN_FILES, RunError, RunFolder, read_json, read_metrics,
                                            select_runs, write_text)

log = logging.getLogger("make_tables")
LAST_EVALUATIONS = 10


def table_columns(table: Table) -> Dict[str, bool]:
    """The table's metric columns → higher is better: its declared ``columns``, else every table metric of its
    benchmark's tasks (``Task.columns(table_only=True)``: NYUv2 9 columns, Cityscapes 5)."""
    columns: Dict[str, bool] = {}
    for task in BENCHMARK_TASKS[table.benchmark]:
        columns.update(task.columns(table_only=True))
    if table.columns is None:
        return columns
    return {column: columns[column] for column in table.columns}


NYUV2_COLUMNS = table_columns(Table("nyuv2", "nyuv2", "", None, ()))
CITYSCAPES_COLUMNS = table_columns(Table("cityscapes", "cityscapes", "", None, ()))


def run_result(run_dir: str) -> Dict[str, float]:
    """One run's test metrics under its benchmark's selection rule."""
    config = read_json(os.path.join(run_dir, RUN_FILES["config"]))
    rows = read_metrics(os.path.join(run_dir, RUN_FILES["metrics"]))
    if "split" not in rows.columns or not (rows.split == "test").any():
        raise ValueError("its metrics.csv has no test rows")
    test = rows[rows.split == "test"].set_index("round")
    if config.get("selection") == "best_val":
        val = rows[rows.split == "val"].set_index("round")
        accuracy = [c for c in val.columns if c.endswith("_acc")][0]
        best = val[accuracy].idxmax()
        return test.loc[best].drop(["step", "split"], errors="ignore").dropna().to_dict()
    last = test.sort_index().tail(LAST_EVALUATIONS)
    return last.drop(columns=["step", "split"], errors="ignore").mean(numeric_only=True).dropna().to_dict()


def collect(results: str, benchmark: str, include_unfinished: bool = False
            ) -> Dict[str, Dict[str, Dict[int, Dict[str, float]]]]:
    """method folder → main folder → seed → metrics, over the finished runs (every run with a metrics.csv
    under ``include_unfinished``); a finished run whose metrics cannot be used is reported, not dropped silently."""
    found: Dict[str, Dict[str, Dict[int, Dict[str, float]]]] = {}
    for run_dir in select_runs(results, benchmark, include_unfinished)[0]:
        run = RunFolder.parse(run_dir)
        try:
            found.setdefault(run.method_folder, {}).setdefault(run.main_folder, {})[run.seed] = run_result(run_dir)
        except (KeyError, ValueError, IndexError, RunError) as error:
            log.warning("leaving out %s: %s", run_dir, error)
    return found


def method_seeds(runs: Dict[str, Dict[int, Dict[str, float]]], columns: Sequence[str]) -> Dict[int, Dict[str, float]]:
    """seed → the table's columns for one method, each column from the run whose main task it measures."""
    per_seed: Dict[int, Dict[str, float]] = {}
    for column in columns:
        task = column.rsplit("_", 1)[0]
        while task and f"main-{task}" not in runs and "_" in task:
            task = task.rsplit("_", 1)[0]
        source = runs.get("main-all") or runs.get(f"main-{task}") or {}
        for seed, metrics in source.items():
            if column in metrics:
                per_seed.setdefault(seed, {})[column] = metrics[column]
    return per_seed


def assemble(table: Table, results: str, include_unfinished: bool = False) -> Optional[pd.DataFrame]:
    """Rows of ``table`` that have runs: per column mean and std over seeds, and the seed count."""
    runs = collect(results, table.benchmark, include_unfinished)
    columns = list(table_columns(table))
    rows = []
    for table_row in table.rows:
        if table_row.folder not in runs:
            continue
        per_seed = method_seeds(runs[table_row.folder], columns)
        if not per_seed:
            continue
        frame = pd.DataFrame.from_dict(per_seed, orient="index").reindex(columns=columns)
        row = {"label": table_row.label, "seeds": len(frame)}
        for column in columns:
            row[column] = frame[column].mean()
            row[f"{column}_std"] = frame[column].std(ddof=1) if frame[column].count() > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


def paper_values(table: Table) -> Dict[str, Dict[str, float]]:
    """The paper's row name → column → value, from ``results/paper/<paper_file>``. A file that holds several
    benchmarks (``aux_set.csv``, the paper's Table 3) prefixes their columns with the benchmark's name."""
    path = os.path.join(PAPER_DIR, table.paper_file) if table.paper_file else ""
    if not os.path.exists(path):
        return {}
    frame = pd.read_csv(path).set_index("method")
    prefix = f"{table.benchmark}_"
    if any(column.startswith(prefix) for column in frame.columns):
        frame = frame[[c for c in frame.columns if c.startswith(prefix)]].rename(columns=lambda c: c[len(prefix):])
    return frame.to_dict("index")


def run_descriptions(results: str, benchmark: str, include_unfinished: bool = False) -> Tuple[bool, List[str]]:
    """Whether any finished run used synthetic data, and the devices the finished runs used."""
    synthetic, devices = False, set()
    for run_dir in select_runs(results, benchmark, include_unfinished)[0]:
        config = read_json(os.path.join(run_dir, RUN_FILES["config"]))
        synthetic |= bool(config.get("synthetic_data"))
        devices.add(config.get("device_name", "?"))
    return synthetic, sorted(devices)


def format_table(table: Table, ours: pd.DataFrame, paper: Dict[str, Dict[str, float]], results: str,
                 latex: bool, include_unfinished: bool = False) -> str:
    stl = ours[ours.label == "STL"]
    baseline = stl.iloc[0].to_dict() if len(stl) else None
    columns = table_columns(table)
    best = {c: (ours[c].max() if higher else ours[c].min()) for c, higher in columns.items()}
    header = ["method"] + list(columns) + ["Δm (ours)", "Δm (paper)", "seeds"]
    lines = []
    for _, row in ours.iterrows():
        paper_row = paper.get(next(r.paper_row for r in table.rows if r.label == row["label"]) or "", {})
        cells = [row["label"]]
        for column in columns:
            value = f"{row[column]:.4g} ± {row[column + '_std']:.2g}"
            if row[column] == best[column] and len(ours) > 1:
                value = f"\\textbf{{{value}}}" if latex else f"**{value}**"
            if column in paper_row and not pd.isna(paper_row[column]):
                value += f" ({paper_row[column]:g})"
            cells.append(value)
        dm = delta_m(row, baseline, columns) if baseline is not None and row["label"] != "STL" else math.nan
        cells.append("" if math.isnan(dm) else f"{dm:+.2f}")
        paper_dm = paper_row.get("delta_m", math.nan)
        cells.append("" if pd.isna(paper_dm) else f"{paper_dm:+.2f}")
        cells.append(str(int(row["seeds"])))
        lines.append(cells)
    synthetic, devices = run_descriptions(results, table.benchmark, include_unfinished)
    caption = (f"{table.title}. Ours: mean ± std over seeds ({', '.join(devices)}); in parentheses the paper's "
               f"value. Δm (ours) vs our STL; Δm (paper) vs the paper's STL row (lower is better).")
    caption += left_out_note(results, [table.benchmark], include_unfinished)
    if synthetic:
        caption = "SYNTHETIC SMOKE RUN, not comparable to the paper. " + caption
    if latex:
        def tex(text: str) -> str:
            return text.replace("_", "\\_").replace("±", "$\\pm$").replace("Δm", "$\\Delta_m$")
        body = " \\\\\n".join(" & ".join(tex(c) for c in line) for line in lines)
        columns = " & ".join(tex(h) for h in header)
        return ("\\begin{table}\n\\caption{" + tex(caption) + "}\n\\begin{tabular}{l" + "c" * (len(header) - 1)
                + "}\n\\toprule\n" + columns + " \\\\\n\\midrule\n" + body
                + " \\\\\n\\bottomrule\n\\end{tabular}\n\\end{table}\n")
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(line) + " |" for line in lines]
    return f"{caption}\n\n" + "\n".join(table) + "\n"


def cifar_table(results: str, include_unfinished: bool = False) -> Optional[str]:
    """CIFAR-10 SSL test accuracy per labelled-set size (paper Table 4: 5K and 10K labels)."""
    benchmarks = sorted(os.path.basename(p) for p in glob.glob(os.path.join(results, "cifar10_ssl_*")))
    if not benchmarks:
        return None
    paper = {}
    if os.path.exists(os.path.join(PAPER_DIR, "cifar10_ssl.csv")):
        paper = pd.read_csv(os.path.join(PAPER_DIR, "cifar10_ssl.csv")).set_index("method").to_dict("index")
    synthetic = any(run_descriptions(results, b, include_unfinished)[0] for b in benchmarks)
    collected = {benchmark: collect(results, benchmark, include_unfinished) for benchmark in benchmarks}
    # a labelled-set size with only tagged runs (the CPU preset's, reporting/cifar_cpu.py) gets no empty column
    benchmarks = [b for b in benchmarks if any(row.folder in collected[b] for row in method_rows())]
    if not benchmarks:
        return None
    lines = []
    for row in method_rows():
        cells = [row.label]
        for benchmark in benchmarks:
            runs = collected[benchmark].get(row.folder, {})
            values = [m["cls_acc"] for main in runs.values() for m in main.values() if "cls_acc" in m]
            cell = f"{np.mean(values):.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.2f} (n={len(values)})" \
                if values else ""
            paper_column = f"acc_{benchmark.removeprefix('cifar10_ssl_')}_labels"
            if row.paper_row in paper and paper_column in paper[row.paper_row]:
                printed = paper[row.paper_row]
                cell += f" [paper {printed[paper_column]:.2f} ± {printed[paper_column + '_pm']:.2f}]"
            cells.append(cell)
        lines.append(cells)
    caption = ("CIFAR-10 SSL test accuracy (%) at the best validation accuracy, mean ± std over n seeds (paper "
               "Table 4: 5K and 10K labels; the paper's values in brackets).")
    caption += left_out_note(results, benchmarks, include_unfinished)
    if synthetic:
        caption = "SYNTHETIC SMOKE RUN, not comparable to the paper. " + caption
    header = ["method"] + [f"{b.removeprefix('cifar10_ssl_')} labels" for b in benchmarks]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(c) + " |" for c in lines]
    return f"{caption}\n\n" + "\n".join(table) + "\n"


def make_tables(results: str = "results", include_unfinished: bool = False) -> List[str]:
    """Write every table that has finished runs (or any runs, ``include_unfinished``); return the paths written."""
    out = os.path.join(results, "tables")
    os.makedirs(out, exist_ok=True)
    written = []
    for table in tables():
        ours = assemble(table, results, include_unfinished)
        ablation_rows = {row.label for row in table.rows if "_" in row.folder}  # folder <method>_<tag>
        if ours is None or (table.ablation and not ablation_rows & set(ours.label)):
            continue  # an ablation table needs its ablation runs
        paper = paper_values(table)
        for latex, suffix in ((False, "md"), (True, "tex")):
            path = os.path.join(out, f"{table.name}.{suffix}")
            write_text(path, format_table(table, ours, paper, results, latex, include_unfinished))
            written.append(path)
    text = cifar_table(results, include_unfinished)
    if text:
        path = os.path.join(out, "cifar10_ssl.md")
        write_text(path, text)
        written.append(path)
    written += multimnist.write_table(results, include_unfinished=include_unfinished)  # the points of Figure 2
    written += speech_commands.write_tables(results, include_unfinished)  # Tables 5-7
    written += multimnist_aux.write_table(results, include_unfinished=include_unfinished)
    written += cifar_cpu.write_table(results, include_unfinished=include_unfinished)  # the CPU-scale preset
    return written


def main(argv=None) -> int:
    return results_command(__doc__, make_tables, log, argv)


if __name__ == "__main__":
    sys.exit(main())
