"""The experiment plan (experiments/orchestration/plan.py): every benchmark entry's runs are command lines its own
script accepts, every grid follows the method registry, the tables read the runs the grids make, and run_all.sh is
the plan's thin wrapper."""
from __future__ import annotations

import argparse
import importlib
import shlex

import pytest

from experiments.orchestration import plan, run_all
from methods import METHOD_NAMES, METHODS


def arguments(**overrides):
    args = run_all.parser().parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def script_parser(script: str, monkeypatch) -> argparse.ArgumentParser:
    module = importlib.import_module(script[:-3].replace("/", "."))
    monkeypatch.setattr(module, "run", lambda parser, *args, **kwargs: parser, raising=False)
    result = module.main([]) if hasattr(module, "run") else None
    return result if isinstance(result, argparse.ArgumentParser) else None


@pytest.mark.parametrize("name", sorted(plan.PLANS))
@pytest.mark.parametrize("quick,ablations", [(False, False), (True, False), (False, True)])
def test_every_planned_run_parses_with_its_script(name, quick, ablations, monkeypatch):
    entry = plan.PLANS[name]
    commands, skipped = run_all.build_commands(arguments(benchmarks=name, quick=quick, ablations=ablations),
                                            list_only=True)
    assert commands and not skipped
    if entry.whole_list:
        return
    parser = script_parser(entry.script, monkeypatch)
    assert parser is not None, f"{entry.script} builds no parser through experiments.training.cli.run"
    for line in commands:
        words = shlex.split(line)
        assert words[1] == entry.script
        parser.parse_args(words[2:])  # exits (SystemExit) on a flag the script does not know


@pytest.mark.parametrize("name", sorted(plan.PLANS))
def test_every_grid_covers_the_registry(name):
    """Each benchmark runs every method that fits it (Multi-MNIST's Figure 2 grid: its three families), with
    ``--methods all`` (the default, the paper's methods, is the same list while every method is in the paper)."""
    text = "\n".join(run_all.build_commands(arguments(benchmarks=name, methods="all"), list_only=True)[0])
    expected = ("auxinash", "nashmtl", "ls") if name == "multimnist" else METHOD_NAMES
    for method in expected:
        assert f"--method {method}" in text or "--methods" in text and method in text, (name, method)


def test_multi_task_methods_train_one_model():
    commands = run_all.build_commands(arguments(benchmarks="nyuv2", seeds="0", methods="all"), list_only=True)[0]
    for name in METHOD_NAMES:
        count = sum(f"--method {name} " in line for line in commands)
        assert count == (1 if not METHODS[name].uses_main_task else 3), name


def test_unknown_benchmark_is_named():
    with pytest.raises(SystemExit, match="unknown benchmark: nope"):
        run_all.build_commands(arguments(benchmarks="nope"), list_only=True)


def test_default_benchmarks_follow_the_plan():
    assert plan.DEFAULT_BENCHMARKS == tuple(n for n, p in plan.PLANS.items() if p.default)
    assert arguments().benchmarks.split() == list(plan.DEFAULT_BENCHMARKS)


def test_every_table_row_reads_runs_the_plan_makes():
    """The tables and the grids cannot drift: each row's folder is a registered method (its runs come from the
    default grid) or an ablation folder that ``--ablations`` writes for the table's benchmark."""
    for table in plan.tables():
        commands = run_all.build_commands(arguments(benchmarks=table.benchmark, ablations=True), list_only=True)[0]
        runs = [shlex.split(c) for c in commands if "--tag" in c]
        tagged = {f"{words[words.index('--method') + 1]}_{words[words.index('--tag') + 1]}" for words in runs}
        for row in table.rows:
            assert row.folder in METHOD_NAMES or row.folder in tagged, (table.name, row)
        assert table.ablation == any(row.folder in tagged for row in table.rows), table.name


def test_table_columns_are_the_papers():
    """Columns come from the tasks' metric declarations; the paper's transcribed tables (results/paper/*.csv,
    written from the paper, not from this code) name the same columns in the same order."""
    import csv
    import os

    from experiments.reporting.tables import table_columns
    from experiments.storage.results_io import PAPER_DIR
    for table in plan.tables():
        if table.paper_file is None:
            continue
        with open(os.path.join(PAPER_DIR, table.paper_file)) as f:
            header = next(csv.reader(f))
        own = [c.removeprefix(f"{table.benchmark}_") for c in header if c.startswith(f"{table.benchmark}_")]
        paper = [c for c in (own or header) if c not in ("method", "delta_m", "change_pct")]
        assert list(table_columns(table)) == paper, table.name


def test_table_directions_follow_the_metrics():
    """Higher is better for mIoU, pixel accuracy and the within-angle percentages, lower for errors (paper
    Tables 1-2: ↑ / ↓ marks)."""
    from experiments.reporting.tables import CITYSCAPES_COLUMNS, NYUV2_COLUMNS
    for column, higher in {**NYUV2_COLUMNS, **CITYSCAPES_COLUMNS}.items():
        assert higher == (column.endswith(("miou", "pixacc")) or "within" in column), column


def test_held_out_auxiliary_set_tables_show_the_papers_table_3():
    """aux_set.csv (paper Table 3) holds both benchmarks, its columns prefixed by the benchmark's name; each
    benchmark's table reads its own: NYUv2 STL 38.30, AuxiNash Aux. Set 38.94; Cityscapes 48.64, 51.81."""
    from experiments.reporting.tables import paper_values
    found = {table.name: paper_values(table) for table in plan.tables()}
    assert found["nyuv2_aux_set"]["STL"]["seg_miou"] == 38.30
    assert found["nyuv2_aux_set"]["AuxiNash Aux. Set"]["seg_miou"] == 38.94
    assert found["cityscapes_aux_set"]["STL"]["seg_miou"] == 48.64
    assert found["cityscapes_aux_set"]["AuxiNash Aux. Set"]["seg_miou"] == 51.81
    assert "nyuv2_seg_miou" not in found["cityscapes_aux_set"]["STL"]
