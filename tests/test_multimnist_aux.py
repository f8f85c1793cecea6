"""Multi-MNIST in auxiliary mode (issue 23, part 2): noise labels, the auxiliary selection, the rotation task, a
tiny end-to-end run on synthetic digits, the table and figure, and run_all.sh's list."""
import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from data import multimnist as mm
from data import synthetic
from experiments.reporting import multimnist_aux as fig
from experiments import train_multimnist_aux
from experiments.reporting import figures as make_figures
from experiments.reporting import tables as make_tables
from experiments.training.benchmarks import multimnist_aux as aux
from methods import get_method
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return synthetic.write_mnist(str(tmp_path_factory.mktemp("digits") / "mnist"), n_train=200, n_test=60)


def tiny_data(root, cache, seed=0):
    spec = mm.PairSpec(n_train=120, n_val=40, n_test=40)
    return mm.MultiMnist(root, cache, spec, seed=seed)


# -- noise labels ---------------------------------------------------------------------------------------------

def test_noise_labels_are_seeded_uniform_and_independent_of_the_digits():
    names = ("noise1", "noise2")
    first, again, other = (aux.noise_labels(30_000, names, s) for s in (0, 0, 1))
    for name in names:
        np.testing.assert_array_equal(first[name], again[name])  # seeded
        assert not np.array_equal(first[name], other[name])  # another seed, other labels
        assert first[name].dtype == np.int64 and first[name].min() == 0 and first[name].max() == 9
        # uniform: each frequency has sampling error √(0.1 · 0.9 / 30,000) = 1.7e-3, so 0.01 is 5.8 of them
        assert np.abs(np.bincount(first[name], minlength=10) / 30_000 - 0.1).max() < 0.01
    # each head its own labels: two independent uniform labels agree with probability 0.1 (the same 1.7e-3 error)
    assert (first["noise1"] == first["noise2"]).mean() == pytest.approx(0.1, abs=0.01)
    # independent of the digit: against real-looking digit labels, every digit's noise labels are uniform
    digits = np.random.default_rng(5).integers(10, size=30_000)
    table = np.zeros((10, 10))
    np.add.at(table, (digits, first["noise1"]), 1)
    rows = table / table.sum(1, keepdims=True)
    assert np.abs(rows - 0.1).max() < 0.025


def test_noise_labels_are_fixed_per_training_image(synthetic_root, tmp_path):
    data = tiny_data(synthetic_root, str(tmp_path / "c"))
    bench = aux.MultiMnistAuxBenchmark(data, epochs=2, batch_size=16, device="cpu", seed=3,
                                       auxiliaries=["noise"], noise_tasks=2)
    n = len(data.train["left"])
    expected = aux.noise_labels(n, ("noise1", "noise2"), 3)
    for name in ("noise1", "noise2"):
        np.testing.assert_array_equal(data.train[name].numpy(), expected[name])
    assert not torch.equal(data.train["noise1"], data.train["left"])  # not the digit
    # across epochs (other orders), every image keeps its labels
    seen = {}
    for epoch in range(2):
        for batch in bench.round_batches(epoch):
            for image, label in zip(batch["image"], batch["noise2"]):
                key = image.numpy().tobytes()
                assert seen.setdefault(key, int(label)) == int(label)
    assert len(seen) == len(data.train_index)
    # the meta-validation batches carry them too; validation and test measure the main task only
    assert {"noise1", "noise2"} <= set(bench.meta_val_batch())
    assert "noise1" not in data.val and "noise1" not in data.test


# -- the auxiliary selection ------------------------------------------------------------------------------------

@pytest.mark.parametrize("auxiliaries, noise_tasks, names, label", [
    (["right", "noise", "rotation"], 1, ["left", "right", "noise", "rotation"], "right-noise-rotation"),
    (["noise"], 3, ["left", "noise1", "noise2", "noise3"], "noise3"),
    (["rotation", "right"], 2, ["left", "rotation", "right"], "rotation-right"),
    ([], 1, ["left"], "none"),
])
def test_auxiliary_selection_builds_tasks_and_heads(synthetic_root, tmp_path, auxiliaries, noise_tasks, names,
                                                     label):
    tasks = aux.auxiliary_tasks(auxiliaries, noise_tasks)
    assert [t.name for t in tasks] == names
    assert aux.auxiliary_set_label(auxiliaries, noise_tasks) == label
    bench = aux.MultiMnistAuxBenchmark(tiny_data(synthetic_root, str(tmp_path / "c")), epochs=1, batch_size=16,
                                       device="cpu", seed=0, auxiliaries=auxiliaries, noise_tasks=noise_tasks)
    assert bench.name == "multimnist_aux" and bench.task_names == tuple(names)
    model = bench.build_model()
    assert list(model.heads) == names
    assert {n: model.heads[n].out_features for n in names} == {n: 4 if n == "rotation" else 10 for n in names}
    batch = next(iter(bench.round_batches(0)))
    losses, _ = bench.losses(model, batch)
    assert losses.shape == (len(names),) and torch.isfinite(losses).all()
    results = bench.evaluate(model)
    assert set(results) == {"val", "test"} and all(list(r) == ["left_acc"] for r in results.values())
    assert bench.describe()["auxiliary_set"] == label


def test_auxiliary_selection_refuses_unknown_or_repeated_names():
    with pytest.raises(ValueError, match="unknown auxiliaries"):
        aux.auxiliary_tasks(["parity"])
    with pytest.raises(ValueError, match="named twice"):
        aux.auxiliary_tasks(["noise", "noise"])
    with pytest.raises(ValueError, match="noise_tasks"):
        aux.auxiliary_tasks(["noise"], 0)


# -- rotation -------------------------------------------------------------------------------------------------

def test_rotation_labels_and_images_hand_checked(synthetic_root, tmp_path):
    bench = aux.MultiMnistAuxBenchmark(tiny_data(synthetic_root, str(tmp_path / "c")), epochs=1, batch_size=16,
                                       device="cpu", seed=0, auxiliaries=["rotation"])
    image = torch.zeros(8, 1, 28, 28)
    image[:, 0, 0, 27] = 1.0  # one bright pixel at the top-right corner
    image[:, 0, 0, 26] = 0.5  # and a dimmer one left of it, so that each rotation is distinct
    rotated, angles = bench.rotate(image)
    assert angles.dtype == torch.int64 and set(angles.tolist()) <= {0, 1, 2, 3}
    # k × 90° counter-clockwise: the top-right pixel goes to top-left (90°), bottom-left (180°), bottom-right (270°)
    bright = {0: (0, 27), 1: (0, 0), 2: (27, 0), 3: (27, 27)}
    dim = {0: (0, 26), 1: (1, 0), 2: (27, 1), 3: (26, 27)}
    for picture, k in zip(rotated, angles.tolist()):
        assert picture[0][bright[k]] == 1.0 and picture[0][dim[k]] == 0.5 and picture.sum() == 1.5
    # the angles are the benchmark's seeded draw: the same seed draws them again
    again = aux.MultiMnistAuxBenchmark(tiny_data(synthetic_root, str(tmp_path / "c")), epochs=1, batch_size=16,
                                       device="cpu", seed=0, auxiliaries=["rotation"])
    assert torch.equal(again.rotate(image)[1], angles)
    # the rotation loss is the 4-way cross-entropy of the rotated images against those angles
    model = bench.build_model()
    batch = next(iter(bench.round_batches(0)))
    state = bench.rotation_generator.get_state()
    losses, _ = bench.losses(model, batch)
    bench.rotation_generator.set_state(state)
    rotated, angles = bench.rotate(batch["image"])
    expected = torch.nn.functional.cross_entropy(model.heads["rotation"](model.encode(rotated)), angles)
    assert losses[1].item() == pytest.approx(expected.item(), rel=1e-5)  # the same float32 forward pass
    # STL skips the rotated pass (its auxiliary loss reported as 0)
    bench.auxiliary_forward = False
    assert bench.losses(model, batch)[0][1].item() == 0.0


# -- end to end: training, the table and the figure --------------------------------------------------------------

def test_tiny_auxiliary_mode_runs_write_p_for_every_task_and_the_table_and_figure(synthetic_root, tmp_path):
    results = str(tmp_path / "results")
    common = ["--data-root", synthetic_root, "--cache-root", str(tmp_path / "cache"), "--preset", "tiny",
              "--out", results, "--device", "cpu", "--log-level", "WARNING", "--meta-every", "2"]
    all_aux = ["--auxiliaries", "right", "noise", "rotation", "--noise-tasks", "2"]
    runs = [["--method", "stl", "--auxiliaries", "none"], ["--method", "equal", "--auxiliaries", "right"],
            ["--method", "equal", "--auxiliaries", "noise"], ["--method", "equal", "--auxiliaries", "rotation"],
            ["--method", "auxinash", *all_aux], ["--method", "olaux", *all_aux], ["--method", "gcs", *all_aux]]
    run_dirs = [train_multimnist_aux.main(common + flags) for flags in runs]
    assert [os.path.relpath(d, results) for d in run_dirs] == [
        "multimnist_aux/stl_none/main-left/seed0", "multimnist_aux/equal_right/main-all/seed0",
        "multimnist_aux/equal_noise/main-all/seed0", "multimnist_aux/equal_rotation/main-all/seed0",
        "multimnist_aux/auxinash_right-noise2-rotation/main-left/seed0",
        "multimnist_aux/olaux_right-noise2-rotation/main-left/seed0",
        "multimnist_aux/gcs_right-noise2-rotation/main-left/seed0"]
    tasks = ["left", "right", "noise1", "noise2", "rotation"]
    config = json.load(open(os.path.join(run_dirs[4], "config.json")))
    assert config["tasks"] == tasks and config["auxiliary_set"] == "right-noise2-rotation"
    assert config["synthetic_data"] is True and config["n_train"] == 200 and config["selection"] == "best_val"
    metrics = pd.read_csv(os.path.join(run_dirs[4], "metrics.csv"))
    train = metrics[metrics.split == "train"]
    for task in tasks:
        assert train[f"p_{task}"].notna().all() and train[f"weight_{task}"].notna().all()
    assert not np.allclose(train[[f"p_{t}" for t in tasks]].iloc[-1], 1.0)  # p was learned (meta-updates ran)
    # p sums to K in float64 and is logged in float32 (metrics.csv keeps every digit): 2^-24 relative
    assert train[[f"p_{t}" for t in tasks]].iloc[-1].sum() == pytest.approx(len(tasks), rel=1e-6)
    assert list(metrics[metrics.split == "test"].dropna(axis=1).columns) == ["round", "step", "split", "left_acc"]
    # OL-AUX got ARML's β, not the optimiser's learning rate
    olaux = json.load(open(os.path.join(run_dirs[5], "config.json")))
    assert olaux["olaux_lr"] == 0.05 and olaux["method_settings"]["lr"] == 0.05
    # STL trains the main task alone
    assert json.load(open(os.path.join(run_dirs[0], "config.json")))["tasks"] == ["left"]

    written = make_tables.make_tables(results) + make_figures.make_figures(results)
    table, figure = (os.path.join(results, "tables", "multimnist_aux.md"),
                     os.path.join(results, "figures", "multimnist_aux_weights.png"))
    assert table in written and figure in written and os.path.getsize(figure) > 10_000
    text = open(table).read()
    assert text.startswith("SYNTHETIC SMOKE RUN") and "preset 'tiny'" in text
    assert "| right-noise2-rotation | AuxiNash | 1 (0) |" in text and "p noise2" in text
    # an option the main sweep does not know: a method without auxiliaries stops
    with pytest.raises(SystemExit):
        train_multimnist_aux.main(common + ["--method", "equal", "--auxiliaries", "none"])


def write_run(results, method, aux_set, seed, tasks, test_acc, p=None, weights=None, tag=None):
    """A finished run folder as the loop writes one (two epochs; the second is the best on validation)."""
    tag = tag or aux_set
    folder = os.path.join(results, "multimnist_aux", f"{method}_{tag}",
                          "main-left" if method in ("stl", "auxinash", "gcs", "olaux", "auxilearn") else "main-all",
                          f"seed{seed}")
    os.makedirs(folder)
    rows = []
    for r in range(2):
        train = {"round": r, "step": 10 * (r + 1), "split": "train"}
        train.update({f"weight_{t}": (weights or {}).get(t, 1.0) for t in tasks})
        if p is not None:
            train.update({f"p_{t}": 1.0 if r == 0 else p[t] for t in tasks})
        rows += [train, {"round": r, "step": 10 * (r + 1), "split": "val", "left_acc": 50.0 + r},
                 {"round": r, "step": 10 * (r + 1), "split": "test", "left_acc": test_acc - 10 * (1 - r)}]
    pd.DataFrame(rows).to_csv(os.path.join(folder, "metrics.csv"), index=False)
    config = {"method": method, "seed": seed, "tasks": tasks, "auxiliary_set": aux_set, "tag": tag, "identity_digest": "x",
              "preset": "few", "n_train": 1000, "n_val": 500, "n_test": 5000, "epochs": 2, "batch_size": 64,
              "lr": 1e-3, "device_name": "cpu", "synthetic_data": False, "data_note": "standard"}
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    json.dump({"finished": True, "identity_digest": "x"}, open(os.path.join(folder, "status.json"), "w"))


def test_table_and_figure_on_a_tiny_results_tree(tmp_path):
    results = str(tmp_path)
    all_tasks = ["left", "right", "noise1", "noise2", "rotation"]
    for seed, base in ((0, 80.0), (1, 82.0)):
        write_run(results, "stl", "none", seed, ["left"], base)
        write_run(results, "equal", "right", seed, ["left", "right"], base - 1.0)
        write_run(results, "equal", "noise", seed, ["left", "noise"], base - 3.0 - seed)
        write_run(results, "equal", "rotation", seed, ["left", "rotation"], base + 2.0)
        write_run(results, "equal", "noise2", seed, ["left", "noise1", "noise2"], base - 9.0)  # not noise2's effect
        write_run(results, "equal", "right-noise2-rotation", seed, all_tasks, base - 5.0)
        write_run(results, "gcs", "right-noise2-rotation", seed, all_tasks, base, weights={"noise1": 0.25})
    # seed 0 orders every pair as the effects (rotation +2 > right −1 > noise −3.5); seed 1 swaps right and rotation
    write_run(results, "auxinash", "right-noise2-rotation", 0, all_tasks, 81.0,
              p={"left": 2.0, "right": 0.9, "noise1": 0.3, "noise2": 0.2, "rotation": 1.6})
    write_run(results, "auxinash", "right-noise2-rotation", 1, all_tasks, 83.0,
              p={"left": 2.0, "right": 1.6, "noise1": 0.3, "noise2": 0.2, "rotation": 0.9})
    # an ablation (a tag <auxiliary set>_<variant>) gets rows of its own and stays out of the figure
    write_run(results, "auxinash", "right-noise2-rotation", 0, all_tasks, 70.0, tag="right-noise2-rotation_fast",
              p={"left": 4.0, "right": 0.3, "noise1": 0.2, "noise2": 0.1, "rotation": 0.4})
    runs = fig.collect_runs(results)
    assert sorted(set(runs.variant)) == ["", "fast"]
    runs = runs[runs.variant == ""]
    assert len(runs) == 16  # the best validation epoch is the second: its test accuracy counts
    assert runs[(runs.method == "stl") & (runs.seed == 0)].test.tolist() == [80.0]
    table = fig.summary(runs)
    row = table[(table.method == "equal") & (table.aux_set == "noise")].iloc[0]
    # means and differences of hand-written accuracies in float64: ulps, within approx's 1e-6 (here and below)
    assert row["mean"] == pytest.approx(77.5) and row.vs_stl == pytest.approx(-3.5) and row.seeds == 2
    assert row.vs_stl_std == pytest.approx(np.std([-3.0, -4.0], ddof=1))
    effects = fig.auxiliary_effects(table)
    assert effects == pytest.approx({"right": -1.0, "noise": -3.5, "noise2": -9.0, "rotation": 2.0})
    assert fig.effect_of_task("noise2", effects) == -3.5  # a noise head: the effect of one noise task alone
    order = fig.ordering(runs, effects)
    # pairs with distinct effects: right-noise1, right-noise2, right-rotation, noise1-rotation, noise2-rotation
    assert order.pairs.tolist() == [5, 5] and order.concordant.tolist() == [5, 4]
    assert order.order_matches.tolist() == [True, False]
    assert order.ranking.tolist()[0] == "rotation > right > noise1 > noise2"
    md, csv = fig.write_table(results)
    text = open(md).read()
    assert "| noise | LS | 2 (0 1) | 77.50 ± 0.71 | -3.50 ± 0.71 | 0 of 2 |" in text
    assert "| rotation | LS | 2 (0 1) | 83.00 ± 1.41 | +2.00 ± 0.00 | 2 of 2 |" in text
    assert "rotation +2.00, right -1.00, noise -3.50, noise2 -9.00" in text
    assert "p noise2 (effect -3.50)" in text
    assert "p orders every such pair as the measured effects in 1 of 2 seeds." in text
    assert "GCS (right-noise2-rotation, 2 seeds; main 1): right 1.000, noise1 0.250, noise2 1.000" in text
    assert len(pd.read_csv(csv)) == 17
    assert "| right-noise2-rotation | AuxiNash (fast) | 1 (0) | 70.00 ± – | -10.00 ± – | 0 of 1 |" in text
    assert "AuxiNash (fast)'s final p" in text
    [path] = fig.draw_figure(results)
    assert path.endswith("multimnist_aux_weights.png") and os.path.getsize(path) > 10_000


def test_run_all_knows_multimnist_aux():
    env = dict(os.environ, MNIST_ROOT="/nowhere")
    lines = subprocess.run(["bash", "run_all.sh", "--benchmarks", "multimnist_aux", "--dry-run"], cwd=ROOT, env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(lines) == 3 * 13 and all("train_multimnist_aux.py" in l and "--preset few" in l for l in lines)
    for seed in "012":
        ofseed = [l for l in lines if f"--seed {seed} " in l]
        assert sum("--method equal --auxiliaries right noise rotation --noise-tasks 3" in l for l in ofseed) == 1
        assert sum("--method equal --auxiliaries" in l for l in ofseed) == 5
        assert sum("--method stl --auxiliaries none" in l for l in ofseed) == 1
        assert all("--olaux-lr 0.05" in l for l in ofseed if "--method olaux" in l)
    quick = subprocess.run(["bash", "run_all.sh", "--benchmarks", "multimnist_aux", "--quick", "--dry-run", "--out",
                            "/somewhere"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(quick) == 13 and all("--data-root /somewhere/.synthetic/mnist --preset tiny" in l for l in quick)


def test_stl_needs_one_task_only():
    method = get_method("stl", n_tasks=1, main_task=0)
    assert method.task_weights().tolist() == [1.0]


@pytest.mark.parametrize("flag", ["--fast", "--representation"])
def test_representation_modes_refuse_the_rotation_task(flag, tmp_path):
    """rotation has its own trunk pass: under --fast / --representation its loss would silently miss the trunk."""
    from experiments import train_multimnist_aux
    with pytest.raises(SystemExit, match="rotation"):
        train_multimnist_aux.main(["--method", "auxinash", "--auxiliaries", "right", "rotation", flag,
                                   "--out", str(tmp_path), "--data-root", str(tmp_path / "none")])
    assert not any(tmp_path.iterdir())
