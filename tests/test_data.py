import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data import (CifarSSL, DatasetNotFoundError, MalformedDatasetError, detect_layout, load_cityscapes,
                  load_nyuv2, make_loader, meta_val_split, read_cifar10, set_epoch)
from data import synthetic
from data.cifar import MEAN, STD, crop_flip, exemplar_view, make_splits, rotate_batch
from data.dense import augment
from data.prepare import prepare_cityscapes
from tests.conftest import ROOT, SHARED


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    synthetic.write_all(str(base))
    return {name: str(base / name) for name in ["nyuv2", "cityscapes", "cityscapes_mtan", "cityscapes_raw", "cifar10"]}


def test_nyuv2_shapes_dtypes_ranges(roots):
    for split, count in (("train", 4), ("val", 3)):
        dataset = load_nyuv2(roots["nyuv2"], split)
        assert len(dataset) == count
        item = dataset[0]
        assert item["image"].shape == (3, 288, 384) and item["image"].dtype == torch.float32
        assert item["segmentation"].shape == (288, 384) and item["segmentation"].dtype == torch.int64
        assert item["depth"].shape == (1, 288, 384) and item["normal"].shape == (3, 288, 384)
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        assert item["segmentation"].min() >= -1 and item["segmentation"].max() < 13
        norms = item["normal"].norm(dim=0)
        assert torch.allclose(norms[norms > 0], torch.ones(()), atol=1e-5)  # float32 unit vectors: a few 2^-24


def test_cityscapes_layouts(roots):
    assert detect_layout(roots["cityscapes"]) == "parts"
    item = load_cityscapes(roots["cityscapes"], "val")[2]
    assert set(item) == {"image", "segmentation", "part_segmentation", "disparity"}
    assert item["image"].shape == (3, 128, 256) and item["disparity"].shape == (1, 128, 256)
    assert item["part_segmentation"].max() < 10 and item["segmentation"].max() < 19
    assert detect_layout(roots["cityscapes_mtan"]) == "mtan"
    for classes in (7, 19):
        item = load_cityscapes(roots["cityscapes_mtan"], "train", mtan_classes=classes)[0]
        assert set(item) == {"image", "segmentation", "depth"} and item["segmentation"].max() < classes
    with pytest.raises(DatasetNotFoundError, match="neither the prepared layout"):
        detect_layout(roots["nyuv2"])  # train/ exists but holds NYUv2's folders


def _blocks(rng, h=96, w=128, block=16, classes=13):
    grid = rng.integers(0, classes, size=(h // block, w // block))
    return np.kron(grid, np.ones((block, block), dtype=np.int64))


def test_augmentation_keeps_targets_aligned_and_scales_depth():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(_blocks(rng))
    image = (labels.float() / 12.0)[None].repeat(3, 1, 1)
    depth = (labels.float() + 1.0)[None]
    normal = torch.stack([torch.full_like(depth[0], 0.6), torch.zeros_like(depth[0]), torch.full_like(depth[0], 0.8)])
    kinds = {"image": "image", "segmentation": "label", "depth": "depth", "normal": "normal", "disparity": "disparity"}
    item = {"image": image, "segmentation": labels, "depth": depth, "normal": normal, "disparity": depth.clone()}
    seen_scales, seen_flips = set(), set()
    for seed in range(30):
        out = augment(item, kinds, random.Random(seed))
        scale = float(np.round(((out["disparity"] / out["depth"]) ** 0.5).mean().item(), 3))
        seen_scales.add(scale)
        # depth / s, disparity · s: both come from the same stored value (label + 1)
        torch.testing.assert_close(out["depth"] * scale, out["segmentation"][None].float() + 1.0)
        torch.testing.assert_close(out["disparity"] / scale, out["segmentation"][None].float() + 1.0)
        # the image (bilinear) equals the label pattern wherever it is not between two blocks (there 12 × pixel is an
        # integer up to float32 rounding, ~1e-6; 1e-4 only separates it from the blends between blocks)
        interior = (out["image"][0] * 12 - out["image"][0].mul(12).round()).abs() < 1e-4
        agree = (out["image"][0].mul(12).round().long() == out["segmentation"])[interior]
        assert agree.float().mean() > 0.97
        flipped = bool(out["normal"][0].mean() < 0)
        seen_flips.add(flipped)
        torch.testing.assert_close(out["normal"][0], torch.full_like(out["normal"][0], -0.6 if flipped else 0.6))
    assert seen_scales == {1.0, 1.2, 1.5} and seen_flips == {True, False}


def test_prepare_cityscapes_hand_set_pixels(tmp_path):
    raw = synthetic.write_cityscapes_raw(str(tmp_path / "raw"), n_train=1, n_test=1)
    stem = os.path.join(raw, "{folder}", "train", "aachen", "aachen_000000_000019{suffix}")
    paths = {k: stem.format(folder=f, suffix=s) for k, (f, s) in
             {"labels": ("gtFine", "_gtFine_labelIds.png"), "disparity": ("disparity", "_disparity.png"),
              "parts": ("gtFinePanopticParts", "_gtFinePanopticParts.tif")}.items()}
    labels = np.array(Image.open(paths["labels"]))
    disparity = np.array(Image.open(paths["disparity"])).astype(np.uint16)
    parts = np.array(Image.open(paths["parts"])).astype(np.int32)
    # output pixel (r, c) samples the raw pixel (8r + 4, 8c + 4)
    cases = {  # (r, c): (label id, panoptic-parts id, 16-bit disparity) -> (train id, part class, disparity)
        # Auto-λ's conventions (the default): part_seg background 0 everywhere outside the 9 parts, no ignore;
        # disparity (p - 1) / 1024, -1 invalid
        (0, 0): ((26, 26 * 100000 + 3 * 100 + 2, 2561), (13, 6, 2560 / 1024)),  # car wheel
        (5, 7): ((24, 24 * 100000 + 1 * 100 + 4, 0), (11, 4, -1.0)),  # person legs, invalid disparity
        (9, 9): ((23, 23, 257), (10, 0, 256 / 1024)),  # sky: background part class
        (10, 3): ((0, 0, 1), (-1, 0, 0.0)),  # unlabeled: void segmentation, background part, disparity 0 (valid)
        (20, 30): ((27, 27003, 513), (14, 0, 0.5)),  # truck without part labels: background
        (127, 255): ((25, 25 * 100000 + 2 * 100 + 0, 5121), (12, 0, 5.0)),  # rider, unlabelled part: background
    }
    for (r, c), ((label_id, part_id, disp), _) in cases.items():
        labels[8 * r + 4, 8 * c + 4] = label_id
        parts[8 * r + 4, 8 * c + 4] = part_id
        disparity[8 * r + 4, 8 * c + 4] = disp
    Image.fromarray(labels).save(paths["labels"])
    Image.fromarray(disparity).save(paths["disparity"])
    Image.fromarray(parts).save(paths["parts"])
    out = str(tmp_path / "prepared")
    prepare_cityscapes(raw, out, workers=1)
    seg = np.load(os.path.join(out, "train", "seg", "0.npy"))
    part = np.load(os.path.join(out, "train", "part_seg", "0.npy"))
    disp = np.load(os.path.join(out, "train", "disp", "0.npy"))
    image = np.load(os.path.join(out, "train", "image", "0.npy"))
    assert seg.shape == part.shape == (128, 256) and disp.shape == (128, 256, 1) and image.shape == (128, 256, 3)
    assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    for (r, c), (_, (train_id, part_class, disparity_value)) in cases.items():
        assert seg[r, c] == train_id and part[r, c] == part_class
        assert disp[r, c, 0] == pytest.approx(disparity_value)  # a float32 value: approx's 1e-6 > 2^-24
    assert set(np.unique(seg)) <= set(range(-1, 19)) and set(np.unique(part)) <= set(range(0, 10))
    assert load_cityscapes(out, "train")[0]["part_segmentation"][0, 0] == 6
    # resume: finished items are kept, a missing one is rebuilt
    stamp = os.path.getmtime(os.path.join(out, "train", "seg", "0.npy"))
    os.remove(os.path.join(out, "val", "disp", "0.npy"))
    prepare_cityscapes(raw, out, workers=1)
    assert os.path.getmtime(os.path.join(out, "train", "seg", "0.npy")) == stamp
    assert os.path.exists(os.path.join(out, "val", "disp", "0.npy"))


def test_prepare_reports_missing_raw_files(tmp_path):
    raw = synthetic.write_cityscapes_raw(str(tmp_path / "raw"), n_train=1, n_test=1)
    os.remove(os.path.join(raw, "disparity", "train", "aachen", "aachen_000000_000019_disparity.png"))
    with pytest.raises(DatasetNotFoundError, match="aachen_000000_000019_disparity.png"):
        prepare_cityscapes(raw, str(tmp_path / "out"))
    result = subprocess.run([sys.executable, "-m", "data.prepare", "cityscapes", "--raw", str(tmp_path / "none"),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "leftImg8bit" in result.stderr


def _copy_nyuv2(tmp_path):
    return synthetic.write_nyuv2(str(tmp_path / "nyu"), n_train=3, n_test=1, shape=(12, 16))


@pytest.mark.parametrize("breakage, message", [
    (lambda r: np.save(f"{r}/train/depth/1.npy", np.ones((12, 16, 2), np.float32)), r"1\.npy' has shape \(12, 16, 2\)"),
    (lambda r: np.save(f"{r}/train/image/1.npy", np.ones((12, 16, 3), np.uint8)), "dtype uint8"),
    (lambda r: os.remove(f"{r}/train/normal/1.npy"), r"lacks 1 index file.*normal/1\.npy"),
    (lambda r: np.save(f"{r}/train/label/1.npy", np.full((12, 16), 13.0, np.float32)), r"labels in \[13, 13\]"),
    (lambda r: np.save(f"{r}/train/label/1.npy", np.full((12, 16), 0.5, np.float32)), "non-integer labels"),
    (lambda r: np.save(f"{r}/train/label/3.npy", np.zeros((12, 16), np.float32)), "different numbers of items"),
    (lambda r: open(f"{r}/train/depth/1.npy", "wb").write(b"garbage"), r"cannot read .*depth/1\.npy"),
])
def test_malformed_nyuv2_is_reported(tmp_path, breakage, message):
    root = _copy_nyuv2(tmp_path)
    breakage(root)
    with pytest.raises(MalformedDatasetError, match=message):
        dataset = load_nyuv2(root, "train")
        for i in range(len(dataset)):
            dataset[i]


def test_missing_dataset_message_names_path_and_source(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)nowhere/train/image.*MTAN"):
        load_nyuv2(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match=r"(?s)cifar-10-batches-py.*torchvision"):
        read_cifar10(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="cityscapes-dataset.com"):
        load_cityscapes(str(tmp_path / "nowhere"))


def test_download_without_torchvision_names_the_extra(tmp_path, monkeypatch):
    """torchvision is the optional extra `download` (pyproject.toml): without it, --download says how to install it."""
    from data.cifar import read_cifar10
    from data.mnist import download_mnist

    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` now raises ImportError
    for download in (lambda: read_cifar10(str(tmp_path), download=True), lambda: download_mnist(str(tmp_path))):
        with pytest.raises(DatasetNotFoundError, match=r'--download needs torchvision: pip install -e "\.\[download\]"'):
            download()


def test_check_cli(roots, tmp_path):
    result = subprocess.run([sys.executable, "-m", "data.check", "nyuv2", "--root", roots["nyuv2"]], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "items: 4" in result.stdout and "segmentation: ignored" in result.stdout
    root = _copy_nyuv2(tmp_path)
    normal = np.load(f"{root}/val/normal/0.npy") * 2
    np.save(f"{root}/val/normal/0.npy", normal)
    result = subprocess.run([sys.executable, "-m", "data.check", "nyuv2", "--root", root], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "expected unit vectors" in result.stderr


def test_cifar_malformed_batch(roots, tmp_path):
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    synthetic.write_cifar10(str(tmp_path / "cifar"), per_batch=20, n_test=20)
    with open(folder / "data_batch_3", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"labels"][0] = 11
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(MalformedDatasetError, match=r"data_batch_3.*labels in \[0, 11\]"):
        read_cifar10(str(tmp_path / "cifar"))


def test_meta_val_split():
    train, held = meta_val_split(100, 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90 and not set(train) & set(held)
    assert np.array_equal(held, meta_val_split(100, 10, seed=3)[1])
    everything, same = meta_val_split(100, 0, seed=3)
    assert np.array_equal(everything, np.arange(100)) and np.array_equal(same, everything)
    with pytest.raises(ValueError):
        meta_val_split(10, 10, seed=0)


def test_cifar_splits(roots):
    labels = read_cifar10(roots["cifar10"])["train_labels"]
    a = make_splits(labels, n_labeled=100, val_size=100, meta_val_size=0.1, seed=1)
    b = make_splits(labels, n_labeled=100, val_size=100, meta_val_size=0.1, seed=1)
    c = make_splits(labels, n_labeled=100, val_size=100, meta_val_size=0.1, seed=2)
    assert all(np.array_equal(getattr(a, n), getattr(b, n)) for n in ("train", "val", "labeled", "meta_val"))
    assert not np.array_equal(a.val, c.val)
    assert not set(a.train) & set(a.val) and len(a.train) + len(a.val) == len(labels)
    assert set(a.labeled) <= set(a.train) and set(a.meta_val) <= set(a.train) and not set(a.labeled) & set(a.meta_val)
    everything = np.sort(np.concatenate([a.labeled, a.meta_val]))
    assert np.array_equal(np.bincount(labels[everything], minlength=10), np.full(10, 10))
    with pytest.raises(ValueError, match="multiple of 10"):
        make_splits(labels, n_labeled=105, val_size=100)


def test_cifar_batches(roots):
    data = CifarSSL(roots["cifar10"], n_labeled=100, val_size=100, seed=0, pipeline="legacy")
    batch = next(data.train_batches(labeled_batch=8, unlabeled_batch=8))
    assert batch["image"].shape == (16, 3, 32, 32) and (batch["label"][8:] == -1).all()
    assert (batch["label"][:8] >= 0).all() and set(batch["rotation"].tolist()) <= {0, 1, 2, 3}
    assert batch["view"].shape == batch["image"].shape
    # same seed, same stream; a restored generator state continues the stream
    other = CifarSSL(roots["cifar10"], n_labeled=100, val_size=100, seed=0, pipeline="legacy")
    torch.testing.assert_close(next(other.train_batches(8, 8))["image"], batch["image"])
    state = other.state_dict()
    expected = next(other.train_batches(8, 8))["view"]
    other.load_state_dict(state)
    torch.testing.assert_close(next(other.train_batches(8, 8))["view"], expected)
    assert sum(len(b["label"]) for b in data.eval_batches("test", 64)) == 200
    assert sum(len(b["label"]) for b in data.eval_batches("val", 64)) == 100


def test_rotation_labels_match_rotated_images():
    images = torch.rand(12, 3, 32, 32)
    angles = torch.arange(12) % 4
    rotated = rotate_batch(images, angles)
    for image, turned, k in zip(images, rotated, angles.tolist()):
        torch.testing.assert_close(torch.rot90(turned, -k, dims=(1, 2)), image)
    assert not torch.equal(rotated[1], images[1])


def test_crop_flip_is_a_shifted_possibly_flipped_copy():
    images = torch.rand(6, 3, 32, 32)
    out = crop_flip(images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for original, result in zip(padded, out):
        candidates = [original[:, t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
        candidates += [c.flip(2) for c in candidates]
        assert any(torch.equal(result, c) for c in candidates)


def test_exemplar_view_differs_only_by_flip_noise_cutout():
    pixels = torch.rand(400, 3, 32, 32)
    view, keep = exemplar_view(pixels, torch.Generator().manual_seed(0))
    std = torch.tensor(STD)[:, None, None]
    mean = torch.tensor(MEAN)[:, None, None]
    noise = (view * std + mean) - pixels.flip(3)
    kept = keep.expand_as(view).bool()
    # sampling error of n = 1.1e6 kept values: σ/√(2n) = 2e-5 for the std, σ/√n = 2.8e-5 for the mean (measured: 1e-5
    # and 4e-5 off); 2e-4 is 7 to 10 of them
    assert abs(noise[kept].std().item() - 0.03) < 2e-4 and abs(noise[kept].mean().item()) < 2e-4
    assert torch.all(view[~kept] == 0)  # cutout: the mean colour
    cut = (keep.view(400, -1).min(dim=1).values == 0).float().mean().item()
    assert 0.4 < cut < 0.6  # cutout on about half of the images
    assert keep.view(400, -1).sum(1).min() >= 32 * 32 - 16 * 16


def test_loader_epochs_are_reproducible(roots):
    dataset = load_nyuv2(roots["nyuv2"], "train", augment=True)
    for workers in (0, 1):
        runs = []
        for _ in range(2):
            loader = make_loader(dataset, batch_size=2, shuffle=True, seed=5, device=torch.device("cpu"),
                                 num_workers=workers)
            set_epoch(loader, 5, 3)
            runs.append(torch.cat([b["depth"] for b in loader]))
        torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)  # the same seeds: exact


def test_augmented_batches_do_not_depend_on_the_number_of_workers(roots):
    """Issue 29: the augmentation of item i in epoch e is seeded by (seed, epoch, i) alone, so 0 and 2 workers
    give bit-identical batches (each item's crop, scale and flip are computed by the same code from the same
    seed, in whichever process), and another epoch gives other augmentations."""
    dataset = load_nyuv2(roots["nyuv2"], "train", augment=True)

    def epoch_batches(workers, epoch):
        loader = make_loader(dataset, batch_size=2, shuffle=True, seed=5, device=torch.device("cpu"),
                             num_workers=workers)
        set_epoch(loader, 5, epoch)
        return [torch.cat([b[key].float().flatten() for key in ("image", "depth", "normal", "segmentation")])
                for b in loader]

    single, two = epoch_batches(0, 3), epoch_batches(2, 3)
    assert len(single) == len(two)
    for a, b in zip(single, two):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all(torch.equal(a, b) for a, b in zip(single, epoch_batches(0, 4)))


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED, "datasets", "make_cifar10_batches.py")),
                    reason="../shared/datasets (real CIFAR-10) is absent")
def test_real_cifar10(tmp_path):
    subprocess.run([sys.executable, os.path.join(SHARED, "datasets", "make_cifar10_batches.py"), str(tmp_path)],
                   check=True, capture_output=True)
    arrays = read_cifar10(str(tmp_path))
    assert arrays["train_images"].shape == (50000, 32, 32, 3) and arrays["test_labels"].shape == (10000,)
    assert np.array_equal(np.bincount(arrays["train_labels"]), np.full(10, 5000))
    mean = arrays["train_images"].reshape(-1, 3).mean(0) / 255
    # MEAN is the usual 4-decimal CIFAR-10 mean; these JPEG-recompressed images match it to 3 decimals (measured
    # 1.5e-4 off)
    np.testing.assert_allclose(mean, MEAN, atol=2e-3)
    data = CifarSSL(str(tmp_path), seed=0)
    assert len(data.splits.train) == 45000 and len(data.splits.val) == 5000 and len(data.splits.labeled) == 5000
    assert np.array_equal(np.bincount(data.labels[data.positions["labeled"]].numpy()), np.full(10, 500))
