"""Multi-MNIST: the IDX reader, the pair construction, the LS weights, model selection and a tiny sweep."""
import gzip
import hashlib
import json
import os
import struct
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from data import DatasetNotFoundError, MalformedDatasetError
from data import mnist as mnist_io
from data import multimnist as mm
from experiments import train_multimnist
from experiments.reporting import multimnist as figures_multimnist
from experiments.reporting import figures as make_figures
from experiments.reporting import tables as make_tables
from experiments.training.models import MultiLeNet
from methods import get_method
from tests.conftest import ROOT, SHARED
from tests.helpers import TinyMultiTask, make_batch, run_backward, task_gradients

OFFLINE_MNIST = os.path.join(SHARED, "datasets", "mnist", "raw")


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """The IDX format written by hand (big-endian magic, one uint32 per dimension, then uint8 values)."""
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(folder: str, n_train: int, n_test: int, seed: int = 0, gz: bool = True) -> dict:
    """Synthetic MNIST in the release's file names and format; digit i's image is noise, its label i mod 10."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        if n == 0:
            continue
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, magic, array in (("images-idx3", 2051, images), ("labels-idx1", 2049, labels)):
            path = os.path.join(folder, f"{split}-{kind}-ubyte" + (".gz" if gz else ""))
            with (gzip.open if gz else open)(path, "wb") as f:
                f.write(idx_bytes(magic, array))
        arrays[split] = (images, labels)
    return arrays


# -- the IDX reader -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_reads_the_release_format(tmp_path, gz):
    written = write_mnist(str(tmp_path / "MNIST" / "raw"), 30, 20, gz=gz)
    for split, name in (("train", "train"), ("test", "t10k")):
        images, labels = mnist_io.read_mnist(str(tmp_path), split)  # torchvision's layout ROOT/MNIST/raw
        assert images.dtype == np.uint8 and images.shape == written[name][0].shape
        np.testing.assert_array_equal(images, written[name][0])
        np.testing.assert_array_equal(labels, written[name][1])
        assert labels.dtype == np.int64
    # the raw folder itself works as a root too
    np.testing.assert_array_equal(mnist_io.read_mnist(str(tmp_path / "MNIST" / "raw"), "test")[1], written["t10k"][1])


def test_write_idx_matches_the_hand_written_format(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    mnist_io.write_idx(str(tmp_path / "a"), array)
    assert open(tmp_path / "a", "rb").read() == idx_bytes(2051, array)


@pytest.mark.parametrize("corrupt, error, words", [
    ("magic", MalformedDatasetError, "magic number 2049, expected 2051"),
    ("truncated", MalformedDatasetError, "truncated"),
    ("header", MalformedDatasetError, "shorter than its IDX header"),
    ("shape", MalformedDatasetError, "items of shape (27, 28)"),
    ("gzip", MalformedDatasetError, "cannot read MNIST file"),
    ("count", MalformedDatasetError, "20 images but"),
    ("missing", DatasetNotFoundError, "t10k-labels-idx1-ubyte"),
])
def test_malformed_mnist_files_name_the_file(tmp_path, corrupt, error, words):
    folder = tmp_path / "raw"
    write_mnist(str(folder), 0, 20, gz=False)
    images_path, labels_path = folder / "t10k-images-idx3-ubyte", folder / "t10k-labels-idx1-ubyte"
    named = images_path
    if corrupt == "magic":
        images_path.write_bytes(idx_bytes(2049, np.zeros((20, 28, 28))))
    elif corrupt == "truncated":
        images_path.write_bytes(images_path.read_bytes()[:-5])
    elif corrupt == "header":
        images_path.write_bytes(b"\x00\x00\x08")
    elif corrupt == "shape":
        images_path.write_bytes(idx_bytes(2051, np.zeros((20, 27, 28))))
    elif corrupt == "gzip":
        images_path.unlink()
        named = folder / "t10k-images-idx3-ubyte.gz"
        named.write_bytes(b"not a gzip file at all")
    elif corrupt == "count":
        labels_path.write_bytes(idx_bytes(2049, np.zeros(19)))
    elif corrupt == "missing":
        labels_path.unlink()
        named = labels_path
    with pytest.raises(error) as caught:
        mnist_io.read_mnist(str(folder), "test")
    message = str(caught.value)
    assert words in message and str(named) in message
    if error is DatasetNotFoundError:
        assert "MNIST/raw" in message  # says where to put the files


def test_missing_mnist_root_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--download"):
        mnist_io.read_mnist(str(tmp_path / "nowhere"), "test")


@pytest.mark.skipif(not os.path.isdir(OFFLINE_MNIST), reason="no offline MNIST copy (../shared)")
def test_offline_mnist_test_digits():
    md5 = {"t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
           "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
    for name, digest in md5.items():
        assert hashlib.md5(open(os.path.join(OFFLINE_MNIST, name), "rb").read()).hexdigest() == digest
    images, labels = mnist_io.read_mnist(OFFLINE_MNIST, "test")
    assert images.shape == (10_000, 28, 28)
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the first test digits of the MNIST release
    assert mnist_io.available_splits(OFFLINE_MNIST) == {"train": False, "test": True}


# -- pair construction ----------------------------------------------------------------------------------------

def test_place_puts_the_digits_at_their_corners():
    # digit 0 is 100 everywhere, digit 1 is 200 everywhere; corners (1, 2) and (7, 6) on the 36×36 canvas
    digits = np.stack([np.full((28, 28), 100, np.uint8), np.full((28, 28), 200, np.uint8)])
    canvas = mm.place(digits, np.array([[0, 1]]), np.array([[1, 2, 7, 6]]))[0]
    expected = np.zeros((36, 36), np.uint8)
    expected[1:29, 2:30] = 100
    expected[7:35, 6:34] = np.maximum(expected[7:35, 6:34], 200)  # overlap: the max of the two digits
    np.testing.assert_array_equal(canvas, expected)
    assert canvas[0, 0] == 0 and canvas[1, 2] == 100 and canvas[34, 33] == 200 and canvas[35, 35] == 0


def test_resize_keeps_constants_and_the_top_left_digit_top_left():
    constant = np.full((1, 36, 36), 80, np.uint8)
    np.testing.assert_array_equal(mm.resize(constant), np.full((1, 28, 28), 80, np.uint8))
    canvas = np.zeros((1, 36, 36), np.uint8)
    canvas[0, 0:28, 0:28] = 255  # the top-left digit alone, at corner (0, 0): covers 28/36 of each side
    image = mm.resize(canvas)[0]
    assert image[:21, :21].min() == 255 and image[23:, :].max() == 0 and image[:, 23:].max() == 0


def test_draw_pairs_corners_and_distinct_digits():
    rng = np.random.default_rng(0)
    pool = np.array([3, 5, 7])
    sources, corners = mm.draw_pairs(pool, 2000, shift=2, rng=rng)
    assert np.all(sources[:, 0] != sources[:, 1]) and set(np.unique(sources)) == {3, 5, 7}
    assert corners[:, :2].min() == 0 and corners[:, :2].max() == 2  # top-left digit: corner in [0, 2]
    assert corners[:, 2:].min() == 6 and corners[:, 2:].max() == 8  # bottom-right: corner in [36−28−2, 8]
    # every ordered pair of different digits appears, about equally often (1/6 each)
    counts = pd.Series([tuple(s) for s in sources]).value_counts(normalize=True)
    assert len(counts) == 6 and counts.max() < 1 / 6 + 0.04


def test_pairs_labels_positions_and_pools(tmp_path):
    write_mnist(str(tmp_path / "raw"), 0, 10_000)  # the offline case: test digits only
    spec = mm.PairSpec(n_train=300, n_val=50, n_test=100, shift=2, seed=3)
    images, labels = mnist_io.read_mnist(str(tmp_path), "test")
    arrays = mm.build_pairs(str(tmp_path), "test-digits", spec)
    train_pool, test_pool = mm.split_test_digits(10_000, 3)
    assert len(train_pool) == 8000 and len(test_pool) == 2000 and not np.intersect1d(train_pool, test_pool).size
    assert np.isin(arrays["train_sources"], train_pool).all() and np.isin(arrays["test_sources"], test_pool).all()
    assert not np.intersect1d(arrays["train_sources"], arrays["test_sources"]).size  # no digit in both
    for split in ("train", "test"):
        sources, corners = arrays[f"{split}_sources"], arrays[f"{split}_corners"]
        # task 1 is the digit placed at the top-left corner, task 2 the one at the bottom-right
        np.testing.assert_array_equal(arrays[f"{split}_labels"], labels[sources])
        assert (corners[:, :2] <= 2).all() and (corners[:, 2:] >= 6).all()
        np.testing.assert_array_equal(arrays[f"{split}_images"], mm.resize(mm.place(images, sources, corners)))


def test_pairs_are_seeded_and_cached(tmp_path):
    write_mnist(str(tmp_path / "MNIST" / "raw"), 200, 100)
    spec = mm.PairSpec(n_train=120, n_val=20, n_test=40, seed=1)
    first, meta = mm.load_or_build(str(tmp_path), str(tmp_path / "cache"), "auto", spec)
    assert meta["source"] == "standard" and meta["n_train"] == 120
    folder = tmp_path / "cache" / mm.cache_key("standard", spec)
    assert sorted(os.listdir(folder)) == sorted(["meta.json"] + [f"{s}_{n}.npy" for s in ("train", "test")
                                                                 for n in ("images", "labels", "sources", "corners")])
    again = mm.build_pairs(str(tmp_path), "standard", spec)  # built afresh: the same pairs
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    other = mm.build_pairs(str(tmp_path), "standard", mm.PairSpec(n_train=120, n_val=20, n_test=40, seed=2))
    assert not np.array_equal(other["train_sources"], first["train_sources"])
    # standard source: training pairs from the training digits, test pairs from the test digits
    assert first["train_sources"].max() < 200 and first["test_sources"].max() < 100
    np.save(folder / "test_labels.npy", np.zeros((40, 3), np.int64))  # a damaged cache names the file
    with pytest.raises(MalformedDatasetError, match="test_labels.npy"):
        mm.load_or_build(str(tmp_path), str(tmp_path / "cache"), "auto", spec)


def test_multimnist_splits_do_not_overlap(tmp_path):
    write_mnist(str(tmp_path / "raw"), 0, 10_000)
    data = mm.MultiMnist(str(tmp_path), str(tmp_path / "cache"), mm.PairSpec(n_train=200, n_val=40, n_test=30))
    assert data.source == "test-digits" and data.note == mm.OFFLINE_NOTE
    assert len(data.train["image"]) == 160 and len(data.val["image"]) == 40 and len(data.test["image"]) == 30
    batches = list(data.train_batches(0, 64))
    assert [len(b["left"]) for b in batches] == [64, 64, 32]
    again = list(data.train_batches(0, 64))
    assert torch.equal(batches[0]["image"], again[0]["image"])  # an epoch's order is a function of (seed, epoch)


def test_data_check_multimnist(tmp_path, capsys):
    from data import check
    write_mnist(str(tmp_path / "raw"), 0, 10_000)
    assert check.main(["multimnist", "--root", str(tmp_path), "--cache-root", str(tmp_path / "cache"),
                       "--pairs", "500", "100", "200"]) == 0
    out = capsys.readouterr().out
    assert "test-digits" in out and "none shared" in out and "[train] 500 pairs" in out
    assert check.main(["multimnist", "--root", str(tmp_path / "nowhere"), "--cache-root", str(tmp_path)]) == 1


# -- model, LS weights, selection ------------------------------------------------------------------------------

def test_multilenet_shapes_and_parameter_split():
    model = MultiLeNet({"left": 10, "right": 10})
    out = model(torch.zeros(3, 1, 28, 28))
    assert set(out) == {"left", "right"} and out["left"].shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 3 and len(linears) == 3  # 3 conv, 1 shared fc + one linear head per task
    assert len(model.task_specific_parameters()) == 4
    assert len(model.shared_parameters()) + 4 == len(list(model.parameters()))
    with pytest.raises(ValueError, match="28×28"):
        model(torch.zeros(1, 1, 36, 36))


def test_ls_weights_scale_each_task_gradient():
    model, batch = TinyMultiTask(n_tasks=2), make_batch(n_tasks=2)
    g_shared, g_specific = task_gradients(model, batch)
    _, shared, specific = run_backward(get_method("ls", n_tasks=2, weights=[0.25, 0.75]), model, batch)
    torch.testing.assert_close(shared, 0.25 * g_shared[0] + 0.75 * g_shared[1])
    torch.testing.assert_close(specific, 0.25 * g_specific[0] + 0.75 * g_specific[1])
    _, shared, _ = run_backward(get_method("ls", n_tasks=2), model, batch)  # default: weights 1
    torch.testing.assert_close(shared, g_shared[0] + g_shared[1])
    with pytest.raises(ValueError, match="non-negative"):
        get_method("ls", n_tasks=2, weights=[0.5, -0.5])
    with pytest.raises(ValueError, match="2 non-negative"):
        get_method("ls", n_tasks=2, weights=[1.0])


def test_selection_uses_the_best_mean_validation_accuracy():
    rows = pd.DataFrame([
        {"round": 0, "split": "val", "left_acc": 90.0, "right_acc": 50.0},  # mean 70: left's best alone
        {"round": 0, "split": "test", "left_acc": 89.0, "right_acc": 49.0},
        {"round": 1, "split": "val", "left_acc": 80.0, "right_acc": 70.0},  # mean 75: the best mean
        {"round": 1, "split": "test", "left_acc": 79.0, "right_acc": 71.0},
        {"round": 2, "split": "val", "left_acc": 70.0, "right_acc": 72.0},  # mean 71
        {"round": 2, "split": "test", "left_acc": 69.0, "right_acc": 73.0},
    ])
    point = figures_multimnist.best_val_point(rows)
    assert point["best_round"] == 1 and (point["test_left"], point["test_right"]) == (79.0, 71.0)


def test_flags_are_checked(tmp_path):
    write_mnist(str(tmp_path / "raw"), 0, 10_000)
    common = ["--data-root", str(tmp_path), "--cache-root", str(tmp_path / "c"), "--preset", "tiny",
              "--out", str(tmp_path / "r"), "--device", "cpu"]
    with pytest.raises(SystemExit, match="--weights is linear scalarisation's"):
        train_multimnist.main(common + ["--method", "auxinash", "--weights", "0.3"])
    with pytest.raises(SystemExit, match="--p sets AuxiNash's"):
        train_multimnist.main(common + ["--method", "nashmtl", "--p", "0.3"])
    with pytest.raises(SystemExit, match=r"W1 in \[0, 1\]"):
        train_multimnist.main(common + ["--method", "ls", "--weights", "1.5"])
    for flags in (["--epochs", "0"], ["--n-train", "0"], ["--batch-size", "-2"], ["--shift", "-1"]):
        with pytest.raises(SystemExit) as stopped:  # argparse usage error, before anything is written
            train_multimnist.main(common + ["--method", "nashmtl", *flags])
        assert stopped.value.code == 2
    assert not os.path.exists(tmp_path / "r")


# -- a tiny sweep, end to end ----------------------------------------------------------------------------------

def test_tiny_sweep_writes_table_and_figure(tmp_path):
    write_mnist(str(tmp_path / "raw"), 0, 10_000)  # offline layout: the test digits only
    results = str(tmp_path / "results")
    common = ["--data-root", str(tmp_path), "--cache-root", str(tmp_path / "cache"), "--preset", "tiny",
              "--n-train", "120", "--n-val", "40", "--n-test", "40", "--epochs", "2", "--batch-size", "40",
              "--out", results, "--device", "cpu", "--log-level", "WARNING"]
    runs = [["--method", "auxinash", "--p", p] for p in ("0.1", "0.9")]
    runs += [["--method", "nashmtl", "--seed", s] for s in ("0", "1")]
    runs += [["--method", "ls", "--weights", w] for w in ("0.1", "0.9")]
    run_dirs = [train_multimnist.main(common + flags) for flags in runs]
    assert [os.path.relpath(d, results) for d in run_dirs] == [
        "multimnist/auxinash_p0.1/main-left/seed0", "multimnist/auxinash_p0.9/main-left/seed0",
        "multimnist/nashmtl/main-all/seed0", "multimnist/nashmtl/main-all/seed1",
        "multimnist/equal_w0.1/main-all/seed0", "multimnist/equal_w0.9/main-all/seed0"]
    config = json.load(open(os.path.join(run_dirs[1], "config.json")))
    assert config["p"] == [0.9, pytest.approx(0.1)] and config["learn_p"] is False  # 1 − 0.9 in float64
    assert config["data_note"] == mm.OFFLINE_NOTE and config["selection"] == "best_val"
    metrics = pd.read_csv(os.path.join(run_dirs[1], "metrics.csv"))
    train_rows = metrics[metrics.split == "train"]
    # p stays fixed; it is logged in float32, so the ratio is 9 to 2 · 2^-24 (approx: 1e-6)
    assert train_rows.p_left.iloc[-1] / train_rows.p_right.iloc[-1] == pytest.approx(9.0)
    assert {"left_acc", "right_acc"} <= set(metrics[metrics.split == "test"].dropna(axis=1).columns)
    assert json.load(open(os.path.join(run_dirs[4], "config.json")))["method_settings"] == {"weights": [0.1, 0.9]}

    tables = make_tables.make_tables(results)
    figures = make_figures.make_figures(results)
    assert os.path.join(results, "tables", "multimnist.md") in tables
    assert os.path.join(results, "figures", "multimnist_figure2.png") in figures
    assert os.path.getsize(os.path.join(results, "figures", "multimnist_figure2.png")) > 10_000
    text = open(os.path.join(results, "tables", "multimnist.md")).read()
    assert mm.OFFLINE_NOTE in text and "preset 'tiny'" in text
    points = pd.read_csv(os.path.join(results, "tables", "multimnist.csv"))
    assert points.family.tolist() == ["auxinash", "auxinash", "nashmtl", "nashmtl", "equal", "equal"]
    assert points.preference.tolist()[:2] == [0.1, 0.9] and points.preference.tolist()[4:] == [0.1, 0.9]
    assert points.seed.tolist()[2:4] == [0, 1]
    # an unfinished run is left out of the figure and the table
    os.remove(os.path.join(run_dirs[3], "status.json"))
    assert len(figures_multimnist.collect_points(results)) == 5


def _points(rows):
    """Figure-2 points as collect_points returns them, from (family, preference, seed, task-1 acc, task-2 acc)."""
    common = {"best_round": 9, "rounds": 10, "preset": "paper", "data_note": "", "n_train": 108000, "n_val": 12000,
              "n_test": 20000, "epochs": 50, "device": "cpu", "synthetic": False}
    return pd.DataFrame([{"family": f, "run": f"{f}/{p}/{s}", "preference": p, "seed": s, "test_left": left,
                          "test_right": right, **common} for f, p, s, left, right in rows])


def test_figure2_zooms_on_auxinash_and_reports_the_seeds_of_one_p(tmp_path):
    """A second seed of one p₁ gets its own table section (ranges over the seeds), and a LS point far outside
    AuxiNash's and Nash-MTL's points opens a zoomed panel whose box is their range plus 8 % of it (at least 0.05)."""
    rows = [("auxinash", 0.5, 0, 95.0, 93.0), ("auxinash", 0.5, 1, 95.4, 92.8), ("auxinash", 0.1, 0, 94.0, 94.0),
            ("nashmtl", np.nan, 0, 95.2, 93.1)]
    assert figures_multimnist.zoom_box(_points(rows)) is None  # nothing outside: one panel
    points = _points(rows + [("equal", 0.01, 0, 87.0, 94.5)])
    (x0, x1), (y0, y1) = figures_multimnist.zoom_box(points)
    # x: 94.0 – 95.4, pad 0.08 × 1.4 = 0.112; y: 92.8 – 94.0, pad 0.08 × 1.2 = 0.096 (decimal arithmetic in float64:
    # ulps, within approx's 1e-6 here and below)
    assert (x0, x1, y0, y1) == pytest.approx((93.888, 95.512, 92.704, 94.096))
    [repeat] = figures_multimnist.seed_spread(points).to_dict("records")
    assert repeat["family"] == "auxinash" and repeat["preference"] == 0.5 and repeat["seeds"] == "0, 1"
    assert (repeat["diff_min"], repeat["diff_max"]) == pytest.approx((2.0, 2.6))  # 95.0 − 93.0, 95.4 − 92.8
    results = str(tmp_path)
    table = open(figures_multimnist.write_table(results, points)[0]).read()
    assert "| AuxiNash (fixed p) | 0.5 | 0, 1 | 95.00 – 95.40 | 92.80 – 93.00 | +2.00 – +2.60 |" in table
    [path] = figures_multimnist.draw_figure(results, points)
    assert os.path.getsize(path) > 10_000


def test_run_all_lists_the_sweep():
    env = dict(os.environ, MNIST_ROOT="/nowhere", MULTIMNIST_PRESET="cpu")
    lines = subprocess.run(["bash", "run_all.sh", "--benchmarks", "multimnist", "--dry-run"], cwd=ROOT, env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(lines) == 33 and all("--preset cpu" in line for line in lines)
    assert sum("--method auxinash --p" in line for line in lines) == 11
    assert sum("--method nashmtl" in line for line in lines) == 11
    assert sum("--method ls --weights" in line for line in lines) == 11
    assert len({line.split("--seed")[1] for line in lines if "nashmtl" in line}) == 11


def test_missing_mnist_exits_with_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        train_multimnist.main(["--data-root", str(tmp_path), "--cache-root", str(tmp_path / "c"), "--preset", "tiny",
                               "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert caught.value.code == 2 and "no MNIST" in capsys.readouterr().err


def test_two_value_preferences_name_the_share_and_resume_is_exact(tmp_path):
    write_mnist(str(tmp_path / "raw"), 0, 10_000)
    common = ["--data-root", str(tmp_path), "--cache-root", str(tmp_path / "cache"), "--preset", "tiny",
              "--n-train", "100", "--n-val", "20", "--n-test", "20", "--epochs", "3", "--batch-size", "20",
              "--device", "cpu", "--log-level", "WARNING", "--method", "auxinash", "--p", "1", "3"]
    whole = train_multimnist.main(common + ["--out", str(tmp_path / "a")])
    assert whole.endswith(os.path.join("auxinash_p0.25", "main-left", "seed0"))  # (1, 3) → p₁ = 0.25
    parted = train_multimnist.main(common + ["--out", str(tmp_path / "b"), "--stop-after", "1"])
    assert not os.path.exists(os.path.join(parted, "status.json"))
    parted = train_multimnist.main(common + ["--out", str(tmp_path / "b"), "--resume"])
    a, b = (pd.read_csv(os.path.join(d, "metrics.csv")).drop(columns="seconds") for d in (whole, parted))
    # an interrupted run ends exactly where an uninterrupted one does (bit for bit: same process, same states)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


# -- the synthetic MNIST of data.synthetic (run_all.sh --quick) -------------------------------------------------

def test_synthetic_mnist_is_the_release_format_and_a_tiny_sweep_runs_on_it(tmp_path):
    from data import synthetic
    root = synthetic.write_mnist(str(tmp_path / "mnist"), n_train=60, n_test=30)
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    assert sorted(os.listdir(raw)) == ["SYNTHETIC", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                                       "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    for split, name, n in (("train", "train", 60), ("test", "t10k", 30)):
        images, labels = mnist_io.read_mnist(root, split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
        assert sorted(np.bincount(labels, minlength=10)) == [n // 10] * 10
        # the bytes are the release's: the header written by hand, then the values
        with gzip.open(raw / f"{name}-images-idx3-ubyte.gz", "rb") as f:
            assert f.read() == idx_bytes(2051, images)
        with gzip.open(raw / f"{name}-labels-idx1-ubyte.gz", "rb") as f:
            assert f.read() == idx_bytes(2049, labels)
    # the ten classes differ: each image is closer to its class mean than to any other class's mean
    images, labels = mnist_io.read_mnist(root, "train")
    means = np.stack([images[labels == c].astype(float).mean(0) for c in range(10)])
    nearest = np.argmin(((images[:, None].astype(float) - means[None]) ** 2).sum((2, 3)), axis=1)
    assert (nearest == labels).mean() > 0.9
    assert mnist_io.is_synthetic_mnist(root) and mnist_io.is_synthetic_mnist(str(raw))
    real = tmp_path / "real"
    write_mnist(str(real / "MNIST" / "raw"), 60, 30)  # the same counts, no marker
    assert not mnist_io.is_synthetic_mnist(str(real))
    # pairs of synthetic digits are cached apart from those of real digits at the same counts
    spec = mm.PairSpec(n_train=50, n_val=10, n_test=20)
    assert mm.load_or_build(root, str(tmp_path / "cache"), spec=spec)[1]["synthetic"] is True
    assert mm.load_or_build(str(real), str(tmp_path / "cache"), spec=spec)[1]["synthetic"] is False
    assert sorted(os.listdir(tmp_path / "cache")) == [mm.cache_key("standard", spec),
                                                     mm.cache_key("standard", spec) + "_synthetic"]

    # the tiny preset's pair counts are built from these few digits (standard source), and the results say SYNTHETIC
    results = str(tmp_path / "results")
    common = ["--data-root", root, "--cache-root", str(tmp_path / "cache"), "--preset", "tiny", "--out", results,
              "--device", "cpu", "--log-level", "WARNING"]
    run_dirs = [train_multimnist.main(common + flags) for flags in (
        ["--method", "auxinash", "--p", "0.5"], ["--method", "nashmtl"], ["--method", "ls", "--weights", "0.5"])]
    config = json.load(open(os.path.join(run_dirs[0], "config.json")))
    tiny = train_multimnist.PRESETS["tiny"]
    assert config["synthetic_data"] is True and config["data_source"] == "standard"
    assert config["data_note"].startswith(mm.SYNTHETIC_NOTE)  # not "the 60K training digits" alone
    assert (config["n_train"], config["n_val"]) == (tiny["n_train"] - tiny["n_val"], tiny["n_val"])
    make_tables.make_tables(results)
    make_figures.make_figures(results)
    text = open(os.path.join(results, "tables", "multimnist.md")).read()
    assert text.startswith("SYNTHETIC SMOKE RUN") and "preset 'tiny'" in text
    assert os.path.getsize(os.path.join(results, "figures", "multimnist_figure2.png")) > 10_000
    # real digits: no SYNTHETIC in the caption
    real_results = str(tmp_path / "real_results")
    train_multimnist.main(["--data-root", str(real), "--cache-root", str(tmp_path / "cache"), "--preset", "tiny",
                           "--out", real_results, "--device", "cpu", "--log-level", "WARNING", "--method", "nashmtl"])
    assert "SYNTHETIC" not in open(figures_multimnist.write_table(real_results)[0]).read()


def test_run_all_quick_lists_a_short_multimnist_sweep_on_synthetic_digits():
    lines = subprocess.run(["bash", "run_all.sh", "--quick", "--dry-run", "--out", "/somewhere"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    multi = [line for line in lines if "train_multimnist.py" in line]
    assert len(multi) == 9 and all("--data-root /somewhere/.synthetic/mnist --preset tiny" in line for line in multi)
    assert all("--cache-root /somewhere/.synthetic/multimnist_pairs" in line for line in multi)
    for flag in ("--method auxinash --p", "--method ls --weights"):
        assert sorted(line.split(flag)[1].split()[0] for line in multi if flag in line) == ["0.1", "0.5", "0.9"]
    assert sorted(line.split("--seed")[1].split()[0] for line in multi if "nashmtl" in line) == ["0", "1", "2"]
    for script in ("train_nyuv2.py", "train_cityscapes.py", "train_cifar_ssl.py", "train_toy.py"):
        assert any(script in line for line in lines)  # and every other benchmark
