"""The illustrative example (Figure 1): the benchmark's data, the AuxiNash veto property, the figure, the table."""
import os

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from experiments import train_toy
from experiments.training.benchmarks import ToyBenchmark
from experiments.training.benchmarks.toy import least_squares_optimum
from methods.auxinash import AuxiNash
from methods.nash_solver import solve_nash


def random_gram_cases(n_cases=40, seed=0):
    """Random task gradients G (K × d) and bargaining powers p; d ≥ K, so M = GGᵀ is positive definite."""
    rng = np.random.default_rng(seed)
    for _ in range(n_cases):
        k = int(rng.integers(2, 6))
        d = int(rng.integers(k, 12))
        g = rng.normal(size=(k, d)) * rng.lognormal(sigma=1.0, size=(k, 1))  # gradients of unequal scale
        p = rng.uniform(0.05, 2.0, size=k)
        yield g, p / p.sum() * k


@pytest.mark.parametrize("case", list(random_gram_cases()), ids=lambda c: f"K{c[0].shape[0]}d{c[0].shape[1]}")
def test_veto_every_batch_loss_decreases_to_first_order(case):
    """The bargaining update Δθ = Σ α_k g_k gives every player g_kᵀΔθ = (Mα)_k = p_k / α_k > 0 (Eq. 3):
    no task's batch loss rises to first order, so a task can veto any direction that would raise its loss."""
    g, p = case
    alpha = solve_nash(g @ g.T, p)
    update = g.T @ alpha
    directional = g @ update
    # the solver's stopping rule, ‖α ⊙ Mα − p‖ ≤ 1e-8 ‖p‖, allows (Mα)_k α_k / p_k − 1 up to 1e-8 ‖p‖ / min p, at most
    # 3.8e-7 over these 40 cases (measured ≤ 1.3e-7; recomputing Mα as g (gᵀα) adds ~1e-14)
    np.testing.assert_allclose(directional, p / alpha, rtol=1e-6)
    assert np.all(directional > 0)
    # L_k(θ − εΔθ) − L_k(θ) = −ε g_kᵀΔθ + O(ε²) for L_k(θ) = g_kᵀθ + ½|θ|²,
    # whose gradient at θ = 0 is g_k
    theta, eps = np.zeros(g.shape[1]), 1e-6
    loss = lambda t: g @ t + 0.5 * t @ t  # noqa: E731  (every task's, at once)
    assert np.all(loss(theta - eps * update) < loss(theta))


def test_veto_holds_through_the_method_on_the_toy_geometry():
    """Three tasks, two parameters (the toy's rank-2 Gram matrix): AuxiNash's clipped update in .grad still has
    g_kᵀ grad > 0 for every task, in the ratio p_k / α_k, when the three gradients lie in an open half-plane."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        angles = rng.uniform(-1.4, 1.4, size=3)  # within ±80° of the x axis: a half-plane that holds all three
        g = np.stack([np.cos(angles), np.sin(angles)], 1) * rng.uniform(0.5, 3.0, size=(3, 1))
        method = AuxiNash(3, p=rng.uniform(0.2, 2.0, size=3), learn_p=False)
        theta = torch.zeros(2, requires_grad=True)
        losses = torch.as_tensor(g, dtype=torch.float32) @ theta  # linear losses: their gradients are g
        method.backward(losses, [theta])
        directional = g @ theta.grad.double().numpy()
        assert np.all(directional > 0)
        ratio = directional / (method.p.numpy() / method.alpha.numpy())
        # clipping scales all of them alike. The update is float32 (θ's dtype): g, α, the combination and the clipping
        # round to 2^-24 about six times, amplified by ‖g_k‖ ‖grad‖ / |g_kᵀ grad| ≤ 4.7, plus the stopping rule's
        # 2e-8 ‖p‖ / min p: ≤ 1.8e-6 over these 20 cases (measured ≤ 3.4e-7)
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)


def test_veto_contrast_equal_weights_raise_the_main_loss_at_the_start():
    """At W = 0 the full-data gradients are −2·optimum: main = helpful = (−2, −2), harmful = (2, 8). Their
    plain sum (−2, 4) raises the main loss (g_mainᵀΣ = 4 − 8 = −4 < 0 along −Σ); the bargaining update does
    not."""
    g = np.array([[-2.0, -2.0], [-2.0, -2.0], [2.0, 8.0]])
    assert g[0] @ g.sum(0) == -4.0
    alpha = solve_nash(g @ g.T, np.ones(3))
    assert np.all(g @ (g.T @ alpha) > 0)


def test_least_squares_optimum_by_hand_and_against_lstsq():
    # XᵀX = [[2, 1], [1, 2]], Xᵀy = (5, 6): W = (1/3)[[2, −1], [−1, 2]](5, 6) = (4/3, 7/3)
    x, y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(least_squares_optimum(x, y), [4 / 3, 7 / 3], rtol=1e-12)  # a 2 × 2 solve: a few ulps
    benchmark = ToyBenchmark(torch.device("cpu"), seed=3, epochs=1)
    xs, ys = benchmark.train["x"].double().numpy(), benchmark.train["main"].double().numpy()
    expected = np.linalg.lstsq(xs, ys, rcond=None)[0]
    # two direct float64 solvers of a well-conditioned 2-parameter problem: ~eps · cond(XᵀX) (measured 1.7e-15)
    np.testing.assert_allclose(benchmark.main_task_optimum(), expected, rtol=1e-10)
    assert np.linalg.norm(expected - 1.0) < 0.6  # near W* = (1, 1) with σ = 5 and n = 1,000


def test_benchmark_settings():
    held_out = ToyBenchmark(torch.device("cpu"), seed=0, epochs=1)
    on_train = ToyBenchmark(torch.device("cpu"), seed=0, epochs=1, meta_val_size=0, harmful_noise=0.25)
    assert len(held_out.meta_val["x"]) == 1000 and on_train.meta_val is on_train.train
    torch.testing.assert_close(held_out.train["x"], on_train.train["x"])  # the held-out set is drawn after
    torch.testing.assert_close(held_out.test["main"], on_train.test["main"])
    assert not any(torch.equal(row, held_out.train["x"][0]) for row in held_out.meta_val["x"])
    batch = held_out.meta_val_batch()
    assert batch["x"].shape == (256, 2)
    # label noise: the residuals around each task's optimum have the stated std (10,000 test samples)
    for benchmark, stds in ((held_out, (5.0, 0.25, 5.0)), (on_train, (5.0, 0.25, 0.25))):
        x = benchmark.test["x"].double()
        for (task, optimum), std in zip(benchmark.optima.items(), stds):
            residual = benchmark.test[task].double() - x @ torch.tensor(optimum, dtype=torch.float64)
            assert abs(residual.std().item() / std - 1) < 0.03
    with pytest.raises(ValueError, match="meta_val_size"):
        ToyBenchmark(torch.device("cpu"), seed=0, meta_val_size=-1)
    with pytest.raises(ValueError, match="label noise"):
        ToyBenchmark(torch.device("cpu"), seed=0, harmful_noise=-0.5)


def test_bad_flags():
    with pytest.raises(SystemExit):
        train_toy.parse_args(["--harmful-noise", "-1"])
    with pytest.raises(SystemExit):
        train_toy.parse_args(["--seeds", "0", "0"])
    assert train_toy.parse_args(["--seed", "4"]).seeds == [4]
    assert train_toy.run_tag(1000, 5.0, 1000) == "" and train_toy.run_tag(20, 0.25, 0) == "e20-harm0.25-val0"


def test_seeds_table_and_figure(tmp_path):
    methods, seeds = ["stl", "equal", "auxinash"], [0, 1]
    per_run = train_toy.main(["--epochs", "20", "--methods", *methods, "--seeds", "0", "1", "--out", str(tmp_path)])
    assert per_run.shape[0] == len(methods) * len(seeds)
    assert per_run["p_helpful"].notna().sum() == len(seeds)  # only AuxiNash reports p
    tables = tmp_path / "tables"
    summary = pd.read_csv(tables / "toy_e20.csv")
    assert list(summary["method"]) == methods and list(summary["seeds"]) == [2, 2, 2]
    stl = per_run[per_run.method == "stl"]
    # the same numbers through a groupby and a CSV written at full precision: an ulp or two, far below rtol 1e-7
    np.testing.assert_allclose(summary.loc[0, "distance_to_w_star_mean"], stl["distance_to_w_star"].mean())
    np.testing.assert_allclose(summary.loc[0, "distance_to_w_star_std"], stl["distance_to_w_star"].std(ddof=1))
    np.testing.assert_allclose(stl["distance_to_w_star"], np.hypot(stl["w1"] - 1, stl["w2"] - 1))
    text = (tables / "toy_e20.md").read_text()
    assert "| auxinash | 2 |" in text and "| seed 0 | seed 1 |" in text
    assert len(pd.read_csv(tables / "toy_e20_runs.csv")) == 6
    curves = pd.read_csv(tables / "toy_e20_curves.csv")
    assert len(curves) == 6 * 2 and curves["p_harmful"].notna().sum() == 2 * 2

    image = matplotlib.image.imread(str(tmp_path / "figures" / "toy_e20.png"))
    assert image.shape[:2] == (576, 1440)  # 12 × 4.8 inches at 120 dpi: the two panels side by side
    runs = {(m, s): pd.read_csv(tmp_path / "toy" / f"{m}_e20" / ("main-main" if m != "equal" else "main-all")
                                / f"seed{s}" / "metrics.csv") for m in methods for s in seeds}
    figure = train_toy.draw(runs, train_toy.make_benchmark(0, train_toy.parse_args(["--epochs", "20"])),
                            str(tmp_path / "again.png"))
    left, right = figure.axes[:2]
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["p main", "p helpful", "p harmful"]
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert {"stl trajectory", "auxinash trajectory", "main-task training optimum ■", "W* = (1, 1)",
            "harmful optimum (−1, −4)"} <= set(labels)
    path = right.get_lines()[labels.index("auxinash trajectory")].get_xydata()
    np.testing.assert_allclose(path[0], [0, 0])  # the trajectory starts at W = 0
    assert len(path) == 1 + 2  # and has one point per evaluation (20 epochs, every 10)


def test_run_all_runs_the_toy_once_with_five_seeds():
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lines = subprocess.run(["bash", "run_all.sh", "--dry-run", "--benchmarks", "toy"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.strip().splitlines()
    assert len(lines) == 1 and "--seeds 0 1 2 3 4 " in lines[0] and "train_toy.py" in lines[0]
    quick = subprocess.run(["bash", "run_all.sh", "--dry-run", "--quick", "--benchmarks", "toy"], cwd=root,
                           capture_output=True, text=True, check=True).stdout
    assert "--seeds 0 " in quick and "--epochs 50" in quick


@pytest.mark.parametrize("flags, words", [
    (["--epochs", "0"], "--epochs: must be > 0"),
    (["--meta-every", "0"], "--meta-every: must be > 0"),
    (["--harmful-noise", "-1"], "--harmful-noise: must be ≥ 0"),
    (["--harmful-noise", "nan"], "--harmful-noise: must be ≥ 0"),
    (["--meta-val-size", "-5"], "--meta-val-size: must be ≥ 0"),
    (["--meta-val-size", "2.5"], "--meta-val-size: expected an integer"),
    (["--seeds", "0", "-1"], "--seeds: must be ≥ 0"),
    (["--seed", "x"], "--seed: expected an integer"),
])
def test_out_of_range_flags_exit_2_and_write_nothing(tmp_path, capsys, flags, words):
    """Every numeric flag is range-checked by argparse (experiments/training/cli.py's types) before any run starts."""
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as caught:
        train_toy.main(flags + ["--epochs", "1"] * ("--epochs" not in flags) + ["--methods", "stl", "--out", str(out)])
    assert caught.value.code == 2
    assert words in capsys.readouterr().err
    assert not out.exists()
