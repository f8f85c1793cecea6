"""What the reporting commands share: the ``--results DIR [--include-unfinished]`` command line (every report but
Speech Commands', which adds ``--selection``), the log line and the caption sentence on the runs left out, and one
collection of runs handed to each of a report's writers."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Callable, List, Sequence

from experiments.storage.results_io import run_finished, select_runs


def report_selection(results: str, include_unfinished: bool, logger: logging.Logger) -> bool:
    """Log what tables and figures leave out (or that there is nothing); False when there is nothing to use."""
    used, left_out = select_runs(results, "*", include_unfinished)
    if not used and not left_out:
        logger.error("no runs found under %s", results)
        return False
    if left_out:
        logger.warning("leaving out %d unfinished run(s) (--include-unfinished to show them): %s", len(left_out),
                       "; ".join(f"{os.path.relpath(d, results)} ({why})" for d, why in left_out))
    if not used:
        logger.error("no finished runs under %s (%d unfinished; pass --include-unfinished for a look at them)",
                     results, len(left_out))
        return False
    return True


def left_out_note(results: str, benchmarks: Sequence[str], include_unfinished: bool) -> str:
    """The caption's sentence on the runs left out (unfinished), or on unfinished runs included."""
    notes = []
    for benchmark in benchmarks:
        used, left_out = select_runs(results, benchmark, include_unfinished)
        if include_unfinished:
            notes += [os.path.relpath(d, results) for d in used if not run_finished(d)[0]]
        else:
            notes += [f"{os.path.relpath(d, results)} ({why})" for d, why in left_out]
    if not notes:
        return ""
    if include_unfinished:
        return f" INCLUDES {len(notes)} UNFINISHED RUN(S): {', '.join(notes)}."
    return f" Left out {len(notes)} unfinished run(s): {', '.join(notes)}."


def write_outputs(results: str, collect: Callable, *writers, include_unfinished: bool = False) -> List[str]:
    """Collect the runs under ``results`` once (``collect(results, finished_only)``, a DataFrame) and hand them to
    each writer (``writer(results, runs, include_unfinished=...)`` → the paths it wrote); nothing when there are
    no runs."""
    runs = collect(results, not include_unfinished)
    if runs.empty:
        return []
    return [path for writer in writers for path in writer(results, runs, include_unfinished=include_unfinished)]


def results_command(description: str, make: Callable[[str, bool], List[str]], logger: logging.Logger,
                    argv=None) -> int:
    """A report's command line: ``--results DIR`` (default ``results``) and ``--include-unfinished``; logs the
    runs left out, then each file ``make(DIR, include_unfinished)`` writes. Exit status 1 when there is nothing
    to report."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results", help="results root")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="also use runs that have not finished (for a look at runs in progress; outputs say so)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not report_selection(args.results, args.include_unfinished, logger):
        return 1
    for path in make(args.results, args.include_unfinished):
        logger.info("wrote %s", path)
    return 0
