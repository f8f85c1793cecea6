"""Speech Commands: the paper's Table 5 (mean test accuracy over the ten keywords, 500 and 1,000 training clips)
and Tables 6–7 (test accuracy per keyword), from the runs under ``<results>/speech_commands_<n>/``.

    python experiments/tables_speech_commands.py [--results results] [--selection best-val|last]
                                                 [--include-unfinished]     (also called by make_tables.py)

Per run, ``--selection best-val`` (the default; the paper does not state its rule) takes the test metrics at the
round of the best validation accuracy: of the main keyword for STL and the auxiliary-learning methods (one model
per keyword, ``main-<word>``), of the mean over the ten keywords for a multi-task model (``main-all``: one model,
so one round for all its columns); ties go to the earliest round. ``last`` takes the last round. Keyword w's
cell comes from the run whose main task is w (or from the multi-task model); a seed's mean is over the keywords
it has; cells are mean ± std over seeds. The paper's values stand beside ours: Table 5 from
``results/paper/speech_commands.csv``; per keyword from ``results/paper/speech_commands_keywords.csv`` (columns
method, n_train, zero … nine) when that file exists (not transcribed yet). Writes ``tables/speech_commands.md``
(Table 5), ``tables/speech_commands_keywords_<n>.md`` (Tables 6–7) and ``tables/speech_commands_runs.csv``
(one row per run and keyword: the selected round, validation and test accuracy, test recall).
"""
from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import sys
from typing import Dict, List, Optional

import pandas as pd

from data.speech_commands import WORDS
from experiments.storage.results_io import (PAPER_DIR, RunError, RunFolder, read_json, read_metrics, run_finished,
                                            select_runs, write_frame, write_text)
from experiments.orchestration.plan import method_rows

log = logging.getLogger("tables_speech_commands")
PREFIX = "speech_commands_"
PAPER_TABLE = {500: 6, 1000: 7}  # the paper's per-keyword tables (assumed in size order)
SELECTIONS = ("best-val", "last")
CAGRAD_NOTE = ("The paper's Table 5 CAGrad row (95.7 / 95.7) disagrees with the means of its own per-keyword "
               "Tables 6–7 (96.8 / 95.9).")


def sizes(results: str) -> List[int]:
    found = []
    for path in glob.glob(os.path.join(results, PREFIX + "*")):
        suffix = os.path.basename(path)[len(PREFIX):]
        if suffix.isdigit() and os.path.isdir(path):
            found.append(int(suffix))
    return sorted(found)


def selected_round(rows: pd.DataFrame, main: Optional[str], selection: str = "best-val") -> pd.Series:
    """The test row of the selected round (see the module's docstring), with ``round`` and the validation
    accuracy of each word as ``val_<word>_acc``."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    val = rows[rows.split == "val"].set_index("round").sort_index()
    test = rows[rows.split == "test"].set_index("round").sort_index()
    rounds = val.index.intersection(test.index)
    if not len(rounds):
        raise ValueError("its metrics.csv has no round with both validation and test rows")
    val, test = val.loc[rounds], test.loc[rounds]
    if selection == "last":
        best = rounds.max()
    else:
        words = [w for w in WORDS if f"{w}_acc" in val.columns]
        score = val[f"{main}_acc"] if main else val[[f"{w}_acc" for w in words]].mean(axis=1)
        best = score.idxmax()
    row = test.loc[best].copy()
    row["round"] = best
    for column in val.columns:
        if column.endswith("_acc"):
            row[f"val_{column}"] = val.loc[best, column]
    return row


def collect(results: str, n_train: int, selection: str = "best-val", include_unfinished: bool = False
            ) -> pd.DataFrame:
    """One row per (run, keyword it reports): method, seed, keyword, round, val/test accuracy, test recall."""
    benchmark = f"{PREFIX}{n_train}"
    records = []
    for run_dir in select_runs(results, benchmark, include_unfinished)[0]:
        run = RunFolder.parse(run_dir)
        method, main, seed = run.method_folder, run.main_task or "all", run.seed
        try:
            config = read_json(run.file("config"))
            row = selected_round(read_metrics(run.file("metrics")),
                                 None if main == "all" else main, selection)
        except (KeyError, ValueError, IndexError, RunError) as error:
            log.warning("leaving out %s: %s", run_dir, error)
            continue
        for word in (WORDS if main == "all" else (main,)):
            if f"{word}_acc" not in row:
                continue
            records.append({"n_train": n_train, "method": method, "seed": seed, "keyword": word,
                            "main": main, "round": int(row["round"]), "val_acc": row.get(f"val_{word}_acc"),
                            "test_acc": row[f"{word}_acc"], "test_recall": row.get(f"{word}_recall", math.nan),
                            "synthetic": bool(config.get("synthetic_data")),
                            "device": config.get("device_name", "?"), "run": os.path.relpath(run_dir, results)})
    return pd.DataFrame(records)


def _cell(values: pd.Series, digits: int = 2) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def _caption_notes(results: str, frames: List[pd.DataFrame], n_values: List[int], include_unfinished: bool) -> str:
    notes = ""
    used = pd.concat(frames) if frames else pd.DataFrame()
    benchmarks = [f"{PREFIX}{n}" for n in n_values]
    left = [(d, why) for b in benchmarks for d, why in select_runs(results, b, include_unfinished)[1]]
    if include_unfinished:
        unfinished = [os.path.relpath(d, results) for b in benchmarks for d in select_runs(results, b, True)[0]
                      if not run_finished(d)[0]]
        if unfinished:
            notes += f" INCLUDES {len(unfinished)} UNFINISHED RUN(S): {', '.join(unfinished)}."
    elif left:
        notes += f" Left out {len(left)} unfinished run(s): " + ", ".join(
            f"{os.path.relpath(d, results)} ({why})" for d, why in left) + "."
    if len(used) and used.synthetic.any():
        notes = "SYNTHETIC SMOKE RUN (tones, not speech), not comparable to the paper. " + notes
    return notes


def table5(results: str, data: Dict[int, pd.DataFrame], selection: str, include_unfinished: bool) -> str:
    paper = {}
    if os.path.exists(os.path.join(PAPER_DIR, "speech_commands.csv")):
        paper = pd.read_csv(os.path.join(PAPER_DIR, "speech_commands.csv")).set_index("method").to_dict("index")
    header, lines = ["method"], []
    for n in data:
        header += [f"{n} clips: accuracy", f"{n} clips: recall", f"{n}: seeds × keywords"]
    for row in method_rows():
        method, label = row.folder, row.label
        cells, any_runs = [label], False
        for n, frame in data.items():
            runs = frame[frame.method == method] if len(frame) else frame
            if len(runs):
                any_runs = True
                per_seed = runs.groupby("seed")[["test_acc", "test_recall"]].mean()
                keywords = runs.groupby("seed").keyword.nunique()
                accuracy = _cell(per_seed.test_acc)
                coverage = f"{len(per_seed)} × {'/'.join(str(k) for k in sorted(set(keywords)))}"
                recall = _cell(per_seed.test_recall, 1)
            else:
                accuracy = recall = coverage = ""
            if label in paper and f"acc_{n}" in paper[label]:
                accuracy += f" (paper {paper[label][f'acc_{n}']:.1f} ± {paper[label][f'acc_{n}_pm']:.1f})"
            cells += [accuracy, recall, coverage]
        if any_runs:
            lines.append(cells)
    caption = (f"Speech Commands, test accuracy (%) averaged over the ten one-vs-all keyword tasks, and their "
               f"positive-class recall (%) (paper Table 5; ours: the seed's mean over its keywords, mean ± std over "
               f"seeds; model selection: {selection}; the paper's value in parentheses). {CAGRAD_NOTE}")
    caption = _caption_notes(results, list(data.values()), list(data), include_unfinished) + caption
    return _markdown(caption, header, lines)


def keyword_table(results: str, n: int, frame: pd.DataFrame, selection: str, include_unfinished: bool) -> str:
    paper_keywords, paper_means = {}, {}
    path = os.path.join(PAPER_DIR, "speech_commands_keywords.csv")
    if os.path.exists(path):
        table = pd.read_csv(path)
        paper_keywords = table[table.n_train == n].set_index("method").to_dict("index")
    if os.path.exists(os.path.join(PAPER_DIR, "speech_commands.csv")):
        table = pd.read_csv(os.path.join(PAPER_DIR, "speech_commands.csv")).set_index("method")
        if f"acc_{n}" in table.columns:
            paper_means = table[f"acc_{n}"].to_dict()
    header = ["method"] + list(WORDS) + ["mean", "seeds"]
    lines = []
    for row in method_rows():
        method, label = row.folder, row.label
        runs = frame[frame.method == method] if len(frame) else frame
        if not len(runs):
            continue
        cells = [label]
        for word in WORDS:
            cell = _cell(runs[runs.keyword == word].test_acc)
            if label in paper_keywords and word in paper_keywords[label]:
                cell += f" ({paper_keywords[label][word]:g})"
            cells.append(cell)
        mean = _cell(runs.groupby("seed").test_acc.mean())
        if label in paper_means:
            mean += f" (paper T5: {paper_means[label]:g})"
        cells += [mean, str(runs.seed.nunique())]
        lines.append(cells)
    number = f"paper Table {PAPER_TABLE[n]}" if n in PAPER_TABLE else "no paper table at this size"
    paper_note = ("the paper's per-keyword values in parentheses" if paper_keywords else
                  "the paper's per-keyword values are not transcribed in results/paper/ yet; its Table 5 mean "
                  "beside ours")
    caption = (f"Speech Commands, {n} training clips: test accuracy (%) per keyword ({number}; mean ± std over "
               f"seeds; model selection: {selection}; {paper_note}). {CAGRAD_NOTE}")
    caption = _caption_notes(results, [frame], [n], include_unfinished) + caption
    return _markdown(caption, header, lines)


def _markdown(caption: str, header: List[str], lines: List[List[str]]) -> str:
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(line) + " |" for line in lines]
    return f"{caption}\n\n" + "\n".join(table) + "\n"


def write_tables(results: str = "results", include_unfinished: bool = False, selection: str = "best-val"
                 ) -> List[str]:
    """Write Table 5, one per-keyword table per training-set size found, and the per-run CSV; return the paths."""
    data = {n: collect(results, n, selection, include_unfinished) for n in sizes(results)}
    data = {n: frame for n, frame in data.items() if len(frame)}
    if not data:
        return []
    out = os.path.join(results, "tables")
    os.makedirs(out, exist_ok=True)
    written = []

    def write(name: str, text: str) -> None:
        path = os.path.join(out, name)
        write_text(path, text)
        written.append(path)

    write("speech_commands.md", table5(results, data, selection, include_unfinished))
    for n, frame in data.items():
        write(f"speech_commands_keywords_{n}.md", keyword_table(results, n, frame, selection, include_unfinished))
    path = os.path.join(out, "speech_commands_runs.csv")
    write_frame(path, pd.concat(data.values()))
    written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results", help="results root")
    parser.add_argument("--selection", default="best-val", choices=SELECTIONS, help="model selection per run")
    parser.add_argument("--include-unfinished", action="store_true", help="also use runs in progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    written = write_tables(args.results, args.include_unfinished, args.selection)
    if not written:
        log.error("no Speech Commands runs under %s", args.results)
        return 1
    for path in written:
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
