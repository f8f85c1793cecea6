"""The results layout has one owner (``experiments.storage.results_io``: ``RunFolder``, ``RUN_FILES``, the metrics.csv
column names); every tracked reference result re-reads into the same tables."""
from __future__ import annotations

import filecmp
import os
import shutil

import pytest

from experiments.storage.results_io import RunFolder, find_runs, loss_column, p_column, weight_column
from methods import METHOD_NAMES
from tests.conftest import ROOT

REFERENCE = os.path.join(ROOT, "results", "reference")


@pytest.mark.parametrize("folder", [
    RunFolder("results", "nyuv2", "auxinash", main_task="seg", seed=2),
    RunFolder("out/x", "multimnist", "auxinash", tag="p0.25", main_task="left"),
    RunFolder("o", "nyuv2", "auxinash", tag="fixed-p0.7_b", main_task="depth", seed=11),
    RunFolder("o", "cifar10_ssl_5000", "equal", seed=0),  # a multi-task method: main-all
])
def test_run_folder_builds_and_parses_its_path(folder):
    assert RunFolder.parse(folder.path) == folder
    assert folder.file("metrics").endswith(os.path.join(f"seed{folder.seed}", "metrics.csv"))


def test_run_folder_path_by_hand():
    folder = RunFolder("results", "multimnist", "equal", tag="w0.1", main_task=None, seed=3)
    assert folder.path == os.path.join("results", "multimnist", "equal_w0.1", "main-all", "seed3")


@pytest.mark.parametrize("path", ["results/nyuv2/auxinash/main-seg", "a/b/c/main-x/seed1.old-20260101",
                                  "a/b/c/d/seed1"])
def test_run_folder_rejects_other_paths(path):
    with pytest.raises(ValueError, match="not a run folder"):
        RunFolder.parse(path)


def test_method_names_hold_no_underscore():
    """``<method>_<tag>`` parses back only because no registry name holds an underscore."""
    assert all("_" not in name for name in METHOD_NAMES)


def test_metric_column_names():
    assert (loss_column("seg"), weight_column("seg"), p_column("seg")) == ("loss_seg", "weight_seg", "p_seg")


def test_every_reference_run_folder_parses():
    runs = [run for top in os.listdir(REFERENCE) for run in find_runs(os.path.join(REFERENCE, top))]
    assert runs, "no reference runs found"
    for run in runs:
        folder = RunFolder.parse(run)
        assert os.path.normpath(folder.path) == os.path.normpath(run)


def test_multimnist_reference_table_rereads_byte_identical(tmp_path):
    from experiments.reporting import multimnist as figures_multimnist
    source = os.path.join(REFERENCE, "multimnist")
    copy = tmp_path / "multimnist"
    shutil.copytree(os.path.join(source, "multimnist"), copy / "multimnist")
    figures_multimnist.write_table(str(copy))
    for name in ("multimnist.md", "multimnist.csv"):
        assert filecmp.cmp(copy / "tables" / name, os.path.join(source, "tables", name), shallow=False), name


def test_multimnist_reports_follow_include_unfinished(tmp_path):
    """make_tables passes --include-unfinished to the Multi-MNIST table, and its caption names what it left out
    (a run without status.json is unfinished)."""
    from experiments.reporting import tables
    reference = os.path.join(ROOT, "results", "reference", "multimnist")
    shutil.copytree(reference, tmp_path / "r", ignore=shutil.ignore_patterns("tables", "figures"))
    runs = sorted(p for p in (tmp_path / "r" / "multimnist").glob("*/main-*/seed*"))
    os.remove(runs[0] / "status.json")
    tables.make_tables(str(tmp_path / "r"))
    finished = open(tmp_path / "r" / "tables" / "multimnist.md").read()
    tables.make_tables(str(tmp_path / "r"), include_unfinished=True)
    everything = open(tmp_path / "r" / "tables" / "multimnist.md").read()
    assert "Left out 1 unfinished run(s)" in finished and "INCLUDES 1 UNFINISHED RUN(S)" in everything
    assert everything.count("\n| ") == finished.count("\n| ") + 1
