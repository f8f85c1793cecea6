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
from experiments.training.benchmarks.dense import cityscapes_benchmark
from experiments.training.tasks import Task
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
        assert disp[r, c, 0] == pytest.approx(disparity), (r, c)  # float32 values: approx's 1e-6 > 2^-24
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
    # (v − 1) / 256 / 8: exact binary fractions
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
    # hand values against float32 sums of a few terms: pytest.approx's 1e-6 relative (here and in the next test)
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


# ---------------------------------------------------------------- semi-supervised CIFAR-10 ----------------------

from data import CifarSSL  # noqa: E402
from data.cifar import (apply_zca, arml_augment, fit_zca, gcn, rotate_all, rotate_batch,  # noqa: E402
                        student_view)
from experiments.training.benchmarks.cifar_ssl import CifarSSLBenchmark  # noqa: E402
from experiments.training.models import ArmlBlock, BasicBlock, CifarSSLNet, WideResNet, batch_stats_frozen  # noqa: E402


def test_gcn_by_hand():
    """ARML build_dataset.py gcn: x − mean(x), scaled to norm 55; a constant image stays 0."""
    images = torch.tensor([[1.0, 3.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]]).view(2, 1, 2, 2)
    out = gcn(images)
    # image 0: mean 2 → [−1, 1, 0, 0], norm √2 → 55·[−1, 1, 0, 0]/√2
    torch.testing.assert_close(out[0].flatten(), torch.tensor([-1.0, 1.0, 0.0, 0.0]) * 55 / 2 ** 0.5)
    torch.testing.assert_close(out[1], torch.zeros(1, 2, 2))


@pytest.fixture
def correlated():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 12, generator=generator, dtype=torch.float64)
    mixing = torch.randn(12, 12, generator=generator, dtype=torch.float64) + 3 * torch.eye(12, dtype=torch.float64)
    return (z @ mixing + 5.0).view(2000, 3, 2, 2)


def test_zca_whitened_batch_has_identity_covariance(correlated):
    mean, matrix = fit_zca(correlated, regularisation=0.0)
    white = apply_zca(correlated, mean, matrix).view(2000, -1).double()
    covariance = np.cov(white.numpy(), rowvar=False)  # the unbiased covariance, as ARML's np.cov
    # On the CPU XᵀX and (x − mean) W run in float32 (2^-24), amplified by W's conditioning (√κ(C) = 50 here):
    # measured 1e-5 off the identity, 8e-7 off zero; 2e-4 / 1e-4 leave a factor 20 (here and in the next test)
    np.testing.assert_allclose(covariance, np.eye(12), atol=2e-4)
    np.testing.assert_allclose(white.mean(0).numpy(), 0, atol=1e-4)
    torch.testing.assert_close(matrix, matrix.T)  # ZCA: symmetric, not a PCA rotation


def test_zca_regularisation_as_arml(correlated):
    """ARML: W = U diag(1/√(S + 1e-10)) Uᵀ of np.cov + 0.1 I ⇒ whitened covariance U diag(S₀/(S₀ + 0.1)) Uᵀ."""
    flat = correlated.view(2000, -1).numpy()
    covariance = np.cov(flat, rowvar=False)
    u, s, _ = np.linalg.svd(covariance + 0.1 * np.eye(12))
    arml_matrix = u @ np.diag(1 / np.sqrt(s + 1e-10)) @ u.T
    mean, matrix = fit_zca(correlated)
    # our C comes from a float32 XᵀX on the CPU (a few 2^-24 of ‖C‖), which the float64 eigendecomposition turns
    # into ½ κ(C + 0.1 I) = 235 times that relative to ‖W‖: ~4e-5 of its largest entry, so atol 1e-4 of it for the
    # small entries (measured 2.7e-6; the former atol 1e-6 was below this bound)
    np.testing.assert_allclose(matrix.numpy(), arml_matrix, rtol=1e-4, atol=1e-4 * np.abs(arml_matrix).max())
    white = apply_zca(correlated, mean, matrix).view(2000, -1).double().numpy()
    eigenvalues, vectors = np.linalg.eigh(covariance)
    expected = vectors @ np.diag(eigenvalues / (eigenvalues + 0.1)) @ vectors.T
    np.testing.assert_allclose(np.cov(white, rowvar=False), expected, atol=2e-4)


def test_four_rotations_of_one_image():
    image = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    rotated, targets = rotate_all(image)
    assert targets.tolist() == [0, 1, 2, 3]
    for k in range(4):
        torch.testing.assert_close(rotated[k], torch.rot90(image[0], k, dims=(1, 2)))
    # ARML s4l.py MyRotationTransform: 90° = transpose(-2, -1).flip(-2), 180° = flip both, 270° = transpose.flip(-1)
    torch.testing.assert_close(rotated[1], image[0].transpose(-2, -1).flip(-2))
    torch.testing.assert_close(rotated[2], image[0].flip(-2).flip(-1))
    torch.testing.assert_close(rotated[3], image[0].transpose(-2, -1).flip(-1))
    # the random-angle form uses the same rotations
    torch.testing.assert_close(rotate_batch(image.expand(4, -1, -1, -1), torch.arange(4)), rotated)


def test_arml_augment_crop_flip_per_batch_and_noise():
    images = torch.rand(5, 3, 8, 8)
    padded = torch.nn.functional.pad(images, [2, 2, 2, 2], mode="reflect")
    flips = set()
    for seed in range(12):
        out = arml_augment(images, torch.Generator().manual_seed(seed), noise_std=0.0)
        matches = [(t, l, f) for t in range(5) for l in range(5) for f in (False, True)
                   if torch.equal(out, (padded.flip(-1) if f else padded)[..., t:t + 8, l:l + 8])]
        assert matches, "one crop offset and one flip for the whole batch"
        flips.add(matches[0][2])
    assert flips == {False, True}
    noise = arml_augment(torch.zeros(64, 3, 32, 32), torch.Generator().manual_seed(0))
    assert abs(noise.std().item() - 0.15) < 3e-3 and abs(noise.mean().item()) < 3e-3


def test_student_view_as_armls_random_aug():
    """ARML RandomAug: flip the batch w.p. ½, add (ε·0.03 + mean)·(max − min)/2, zero one 16×16 square."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 32, 32) * 2.0 - 0.5  # min ≈ −0.5, max ≈ 1.5, mean ≈ 0.5
    low, high, mean = images.min(), images.max(), images.mean()
    flips = set()
    for _ in range(10):
        view = student_view(images, generator)
        cut = (view == 0).all(dim=0).all(dim=0)  # the cutout: zero in every image and channel
        rows, cols = cut.any(1).nonzero().flatten(), cut.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 16 and 1 <= len(cols) <= 16 and cut.sum() == len(rows) * len(cols)
        assert len(rows) == 16 or rows[0] == 0 or rows[-1] == 31  # clipped only at the border
        assert len(cols) == 16 or cols[0] == 0 or cols[-1] == 31
        kept = ~cut
        residuals = {flip: (view - (images.flip(-1) if flip else images))[..., kept] for flip in (False, True)}
        flip = min(residuals, key=lambda f: residuals[f].std().item())
        flips.add(flip)
        noise = residuals[flip]
        assert abs(noise.mean().item() - (mean * (high - low) / 2).item()) < 2e-3
        assert abs(noise.std().item() - (0.03 * (high - low) / 2).item()) < 2e-3
    assert flips == {False, True}


def test_ema_teacher_decay_warms_up():
    """ARML Exemplar_MT.moving_average: decay min(1 − 1/(t+1), 0.95); teacher 0, student 1 ⇒ teacher k/(k+1)."""
    model = CifarSSLNet(width=0.125)
    with torch.no_grad():
        for p in model.teacher["trunk"].parameters():
            p.zero_()
        for p in model.trunk.parameters():
            p.fill_(1.0)
    probe = lambda: next(model.teacher["trunk"].parameters()).flatten()[0].item()  # noqa: E731
    for k in range(1, 20):
        model.after_step()
        assert probe() == pytest.approx(k / (k + 1), abs=1e-6)  # float32 averages: ~k · 2^-24 after k steps
    model.after_step()  # t = 20: decay min(20/21, 0.95) = 0.95
    assert probe() == pytest.approx(0.95 * 19 / 20 + 0.05, abs=1e-6)
    legacy = CifarSSLNet(width=0.125, pipeline="legacy")
    with torch.no_grad():
        for p in legacy.teacher.parameters():
            p.zero_()
        for p in list(legacy.trunk.parameters()) + list(legacy.heads["exemplar"].parameters()):
            p.fill_(1.0)
    legacy.after_step()
    assert next(legacy.teacher["trunk"].parameters()).flatten()[0].item() == pytest.approx(0.05)  # float32 0.05


def test_wrn_is_armls():
    """ARML wrn.py: LeakyReLU(0.1) everywhere; the downsampling blocks' shortcut takes the raw input."""
    trunk = WideResNet(width=0.25)
    assert not any(isinstance(m, torch.nn.ReLU) for m in trunk.modules())
    slopes = {m.negative_slope for m in trunk.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}
    x = torch.randn(4, 4, 8, 8)
    block = ArmlBlock(4, 8, 2)
    with torch.no_grad():
        block.conv2.weight.zero_()  # leaves out = shortcut(x)
    torch.testing.assert_close(block(x), torch.nn.functional.conv2d(x, block.shortcut.weight, stride=2))
    first = ArmlBlock(4, 8, 1, activate_before_residual=True)
    with torch.no_grad():
        first.conv2.weight.zero_()
    normalised = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True)
                                                                     + 1e-5)
    activated = torch.where(normalised > 0, normalised, 0.1 * normalised)
    torch.testing.assert_close(first(x), torch.nn.functional.conv2d(activated, first.shortcut.weight))
    legacy = BasicBlock(4, 8, 2)  # the earlier block: its shortcut takes the activated input (differs)
    with torch.no_grad():
        legacy.conv2.weight.zero_()
    assert not torch.allclose(legacy(x), torch.nn.functional.conv2d(x, legacy.shortcut.weight, stride=2))
    blocks = [m for m in trunk.modules() if isinstance(m, ArmlBlock)]
    assert len(blocks) == 12 and [b.activate_before_residual for b in blocks].count(True) == 1
    # Exemplar-MT has no task-specific parameters: no projection head
    model = CifarSSLNet(width=0.25)
    assert set(model.heads) == {"classification", "rotation"}


def test_frozen_batch_stats_use_the_batch_and_leave_running_stats():
    bn = torch.nn.BatchNorm2d(3)
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    with batch_stats_frozen(bn):
        out = bn(x)
    assert all(torch.equal(a, b) for a, b in zip(before, (bn.running_mean, bn.running_var, bn.num_batches_tracked)))
    torch.testing.assert_close(out, torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True))
    assert bn.track_running_stats


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return synthetic.write_cifar10(str(tmp_path_factory.mktemp("cifar") / "c"), per_batch=40, n_test=40)


def bn_buffers(module):
    return [b.clone() for name, b in module.named_buffers() if "running" in name]


def make_bench(root, **kwargs):
    data = CifarSSL(root, n_labeled=50, val_size=50, seed=0)
    return CifarSSLBenchmark(data, iterations=1, eval_every=1, labeled_batch=4, unlabeled_batch=4, device="cpu",
                             seed=0, width=0.125, **kwargs)


def test_cifar_arml_batches_are_whitened_and_unaugmented(cifar_root):
    data = CifarSSL(cifar_root, n_labeled=50, val_size=50, seed=0)
    batch = next(data.train_batches(4, 4))
    assert set(batch) == {"image", "label"} and (batch["label"][4:] == -1).all()
    flat = data.images.view(len(data.images), -1)
    assert abs(flat.mean().item()) < 1e-3  # ZCA centred on the training images (float32 products, as above)
    # the batch is the stored whitened images, not augmented
    assert any(torch.equal(batch["image"][0], image) for image in data.images)


def test_stl_bn_running_statistics_unchanged_by_auxiliary_images(cifar_root):
    """STL (needs_auxiliary_losses = False) forwards the labelled images only: its BN running statistics equal
    those of a copy that saw only the labelled images with the same augmentation."""
    import copy
    from methods import METHODS

    assert METHODS["stl"].needs_auxiliary_losses is False
    bench = make_bench(cifar_root, auxiliary_forward=False)
    torch.manual_seed(0)
    model = bench.build_model()
    reference = copy.deepcopy(model)
    batch = next(bench.data.train_batches(4, 4))
    state = bench.data.generator.get_state()
    losses, _ = bench.losses(model, batch)
    assert losses[1:].abs().sum() == 0 and losses[0] > 0
    bench.data.generator.set_state(state)
    reference.encode(arml_augment(batch["image"][:4], bench.data.generator))
    for a, b in zip(bn_buffers(model.trunk), bn_buffers(reference.trunk)):
        torch.testing.assert_close(a, b)
    stl_buffers = bn_buffers(model.trunk)
    # every other method: the rotation pass moves the running statistics, the student view (frozen) does not
    bench = make_bench(cifar_root)
    model, reference = copy.deepcopy(reference), copy.deepcopy(reference)
    state = bench.data.generator.get_state()
    bench.losses(model, batch)
    bench.data.generator.set_state(state)
    images = batch["image"]
    reference.encode(arml_augment(images, bench.data.generator))
    angles = torch.randint(0, 4, (len(images),), generator=bench.data.generator)
    reference.encode(arml_augment(rotate_batch(images, angles), bench.data.generator))
    for a, b in zip(bn_buffers(model.trunk), bn_buffers(reference.trunk)):
        torch.testing.assert_close(a, b)
    # (the check can fail: with the auxiliaries' passes the statistics are not the labelled-only ones)
    assert not all(torch.allclose(a, b) for a, b in zip(bn_buffers(model.trunk), stl_buffers))


def test_all4_rotation_and_legacy_pipeline_run(cifar_root):
    bench = make_bench(cifar_root, rotation="all4")
    losses, _ = bench.losses(bench.build_model(), next(bench.data.train_batches(4, 4)))
    assert torch.isfinite(losses).all() and losses.shape == (3,)
    data = CifarSSL(cifar_root, n_labeled=50, val_size=50, seed=0, pipeline="legacy")
    legacy = CifarSSLBenchmark(data, iterations=1, eval_every=1, labeled_batch=4, unlabeled_batch=4, device="cpu",
                               seed=0, width=0.125)
    losses, _ = legacy.losses(legacy.build_model(), next(data.train_batches(4, 4)))
    assert torch.isfinite(losses).all()
    with pytest.raises(ValueError, match="all4"):
        CifarSSLBenchmark(data, iterations=1, eval_every=1, labeled_batch=4, unlabeled_batch=4, device="cpu",
                          seed=0, rotation="all4")


def test_train_cifar_ssl_help_names_the_flags():
    result = subprocess.run([sys.executable, "experiments/train_cifar_ssl.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True)
    assert "--cifar-pipeline" in result.stdout and "--rotation" in result.stdout and "all4" in result.stdout
