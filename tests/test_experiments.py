"""End-to-end: every training script × every method for one tiny round on synthetic layouts; resume;
table assembly on a fixture of CSVs; the run list of run_all.sh."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from data import synthetic
from experiments import train_cifar_ssl, train_cityscapes, train_nyuv2
from experiments.reporting import figures as make_figures
from experiments.reporting import tables as make_tables
from experiments.orchestration.plan import PLANS
from methods import METHOD_NAMES, METHODS, paper_methods
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("small")
    return {"nyuv2": synthetic.write_nyuv2(str(base / "nyuv2"), n_train=2, n_test=2, shape=(32, 64)),
            "cityscapes": synthetic.write_cityscapes(str(base / "cityscapes"), n_train=2, n_test=2, shape=(32, 64)),
            "cifar10": synthetic.write_cifar10(str(base / "cifar10"), per_batch=40, n_test=40)}


DENSE = ["--epochs", "1", "--width", "0.0625", "--batch-size", "2", "--workers", "0", "--meta-every", "1",
         "--log-level", "WARNING"]
CIFAR = ["--iterations", "2", "--eval-every", "2", "--labeled-batch", "4", "--unlabeled-batch", "4", "--width",
         "0.125", "--n-labeled", "50", "--val-size", "50", "--meta-every", "1", "--log-level", "WARNING"]


def check_run(run_dir, tasks, p_expected):
    rows = pd.read_csv(os.path.join(run_dir, "metrics.csv"))
    train = rows[rows.split == "train"]
    for task in tasks:
        assert np.isfinite(train[f"loss_{task}"]).all() and np.isfinite(train[f"weight_{task}"]).all()
    assert all(f"p_{t}" in rows.columns for t in tasks) == p_expected
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["synthetic_data"] is True and config["git_commit"] and config["torch"]
    assert os.path.exists(os.path.join(run_dir, "status.json"))
    return rows


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_script_and_method_runs(method, roots, tmp_path):
    out = str(tmp_path)
    main = [] if not METHODS[method].uses_main_task else ["--main-task", "depth"]
    run = train_nyuv2.main(["--data-root", roots["nyuv2"], "--method", method, "--out", out, *DENSE, *main])
    rows = check_run(run, ["seg", "depth", "normal"], method == "auxinash")
    assert {"seg_miou", "seg_pixacc", "depth_abs_err", "depth_rel_err", "normal_mean", "normal_median",
            "normal_within_11_25", "normal_within_22_5", "normal_within_30"} <= set(rows.columns)
    main = [] if not METHODS[method].uses_main_task else ["--main-task", "part_seg"]
    run = train_cityscapes.main(["--data-root", roots["cityscapes"], "--method", method, "--out", out, *DENSE, *main])
    rows = check_run(run, ["seg", "part_seg", "disp"], method == "auxinash")
    assert {"seg_miou", "part_seg_miou", "part_seg_pixacc", "disp_abs_err"} <= set(rows.columns)
    run = train_cifar_ssl.main(["--data-root", roots["cifar10"], "--method", method, "--out", out, *CIFAR])
    rows = check_run(run, ["cls", "rot", "exemplar"], method == "auxinash")
    assert set(rows.split) == {"train", "val", "test"} and "cls_acc" in rows.columns


def test_representation_and_fixed_p_flags(roots, tmp_path):
    run = train_nyuv2.main(["--data-root", roots["nyuv2"], "--method", "auxinash", "--p", "0.8", "--tag",
                            "fixed-p0.8", "--representation", "--out", str(tmp_path), *DENSE])
    assert run.endswith(os.path.join("nyuv2", "auxinash_fixed-p0.8", "main-seg", "seed0"))
    rows = pd.read_csv(os.path.join(run, "metrics.csv"))
    train = rows[rows.split == "train"].iloc[0]
    # p is logged in float32: one rounding, 2^-24 (measured 4e-8)
    np.testing.assert_allclose([train.p_seg, train.p_depth, train.p_normal], [2.4, 0.3, 0.3], rtol=1e-6)


def test_amp_path_runs(roots, tmp_path):
    """The bf16 autocast path (``--amp``, meant for CUDA) also runs under CPU autocast."""
    run = train_nyuv2.main(["--data-root", roots["nyuv2"], "--method", "auxinash", "--amp", "--out", str(tmp_path),
                            *DENSE])
    rows = check_run(run, ["seg", "depth", "normal"], True)
    assert json.load(open(os.path.join(run, "config.json")))["amp"] is True
    assert np.isfinite(rows[rows.split == "test"]["seg_miou"]).all()


def test_resume_continues_exactly(roots, tmp_path, capsys):
    args = ["--data-root", roots["nyuv2"], "--method", "auxinash", "--main-task", "seg", "--epochs", "3",
            "--width", "0.0625", "--batch-size", "1", "--workers", "0", "--meta-every", "1", "--log-level", "WARNING"]
    straight = train_nyuv2.main([*args, "--out", str(tmp_path / "a")])
    interrupted = train_nyuv2.main([*args, "--out", str(tmp_path / "b"), "--stop-after", "1"])
    assert not os.path.exists(os.path.join(interrupted, "status.json"))
    with pytest.raises(SystemExit) as exit_info:
        train_nyuv2.main([*args, "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 3 and "--resume" in capsys.readouterr().err
    resumed = train_nyuv2.main([*args, "--out", str(tmp_path / "b"), "--resume"])
    a = pd.read_csv(os.path.join(straight, "metrics.csv")).drop(columns="seconds")
    b = pd.read_csv(os.path.join(resumed, "metrics.csv")).drop(columns="seconds")
    assert len(a) == 6 and any(c.startswith("p_") for c in a.columns)
    # exact: the resumed run restores every state and recomputes the same numbers in the same order, in this process
    # (pandas' default would allow 1e-5; measured identical with 1 and 2 threads)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # a finished run is not trained again
    stamp = os.path.getmtime(os.path.join(resumed, "metrics.csv"))
    train_nyuv2.main([*args, "--out", str(tmp_path / "b"), "--resume"])
    assert os.path.getmtime(os.path.join(resumed, "metrics.csv")) == stamp


def test_missing_data_exits_with_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_nyuv2.main(["--data-root", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "MTAN" in capsys.readouterr().err


def write_fixture_run(results, benchmark, method, main, seed, values, config=None):
    run = os.path.join(results, benchmark, method, main, f"seed{seed}")
    os.makedirs(run)
    rows = [{"round": r, "step": r, "split": "test", **{k: v + r for k, v in values.items()}} for r in range(12)]
    pd.DataFrame(rows).to_csv(os.path.join(run, "metrics.csv"), index=False)
    json.dump({"selection": "last", "device_name": "cpu", "synthetic_data": False, **(config or {})},
              open(os.path.join(run, "config.json"), "w"))
    json.dump({"finished": True}, open(os.path.join(run, "status.json"), "w"))


def test_make_tables_assembles_per_main_task(tmp_path):
    results = str(tmp_path)
    columns = {"seg_miou": 30.0, "seg_pixacc": 60.0, "part_seg_miou": 40.0, "part_seg_pixacc": 90.0,
               "disp_abs_err": 1.0}
    for seed, shift in ((0, 0.0), (1, 2.0)):
        for task in ("seg", "part_seg", "disp"):
            # each STL/AuxiNash model is good only at its own main task: assembly must pick that one
            own = {k: (v + shift if k.startswith(task + "_") else -100.0) for k, v in columns.items()}
            write_fixture_run(results, "cityscapes", "stl", f"main-{task}", seed, own)
            write_fixture_run(results, "cityscapes", "auxinash", f"main-{task}", seed,
                              {k: v * (1.1 if not k.endswith("err") else 0.9) for k, v in own.items()})
        write_fixture_run(results, "cityscapes", "equal", "main-all", seed, {k: v + shift for k, v in columns.items()})
    written = make_tables.make_tables(results)
    assert os.path.join(results, "tables", "cityscapes.md") in written
    text = open(os.path.join(results, "tables", "cityscapes.md")).read()
    # last 10 of rounds 0..11 → mean offset 6.5; seeds 0 and 2 apart → mean +1, std √2
    assert "| STL | 37.5 ± 1.4 (48.64)" in text
    assert "| LS | 37.5 ± 1.4 (37.66)" in text
    assert "AuxiNash | **40.6 ± 1.6** (52.52)" in text  # 1.1 × (30 + shift) + 6.5
    assert "SYNTHETIC" not in text and "+9.84" in text  # the paper's LS Δm
    ours = make_tables.assemble(make_tables.tables()[1], results).set_index("label")
    np.testing.assert_allclose(ours.loc["STL", "disp_abs_err"], 1.0 + 6.5 + 1.0)  # means of small integers: an ulp at most
    assert not os.path.exists(os.path.join(results, "tables", "cityscapes_aux_set.md"))  # no ablation runs
    assert "\\begin{tabular}" in open(os.path.join(results, "tables", "cityscapes.tex")).read()


def test_make_figures(roots, tmp_path):
    train_nyuv2.main(["--data-root", roots["nyuv2"], "--method", "auxinash", "--out", str(tmp_path), *DENSE])
    written = make_figures.make_figures(str(tmp_path))
    assert {os.path.basename(p) for p in written} == {"nyuv2_auxinash_weights.png", "nyuv2_curves.png"}


def test_run_all_dry_run():
    result = subprocess.run(["bash", "run_all.sh", "--dry-run", "--ablations"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    lines = result.stdout.strip().splitlines()
    assert sum("train_nyuv2.py" in l and "--method auxinash --main-task" in l and "--tag" not in l for l in lines) == 9
    assert sum("train_cifar_ssl.py" in l for l in lines) == len(paper_methods()) * 2 * 3  # default: the paper's
    assert any("--p 0.7 --tag fixed-p0.7" in l for l in lines) and any("--tag aux-set" in l for l in lines)
    assert any("train_toy.py" in l for l in lines)
    narrowed = subprocess.run(["bash", "run_all.sh", "--dry-run", "--benchmarks", "cifar10_ssl", "--methods", "stl",
                               "--seeds", "4"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert narrowed.count("\n") == 2 and "--seed 4" in narrowed


COMMANDS = sorted(name for name in os.listdir(os.path.join(ROOT, "experiments"))
                  if name.endswith(".py") and name != "__init__.py")


def test_the_commands_are_the_plans_scripts_and_the_reporting_entry_points():
    assert {os.path.basename(plan.script) for plan in PLANS.values()} <= set(COMMANDS)


HELP_RUNNER = """
import contextlib, io, json, runpy, sys
answers = {}
for script in sys.argv[1:]:
    sys.argv, out, code = [script, "--help"], io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")  # what `python <script>` runs
    except SystemExit as stop:
        code = stop.code or 0
    answers[script] = [code, out.getvalue()]
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def help_answers():
    """Each command's exit status and output for --help, all run as ``__main__`` in ONE fresh interpreter (one
    torch import instead of one per command: about 5 s each on the 2-core machine)."""
    scripts = [os.path.join("experiments", script) for script in COMMANDS]
    result = subprocess.run([sys.executable, "-c", HELP_RUNNER, *scripts], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("script", COMMANDS)
def test_help(script, help_answers):
    """Every command at the top of experiments/ (the scripts, and the entry points into reporting and sweeps that
    the README documents) answers --help."""
    code, output = help_answers[os.path.join("experiments", script)]
    assert code == 0 and "usage" in output
