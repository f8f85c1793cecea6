"""Results you can trust: --force retrains, resume refuses changed settings, one writer per run, damaged files
are caught, tables use finished runs only, flags are checked before anything is written."""
import json
import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from data import check as data_check
from data import synthetic
from experiments import train_cifar_ssl, train_nyuv2
from experiments.reporting import figures as make_figures
from experiments.reporting import tables as make_tables
from experiments.training.metrics import ConfusionMatrix
from experiments.storage.results_io import (RunError, RunLock, check_metrics, identity_difference, read_metrics,
                                    run_identity)
from tests.conftest import ROOT

TINY = ["--width", "0.0625", "--batch-size", "1", "--workers", "0", "--meta-every", "1", "--log-level", "WARNING",
        "--method", "auxinash", "--main-task", "seg"]


@pytest.fixture(scope="module")
def nyuv2_root(tmp_path_factory):
    return synthetic.write_nyuv2(str(tmp_path_factory.mktemp("data") / "nyuv2"), n_train=2, n_test=2, shape=(32, 64))


def launch(root, out, *flags, epochs=2):
    return train_nyuv2.main(["--data-root", root, "--out", str(out), "--epochs", str(epochs), *TINY, *flags])


def exit_code(capsys, *args, **kwargs):
    with pytest.raises(SystemExit) as info:
        launch(*args, **kwargs)
    return info.value.code, capsys.readouterr().err


def metrics(run):
    return pd.read_csv(os.path.join(run, "metrics.csv")).drop(columns="seconds")


# 1. --force starts the run again from scratch, even with --resume and over a finished or damaged run
def test_force_retrains_a_finished_run(nyuv2_root, tmp_path, caplog):
    run = launch(nyuv2_root, tmp_path)
    before = metrics(run)
    os.utime(os.path.join(run, "metrics.csv"), (1, 1))
    with caplog.at_level(logging.WARNING, logger="auxinash"):
        assert launch(nyuv2_root, tmp_path, "--resume", "--force") == run
    assert os.path.getmtime(os.path.join(run, "metrics.csv")) > 1
    # every round trained again, same seed → same rows, bit for bit (the same code in this process)
    pd.testing.assert_frame_equal(metrics(run), before, check_exact=True)
    aside = [n for n in os.listdir(os.path.dirname(run)) if n.startswith("seed0.old-")]
    assert len(aside) == 1 and "moved the earlier run" in caplog.text and aside[0] in caplog.text
    assert os.path.exists(os.path.join(os.path.dirname(run), aside[0], "status.json"))


def test_force_recovers_a_corrupt_checkpoint(nyuv2_root, tmp_path, capsys):
    run = launch(nyuv2_root, tmp_path, "--stop-after", "1")
    with open(os.path.join(run, "checkpoint.pt"), "wb") as f:
        f.write(b"not a checkpoint")
    code, err = exit_code(capsys, nyuv2_root, tmp_path, "--resume")
    assert code == 3 and os.path.join(run, "checkpoint.pt") in err and "--force" in err
    launch(nyuv2_root, tmp_path, "--resume", "--force")
    assert os.path.exists(os.path.join(run, "status.json")) and len(metrics(run)) == 4


# 2. and 5. a run's identity is its settings
def test_resume_refuses_changed_settings(nyuv2_root, tmp_path, capsys):
    run = launch(nyuv2_root, tmp_path, "--stop-after", "1")
    code, err = exit_code(capsys, nyuv2_root, tmp_path, "--resume", "--lr", "0.01")
    assert code == 3 and "--lr: 0.0001 → 0.01" in err and "--force" in err and "--tag" in err
    code, err = exit_code(capsys, nyuv2_root, tmp_path, "--resume", "--no-augment")
    assert code == 3 and "--no-augment: (unset) → True" in err
    assert len(metrics(run)) == 2  # nothing was written
    # settings that do not change results may differ
    launch(nyuv2_root, tmp_path, "--resume", "--workers", "1", "--log-level", "ERROR", "--device", "cpu")
    assert os.path.exists(os.path.join(run, "status.json"))


def test_a_finished_run_never_stands_in_for_other_settings(nyuv2_root, tmp_path, capsys):
    run = launch(nyuv2_root, tmp_path, epochs=1)
    code, err = exit_code(capsys, nyuv2_root, tmp_path, "--resume", epochs=2)
    assert code == 3 and "finished run with other settings" in err and "--epochs: 1 → 2" in err
    assert len(metrics(run)) == 2
    # the same settings: left as they are
    stamp = os.path.getmtime(os.path.join(run, "metrics.csv"))
    launch(nyuv2_root, tmp_path, "--resume", epochs=1)
    assert os.path.getmtime(os.path.join(run, "metrics.csv")) == stamp


def test_identity_leaves_out_launch_flags_and_unset_switches():
    base = {"lr": 1e-4, "seed": 0, "out": "a", "device": "cuda", "workers": 4, "resume": True, "meta_lr": None,
            "amp": False}
    assert run_identity(base) == {"lr": 1e-4, "seed": 0}
    assert run_identity({**base, "out": "b", "device": "cpu", "new_optional_flag": None}) == run_identity(base)
    assert run_identity({**base, "new_flag": 3}) != run_identity(base)
    assert identity_difference({"lr": 1e-4}, {"lr": 1e-3, "amp": True}) == ["--amp: (unset) → True",
                                                                          "--lr: 0.0001 → 0.001"]


# 3. one writer per run folder
def hold_lock(run_dir):
    process = subprocess.Popen([sys.executable, "-c", "import sys, time; from experiments.storage.results_io import RunLock; "
                                "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", run_dir],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_launch_stops_while_a_run_is_trained(nyuv2_root, tmp_path, capsys):
    run = os.path.join(str(tmp_path), "nyuv2", "auxinash", "main-seg", "seed0")
    holder = hold_lock(run)
    try:
        for flags in ([], ["--resume"], ["--resume", "--force"]):
            code, err = exit_code(capsys, nyuv2_root, tmp_path, *flags)
            assert code == 75 and f"process {holder.pid} on {socket.gethostname()}" in err
        assert sorted(os.listdir(run)) == ["lock"]
    finally:
        holder.kill()
        holder.wait()
    launch(nyuv2_root, tmp_path, "--resume")  # the kernel released the dead holder's lock
    assert os.path.exists(os.path.join(run, "status.json"))
    assert open(os.path.join(run, "lock")).read() == ""  # released on exit


def test_a_stale_lock_is_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with open(tmp_path / "lock", "w") as f:
        json.dump({"host": socket.gethostname(), "pid": int(dead.stdout), "slurm_job": None, "started": "then"}, f)
    with caplog.at_level(logging.WARNING, logger="auxinash"):
        with RunLock(str(tmp_path)):
            assert json.load(open(tmp_path / "lock"))["pid"] == os.getpid()
    assert f"process {int(dead.stdout)}" in caplog.text and "taking over" in caplog.text


def test_a_holder_on_another_host_counts_while_its_slurm_job_runs(tmp_path, monkeypatch):
    """A cluster filesystem may not share locks between hosts: the holder's SLURM job decides there."""
    from experiments.storage import results_io
    with open(tmp_path / "lock", "w") as f:
        json.dump({"host": "node-17", "pid": 4242, "slurm_job": "991_3", "started": "then"}, f)
    monkeypatch.setattr(results_io, "slurm_job_running", lambda job: job == "991_3")
    with pytest.raises(results_io.RunLockedError, match="SLURM job 991_3"):
        RunLock(str(tmp_path)).acquire()
    monkeypatch.setattr(results_io, "slurm_job_running", lambda job: False)
    RunLock(str(tmp_path)).acquire().release()


# 4. what a resume reads is checked
@pytest.mark.parametrize("damage", ["cut mid-row", "deleted", "lost round", "empty"])
def test_resume_stops_on_a_damaged_metrics_file(nyuv2_root, tmp_path, capsys, damage):
    run = launch(nyuv2_root, tmp_path, "--stop-after", "2", epochs=3)
    path = os.path.join(run, "metrics.csv")
    text = open(path).read()
    if damage == "cut mid-row":
        open(path, "w").write(text[:-7])
    elif damage == "deleted":
        os.remove(path)
    elif damage == "lost round":
        lines = text.splitlines(keepends=True)
        open(path, "w").write("".join(lines[:1] + lines[3:]))  # round 0's rows gone
    else:
        open(path, "w").close()
    code, err = exit_code(capsys, nyuv2_root, tmp_path, "--resume", epochs=3)
    assert code == 3 and path in err and "--force" in err
    assert not os.path.exists(os.path.join(run, "status.json"))


def test_check_metrics_accepts_rows_after_the_checkpoint(tmp_path):
    path = str(tmp_path / "metrics.csv")
    rows = [{"round": r, "step": r, "split": s, "lr": 0.1, "loss_a": 1.0, "weight_a": 1.0} for r in range(3)
            for s in ("train", "test")]
    pd.DataFrame(rows).to_csv(path, index=False)
    assert [r["round"] for r in check_metrics(path, 2)] == [0, 0, 1, 1]  # round 2 came after the checkpoint
    assert check_metrics(path, 0) == []


def test_stale_temporary_files_are_removed(nyuv2_root, tmp_path):
    run = launch(nyuv2_root, tmp_path, "--stop-after", "1")
    open(os.path.join(run, "checkpoint.pt.tmp999999"), "w").close()
    launch(nyuv2_root, tmp_path, "--resume")
    assert not [n for n in os.listdir(run) if ".tmp" in n]


# 6. tables and figures from finished runs only
def fixture_run(results, method, main, seed, value, finished=True, test_rows=True):
    run = os.path.join(results, "cityscapes", method, main, f"seed{seed}")
    os.makedirs(run)
    rows = [{"round": r, "step": r, "split": "test" if test_rows else "val", "seg_miou": value, "seg_pixacc": value,
             "part_seg_miou": value, "part_seg_pixacc": value, "disp_abs_err": 1.0} for r in range(12)]
    pd.DataFrame(rows).to_csv(os.path.join(run, "metrics.csv"), index=False)
    json.dump({"selection": "last", "device_name": "cpu", "identity_digest": "abc"},
              open(os.path.join(run, "config.json"), "w"))
    if finished:
        json.dump({"finished": True, "identity_digest": "abc"}, open(os.path.join(run, "status.json"), "w"))
    return run


def test_tables_leave_out_unfinished_runs(tmp_path, caplog):
    results = str(tmp_path)
    fixture_run(results, "stl", "main-all", 0, 30.0)
    fixture_run(results, "equal", "main-all", 0, 40.0)
    fixture_run(results, "equal", "main-all", 1, 90.0, finished=False)  # would pull the mean to 65
    fixture_run(results, "pcgrad", "main-all", 0, 50.0, test_rows=False)
    with caplog.at_level(logging.WARNING):
        assert make_tables.main(["--results", results]) == 0
    text = open(os.path.join(results, "tables", "cityscapes.md")).read()
    assert "| LS | **40 ± 0**" in text and "Left out 1 unfinished run(s): cityscapes/equal/main-all/seed1" in text
    assert "seed1 (unfinished)" in caplog.text and "pcgrad/main-all/seed0: its metrics.csv has no test rows" in caplog.text
    make_tables.main(["--results", results, "--include-unfinished"])
    text = open(os.path.join(results, "tables", "cityscapes.md")).read()
    assert "| LS | **65 ± 35**" in text and "INCLUDES 1 UNFINISHED RUN(S)" in text


def test_tables_and_figures_say_when_there_are_no_runs(tmp_path, caplog):
    for module in (make_tables, make_figures):
        for results in (str(tmp_path / "missing"), str(tmp_path)):
            caplog.clear()
            assert module.main(["--results", results]) == 1
            assert f"no runs found under {results}" in caplog.text
    fixture_run(str(tmp_path), "stl", "main-all", 0, 30.0, finished=False)
    caplog.clear()
    assert make_tables.main(["--results", str(tmp_path)]) == 1
    assert "no finished runs" in caplog.text and "--include-unfinished" in caplog.text


def test_status_from_other_settings_does_not_count(tmp_path):
    run = fixture_run(str(tmp_path), "stl", "main-all", 0, 30.0)
    json.dump({"finished": True, "identity_digest": "other"}, open(os.path.join(run, "status.json"), "w"))
    assert make_tables.collect(str(tmp_path), "cityscapes") == {}


# 7. the smaller items
@pytest.mark.parametrize("flag, value, message", [("--meta-every", "0", "must be > 0"), ("--width", "0", "must be > 0"),
                                                   ("--epochs", "0", "must be > 0"), ("--lr", "-1", "must be > 0"),
                                                   ("--seed", "-1", "must be ≥ 0"), ("--batch-size", "x", "an integer")])
def test_numeric_flags_are_checked_before_anything_is_written(nyuv2_root, tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as info:
        train_nyuv2.main(["--data-root", nyuv2_root, "--out", str(tmp_path / "out"), flag, value])
    assert info.value.code == 2 and flag in (err := capsys.readouterr().err) and message in err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("flag", ["--iterations", "--val-size", "--eval-every"])
def test_cifar_flags_are_checked_before_anything_is_written(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as info:
        train_cifar_ssl.main(["--data-root", str(tmp_path), "--out", str(tmp_path / "out"), flag, "0"])
    assert info.value.code == 2 and f"argument {flag}: must be > 0" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_an_empty_evaluation_split_says_so():
    with pytest.raises(ValueError, match="evaluation split is empty"):
        ConfusionMatrix(3).result()


def test_data_check_rejects_nan_depth(tmp_path, capsys):
    root = synthetic.write_nyuv2(str(tmp_path / "nyuv2"), n_train=2, n_test=2, shape=(32, 64))
    depth = os.path.join(root, "train", "depth", "0.npy")
    values = np.load(depth)
    values.flat[5] = np.nan
    np.save(depth, values)
    assert data_check.main(["nyuv2", "--root", root]) == 1
    assert "non-finite depth" in capsys.readouterr().err


def test_an_empty_metrics_file_is_named(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("")
    with pytest.raises(RunError, match=f"{path} is empty"):
        read_metrics(str(path))


def test_run_all_fails_when_every_benchmark_was_skipped(tmp_path):
    result = subprocess.run(["bash", "run_all.sh", "--benchmarks", "nyuv2 cifar10_ssl", "--nyuv2-root",
                             str(tmp_path / "none"), "--cifar10-root", str(tmp_path / "none"), "--out",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "every requested benchmark was skipped" in result.stderr


def test_runs_moved_aside_by_force_are_not_read_as_runs(tmp_path):
    """``--force`` moves a run to ``seed<k>.old-<time>``: tables, figures and the sweep status must not read it."""
    from experiments.reporting import multimnist as figures_multimnist
    from experiments.storage.results_io import find_runs
    for name in ("seed0", "seed0.old-20261123-031500"):
        run = tmp_path / "multimnist" / "nashmtl" / "main-all" / name
        run.mkdir(parents=True)
        json.dump({"method": "nashmtl", "seed": 0}, open(run / "config.json", "w"))
    assert [os.path.basename(d) for d in find_runs(str(tmp_path))] == ["seed0"]
    assert figures_multimnist.collect_points(str(tmp_path), finished_only=False).empty  # no metrics: no point


def test_a_live_process_of_the_same_slurm_job_holds_its_lock(monkeypatch):
    """Several runs of one allocation (``--launcher local`` inside sbatch) share SLURM_JOB_ID: a live holder on
    this host still holds; only a record from another node of the same job is an earlier, requeued try."""
    from experiments.storage import results_io
    monkeypatch.setenv("SLURM_JOB_ID", "555")
    mine = results_io.holder_info()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert results_io.holder_alive({**mine, "pid": live.pid}) is True
        assert results_io.holder_alive({**mine, "host": "another-node", "pid": live.pid}) is False
    finally:
        live.kill()
        live.wait()
    assert results_io.holder_alive({**mine, "pid": live.pid}) is False


def test_identity_tells_synthetic_data_apart(monkeypatch):
    """The data root is not part of a run's identity (data may move), but whether the data is synthetic is."""
    import torch

    from experiments.training.benchmarks import ToyBenchmark
    from experiments.training.loop import TrainConfig, run_identity_of
    from experiments.storage.results_io import identity_digest
    benchmark = ToyBenchmark(torch.device("cpu"), 0, epochs=10)
    config = TrainConfig(method="auxinash", main_task="main")
    real = identity_digest(run_identity_of(benchmark, config))
    monkeypatch.setattr(benchmark, "describe", lambda: {"synthetic_data": True})
    assert identity_digest(run_identity_of(benchmark, config)) != real
