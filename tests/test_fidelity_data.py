"""The benchmarks' data conventions against the code the paper builds on, with expected values computed by
hand from the peers' definitions:

- Cityscapes as Auto-λ's ``create_dataset.py`` (``map_part_seg_label``, ``map_disparity``) and ``utils.py``
  (``compute_loss``, ``ConfMatrix``);
- semi-supervised CIFAR-10 as ARML's ``SSL/build_dataset.py`` (GCN, ZCA), ``SSL/lib/transform.py``,
  ``SSL/lib/algs/s4l.py`` (rotation, Exemplar-MT view, EMA teacher) and ``SSL/lib/wrn.py``.
"""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data import load_cityscapes, synthetic
from data.dense import Target, augment
from data.prepare import disparity_from_png, part_classes, prepare_cityscapes
from experiments.benchmarks.dense import cityscapes_benchmark
from experiments.tasks import Task
from tests.conftest import ROOT


# ---------------------------------------------------------------- Cityscapes ------------------------------------

def raw_item_paths(raw):
    stem = os.path.join(raw, "{folder}", "train", "aachen", "aachen_000000_000019{suffix}")
    return {k: stem.format(folder=f, suffix=s) for k, (f, s) in
            {"labels": ("gtFine", "_gtFine_labelIds.png"), "disparity": ("disparity", "_disparity.png"),
             "parts": ("gtFinePanopticParts", "_gtFinePanopticParts.tif")}.items()}


# (r, c) of the 128×256 output samples raw pixel (8r + 4, 8c + 4) of the 1024×2048 input
PIXELS = {  # (r, c): (label id, panoptic-parts uid, 16-bit disparity p)
    (1, 1): (0, 0, 1025),  # void ("unlabeled"), disparity p = 1025
    (2, 2): (26, 26 * 100000 + 7 * 100 + 0, 0),  # car, instance 7, unlabelled part (pid 0); invalid disparity
    (3, 3): (11, 11, 1),  # building; p = 1: disparity 0, valid (infinitely far)
    (4, 4): (26, 26 * 100000 + 7 * 100 + 5, 2049),  # car chassis (2605)
    (5, 5): (25, 25 * 100000 + 1 * 100 + 2, 513),  # rider head (2502)
    (6, 6): (24, 24 * 100000 + 2 * 100 + 5, 257),  # person with pid 5: not one of Auto-λ's parts
    (7, 7): (28, 28 * 100000 + 0 * 100 + 3, 3073),  # bus lights (2803), instance 0
}
# Auto-λ: part = 0 except sid·100 + pid ∈ {24|25}01..04 → 1..4, {26|27|28}01..05 → 5..9; disparity (p − 1)/1024,
# −1 where p = 0
AUTO_LAMBDA = {(1, 1): (0, 1024 / 1024), (2, 2): (0, -1.0), (3, 3): (0, 0.0), (4, 4): (9, 2048 / 1024),
               (5, 5): (2, 512 / 1024), (6, 6): (0, 256 / 1024), (7, 7): (7, 3072 / 1024)}
# the earlier convention: −1 for void and unlabelled parts of the part classes; (p − 1)/256/8, 0 invalid
LEGACY = {(1, 1): (-1, 1024 / 256 / 8), (2, 2): (-1, 0.0), (3, 3): (0, 0.0), (4, 4): (9, 2048 / 256 / 8),
          (5, 5): (2, 512 / 256 / 8), (6, 6): (-1, 256 / 256 / 8), (7, 7): (7, 3072 / 256 / 8)}


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
    raw = synthetic.write_cityscapes_raw(str(tmp_path_factory.mktemp("cs") / "raw"), n_train=1, n_test=1)
    paths = raw_item_paths(raw)
    labels = np.array(Image.open(paths["labels"]))
    disparity = np.array(Image.open(paths["disparity"])).astype(np.uint16)
    parts = np.array(Image.open(paths["parts"])).astype(np.int32)
    for (r, c), (label_id, uid, p) in PIXELS.items():
        labels[8 * r + 4, 8 * c + 4], parts[8 * r + 4, 8 * c + 4], disparity[8 * r + 4, 8 * c + 4] = label_id, uid, p
    Image.fromarray(labels).save(paths["labels"])
    Image.fromarray(disparity).save(paths["disparity"])
    Image.fromarray(parts).save(paths["parts"])
    return raw


@pytest.mark.parametrize("flags,expected", [({}, AUTO_LAMBDA),
                                            ({"part_seg_void": "ignore", "disparity": "legacy"}, LEGACY)])
def test_cityscapes_raw_tree_conventions(raw_tree, tmp_path, flags, expected):
    out = str(tmp_path / "prepared")
    prepare_cityscapes(raw_tree, out, workers=1, **flags)
    part = np.load(os.path.join(out, "train", "part_seg", "0.npy"))
    disp = np.load(os.path.join(out, "train", "disp", "0.npy"))
    for (r, c), (part_class, disparity) in expected.items():
        assert part[r, c] == part_class, (r, c)
        assert disp[r, c, 0] == pytest.approx(disparity), (r, c)
    record = json.load(open(os.path.join(out, "conventions.json")))
    if not flags:
        assert record["part_seg_void"] == "background" and record["disparity"] == "auto-lambda"
        assert part.min() >= 0  # no ignore label for part_seg
        # the loader gives the disparity target its invalid marker
        dataset = load_cityscapes(out, "train")
        assert next(t for t in dataset.targets if t.kind == "disparity").invalid == -1.0
        # resuming with other conventions is refused
        with pytest.raises(Exception, match="same flags"):
            prepare_cityscapes(raw_tree, out, workers=1, disparity="legacy")


def test_part_classes_and_disparity_functions_by_hand():
    uids = np.array([0, 7, 24, 24005, 2400101, 2400104, 2500103, 2600100, 2600105, 2700102, 2800104, 2600106, 11])
    np.testing.assert_array_equal(part_classes(uids), [0, 0, 0, 0, 1, 4, 3, 0, 9, 6, 8, 0, 0])
    np.testing.assert_array_equal(part_classes(uids, "ignore"), [-1, 0, -1, -1, 1, 4, 3, -1, 9, 6, 8, -1, 0])
    np.testing.assert_allclose(disparity_from_png(np.array([0, 1, 1025, 2049]), 8.0), [-1, 0, 1, 2])
    np.testing.assert_allclose(disparity_from_png(np.array([0, 1, 2049]), 8.0, "legacy"), [0, 0, 1])


def test_prepare_help_names_the_flags():
    result = subprocess.run([sys.executable, "-m", "data.prepare", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert "--part-seg-void" in result.stdout and "--disparity" in result.stdout


def test_disparity_loss_and_metric_ignore_minus_one_and_keep_zero():
    """Auto-λ utils.compute_loss for 'disp': mean |pred − gt| over pixels with gt ≠ −1 (0 counts)."""
    task = Task("disp", "disparity", "disparity", invalid=-1.0)
    target = torch.tensor([[[[-1.0, 0.0], [2.0, 4.0]]]])
    prediction = torch.tensor([[[[9.0, 1.0], [1.0, 1.0]]]])
    assert task.loss(prediction, target).item() == pytest.approx((1 + 1 + 3) / 3)
    accumulator = task.accumulator()
    accumulator.update(prediction, target)
    result = accumulator.result()
    assert result["abs_err"] == pytest.approx(5 / 3)
    assert result["rel_err"] == pytest.approx((1 / 2 + 3 / 4) / 2)  # over the non-zero valid targets


def test_part_seg_miou_counts_background_as_a_class():
    """Auto-λ ConfMatrix over the 10 classes incl. background 0 (no ignore): hand-made 2×2 image."""
    task = Task("part_seg", "part_segmentation", "segmentation", 10)
    target = torch.tensor([[[0, 0], [1, 1]]])
    prediction = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [1, 1]]]), 10).permute(0, 3, 1, 2).float()
    accumulator = task.accumulator()
    accumulator.update(prediction, target)
    # class 0: TP 1, union 2; class 1: TP 2, union 3
    assert accumulator.result()["miou"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert accumulator.result()["pixacc"] == pytest.approx(75.0)


def test_augmentation_keeps_the_invalid_disparity_marker():
    item = {"image": torch.rand(3, 16, 32), "disparity": torch.full((1, 16, 32), 2.0)}
    item["disparity"][0, :, :16] = -1.0
    item["disparity"][0, :8, 16:] = 0.0
    seen = set()
    for seed in range(20):
        out = augment(dict(item), {"image": "image", "disparity": "disparity"}, random.Random(seed))
        values = {round(v, 4) for v in out["disparity"].unique().tolist()}
        assert values <= {-1.0, 0.0, 2.0, 2.4, 3.0} and -1.0 in values
        seen |= values
    assert {2.4, 3.0} & seen  # scaled valid values, while −1 stays −1 and 0 stays 0


def test_cityscapes_benchmark_uses_the_roots_invalid_marker(tmp_path):
    root = synthetic.write_cityscapes(str(tmp_path / "cs"), n_train=2, n_test=1, shape=(32, 64))
    bench = cityscapes_benchmark(root, batch_size=2, epochs=1, meta_val_size=0, device="cpu", seed=0, width=0.0625)
    disp = next(t for t in bench.tasks if t.name == "disp")
    assert disp.invalid == -1.0 and next(t for t in bench.tasks if t.name == "part_seg").n_classes == 10
    os.remove(os.path.join(root, "conventions.json"))  # a root prepared before the file existed: legacy
    bench = cityscapes_benchmark(root, batch_size=2, epochs=1, meta_val_size=0, device="cpu", seed=0, width=0.0625)
    assert next(t for t in bench.tasks if t.name == "disp").invalid == 0.0
    assert isinstance(Target("x", "x", "disparity").invalid, float)
