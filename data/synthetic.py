"""Tiny datasets written in exactly the real on-disk layouts (file names, shapes, dtypes, value ranges,
ignore labels), so that tests and the quick mode of ``run_all.sh`` exercise the real loading code.

    python -m data.synthetic ROOT     # ROOT/{nyuv2,cityscapes,cityscapes_mtan,cityscapes_raw,cifar10,mnist,
                                      #       speech_commands}
    python -m data.synthetic ROOT --only speech_commands [--clips TRAIN VAL TEST]   # one layout (per-word counts)

The content is a smooth random scene per item from which every label is derived (segmentation from
intensity bands, depth from a gradient, normals from the depth), so that a quick run has something to learn.
MNIST's "digits" are ten fixed blobs, one per class, shifted and noised per image. Speech Commands' "words" are
tones, one pitch per word, of random length and loudness in noise, as 16 kHz 16-bit mono PCM WAVs.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
from typing import Tuple

import numpy as np
from PIL import Image

from . import cityscapes, mnist, nyuv2
from .common import SYNTHETIC_MARKER
from .prepare import CONVENTIONS_FILE, LABEL_TO_TRAIN_ID, conventions_record


def _scene(rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """A smooth H×W×3 image in [0, 1]: bilinear upsampling of a coarse random grid."""
    h, w = shape
    coarse = rng.uniform(size=(4, 6, 3))
    ys = np.linspace(0, 3, h)[:, None]
    xs = np.linspace(0, 5, w)[None, :]
    y0, x0 = np.floor(ys).astype(int).clip(0, 2), np.floor(xs).astype(int).clip(0, 4)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    image = (coarse[y0, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1, x0] * fy * (1 - fx)
             + coarse[y0, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1, x0 + 1] * fy * fx)
    return image.astype(np.float32)


def _labels(image: np.ndarray, n_classes: int, rng: np.random.Generator, void_fraction: float = 0.05) -> np.ndarray:
    labels = np.minimum((image[..., 0] * n_classes).astype(np.int64), n_classes - 1)
    labels[rng.uniform(size=labels.shape) < void_fraction] = -1
    return labels.astype(np.float32)


def _depth(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    depth = 1.0 + 5.0 * image[..., 1:2]
    depth[rng.uniform(size=depth.shape) < 0.05] = 0.0  # invalid pixels
    return depth.astype(np.float32)


def _normals(depth: np.ndarray) -> np.ndarray:
    dy, dx = np.gradient(depth[..., 0])
    normal = np.stack([-dx, -dy, np.ones_like(dx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[depth[..., 0] == 0] = 0.0  # zero = invalid
    return normal.astype(np.float32)


def mark_synthetic(root: str) -> str:
    """Leave the SYNTHETIC marker that makes result tables say 'synthetic smoke run'."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, SYNTHETIC_MARKER), "w") as f:
        f.write("written by data/synthetic.py: random scenes, not the real dataset\n")
    return root


def _save(root: str, split: str, folder: str, index: int, array: np.ndarray) -> None:
    os.makedirs(os.path.join(root, split, folder), exist_ok=True)
    np.save(os.path.join(root, split, folder, f"{index}.npy"), array)


def _write_items(root: str, n_train: int, n_test: int, shape: Tuple[int, int], seed: int, make_item) -> str:
    """``make_item(image, rng)`` → {folder: array} for each of the train and val items."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_test)):
        for i in range(count):
            image = _scene(rng, shape)
            _save(root, split, "image", i, image)
            for folder, array in make_item(image, rng).items():
                _save(root, split, folder, i, array)
    return mark_synthetic(root)


def write_nyuv2(root: str, n_train: int = 4, n_test: int = 3, shape: Tuple[int, int] = nyuv2.SHAPE,
                seed: int = 0) -> str:
    """NYUv2 layout: image H×W×3 float32, label H×W float32 (13 classes, −1), depth H×W×1, normal H×W×3."""
    def item(image, rng):
        depth = _depth(image, rng)
        return {"label": _labels(image, nyuv2.N_CLASSES, rng), "depth": depth, "normal": _normals(depth)}
    return _write_items(root, n_train, n_test, shape, seed, item)


def write_cityscapes(root: str, n_train: int = 4, n_test: int = 3, shape: Tuple[int, int] = cityscapes.SHAPE,
                     seed: int = 0) -> str:
    """The prepared parts layout with Auto-λ's conventions (``conventions.json``): image, seg (19, −1),
    part_seg (10 classes, background 0, no ignore label), disp H×W×1 (−1 invalid, 0.0 valid: sky)."""
    def item(image, rng):
        disp = 10.0 * _depth(image, rng) / 6.0
        disp[disp == 0] = -1.0  # invalid
        disp[rng.uniform(size=disp.shape) < 0.02] = 0.0  # infinitely far: valid
        return {"seg": _labels(image, 19, rng),
                "part_seg": _labels(image[..., ::-1].copy(), cityscapes.PART_CLASSES, rng, void_fraction=0.0),
                "disp": disp}
    _write_items(root, n_train, n_test, shape, seed, item)
    with open(os.path.join(root, CONVENTIONS_FILE), "w") as f:
        json.dump(conventions_record("background", "auto-lambda"), f)
    return root


def write_cityscapes_mtan(root: str, n_train: int = 4, n_test: int = 3, shape: Tuple[int, int] = cityscapes.SHAPE,
                          seed: int = 0) -> str:
    """The MTAN release: image, label_7, label_19 (−1 ignored), depth H×W×1 (raw disparity)."""
    return _write_items(root, n_train, n_test, shape, seed, lambda image, rng: {
        "label_7": _labels(image, 7, rng), "label_19": _labels(image, 19, rng), "depth": _depth(image, rng)})


def write_cityscapes_raw(root: str, n_train: int = 2, n_test: int = 1, shape: Tuple[int, int] = (1024, 2048),
                         seed: int = 0) -> str:
    """Official-download layout: leftImg8bit PNG (RGB), gtFine labelIds PNG (uint8), disparity PNG (uint16),
    gtFinePanopticParts TIFF (int32 panoptic-parts ids)."""
    rng = np.random.default_rng(seed)
    label_ids = np.array(sorted(LABEL_TO_TRAIN_ID) + [0, 1, 4])  # a few void ids too
    for split, count in (("train", n_train), ("val", n_test)):
        city = "aachen" if split == "train" else "frankfurt"
        for i in range(count):
            stem = f"{city}_{i:06d}_000019"
            paths = {kind: os.path.join(root, folder, split, city, stem + suffix)
                     for kind, (folder, suffix) in {"image": ("leftImg8bit", "_leftImg8bit.png"),
                                                    "labels": ("gtFine", "_gtFine_labelIds.png"),
                                                    "disparity": ("disparity", "_disparity.png"),
                                                    "parts": ("gtFinePanopticParts", "_gtFinePanopticParts.tif")}.items()}
            for path in paths.values():
                os.makedirs(os.path.dirname(path), exist_ok=True)
            image = (_scene(rng, (shape[0] // 8, shape[1] // 8)) * 255).astype(np.uint8)
            Image.fromarray(np.kron(image, np.ones((8, 8, 1), dtype=np.uint8))).save(paths["image"])
            labels = np.kron(rng.choice(label_ids, size=(shape[0] // 8, shape[1] // 8)), np.ones((8, 8), dtype=np.int64))
            Image.fromarray(labels.astype(np.uint8)).save(paths["labels"])
            disparity = rng.integers(0, 30000, size=shape, dtype=np.int64)
            Image.fromarray(disparity.astype(np.uint16)).save(paths["disparity"])
            parts = labels.copy()
            with_parts = np.isin(labels, (24, 25, 26, 27, 28))
            part_ids = rng.integers(0, 6, size=shape)
            parts[with_parts] = labels[with_parts] * 100000 + 1 * 100 + part_ids[with_parts]
            Image.fromarray(parts.astype(np.int32)).save(paths["parts"])
    return mark_synthetic(root)


def write_cifar10(root: str, per_batch: int = 200, n_test: int = 200, seed: int = 0) -> str:
    """``cifar-10-batches-py/`` with 5 training batches of ``per_batch`` images, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = n_test if name == "test_batch" else per_batch
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        # class-dependent colour so the main task is learnable
        base = np.stack([labels * 25, 255 - labels * 25, (labels * 70) % 256], axis=1)[:, :, None]
        pixels = np.clip(base + rng.normal(0, 40, size=(count, 3, 1024)), 0, 255).astype(np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": pixels.reshape(count, 3072),
                 b"filenames": [f"{name}_{j}.png".encode() for j in range(count)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"class{c}".encode() for c in range(10)], b"num_cases_per_batch": per_batch,
                     b"num_vis": 3072}, f)
    return mark_synthetic(root)


def write_mnist(root: str, n_train: int = 600, n_test: int = 200, seed: int = 0) -> str:
    """MNIST's release files under ``root/MNIST/raw`` (torchvision's layout, see ``data.mnist``): gzipped IDX
    ``train-images-idx3-ubyte.gz`` (uint8 N×28×28), ``train-labels-idx1-ubyte.gz`` (uint8 N, digits 0..9) and the
    same for ``t10k``. Class c's image is the c-th of ten fixed blobs (a thresholded smooth field in the central
    20×20 box, as MNIST centres its digits there), shifted by up to 2 pixels, scaled and noised. Both splits are
    written, so Multi-MNIST builds its pairs the standard way (training pairs from the training digits)."""
    rng = np.random.default_rng(seed)
    templates = np.zeros((10, 28, 28), dtype=np.float32)
    for c in range(10):
        field = _scene(rng, (20, 20))[..., 0]
        templates[c, 4:24, 4:24] = field > np.quantile(field, 0.7)
    folder = os.path.join(root, "MNIST", "raw")
    os.makedirs(folder, exist_ok=True)
    for split, count in (("train", n_train), ("test", n_test)):
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        shifts = rng.integers(-2, 3, size=(count, 2))
        images = np.stack([np.roll(templates[c], tuple(s), axis=(0, 1)) for c, s in zip(labels, shifts)])
        images = images * rng.uniform(0.7, 1.0, size=(count, 1, 1)) + rng.normal(0, 0.1, size=images.shape)
        image_stem, label_stem = mnist.FILES[split]
        mnist.write_idx(os.path.join(folder, image_stem + ".gz"), np.clip(images * 255, 0, 255).astype(np.uint8))
        mnist.write_idx(os.path.join(folder, label_stem + ".gz"), labels.astype(np.uint8))
    mark_synthetic(folder)
    return mark_synthetic(root)


def write_speech_commands(root: str, n_train: int = 6, n_val: int = 2, n_test: int = 2, seed: int = 0,
                          others: tuple = ("yes", "_background_noise_")) -> str:
    """Speech Commands' extracted-archive layout (see ``data.speech_commands``): ``root/<word>/<speaker>_nohash_<n>.wav``
    for the ten digit words (``n_train`` + ``n_val`` + ``n_test`` clips each) and for the non-digit folders
    ``others`` (two clips each, to be filtered out), ``validation_list.txt`` and ``testing_list.txt`` listing
    ``n_val`` / ``n_test`` clips per word (one non-digit entry each). Word i is a tone of 300 + 150·i Hz, 0.5 to
    1 s long, in noise: some clips are shorter than 1 s, as in the release."""
    from scipy.io import wavfile

    from .speech_commands import LISTS, SAMPLE_RATE, WORDS
    rng = np.random.default_rng(seed)
    listed = {"val": [], "test": []}
    for index, word in enumerate(tuple(WORDS) + tuple(others)):
        folder = os.path.join(root, word)
        os.makedirs(folder, exist_ok=True)
        counts = (n_train, n_val, n_test) if word in WORDS else (0, 1, 1)
        for n, split in enumerate(["train"] * counts[0] + ["val"] * counts[1] + ["test"] * counts[2]):
            name = f"{rng.integers(16**8):08x}_nohash_{n % 3}.wav"
            length = int(SAMPLE_RATE * rng.uniform(0.5, 1.0))
            t = np.arange(length) / SAMPLE_RATE
            wave = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * (300 + 150 * index) * t + rng.uniform(0, 2 * np.pi))
            wave = wave + rng.normal(0, 0.05, size=length)
            wavfile.write(os.path.join(folder, name), SAMPLE_RATE, (np.clip(wave, -1, 1) * 32767).astype(np.int16))
            if split != "train":
                listed[split].append(f"{word}/{name}")
    for split, entries in listed.items():
        with open(os.path.join(root, LISTS[split]), "w") as f:
            f.write("\n".join(sorted(entries)) + "\n")
    return mark_synthetic(root)


def write_all(root: str, small: bool = False) -> None:
    """Every layout under ``root``; ``small`` shrinks the images (NYUv2 64×96, Cityscapes 32×64) for quick runs
    (SegNet needs sides divisible by 32)."""
    write_nyuv2(os.path.join(root, "nyuv2"), shape=(64, 96) if small else nyuv2.SHAPE)
    write_cityscapes(os.path.join(root, "cityscapes"), shape=(32, 64) if small else cityscapes.SHAPE)
    write_cityscapes_mtan(os.path.join(root, "cityscapes_mtan"), shape=(32, 64) if small else cityscapes.SHAPE)
    write_cityscapes_raw(os.path.join(root, "cityscapes_raw"), shape=(256, 512) if small else (1024, 2048))
    write_cifar10(os.path.join(root, "cifar10"))
    write_speech_commands(os.path.join(root, "speech_commands"))
    write_mnist(os.path.join(root, "mnist"))  # last: run_all.sh --quick checks its marker


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--small", action="store_true", help="smaller images (NYUv2 64×96, Cityscapes 32×64)")
    parser.add_argument("--only", choices=["speech_commands"], default=None,
                        help="write only this layout, into ROOT itself")
    parser.add_argument("--clips", type=int, nargs=3, default=(6, 2, 2), metavar=("TRAIN", "VAL", "TEST"),
                        help="speech_commands with --only: clips per digit word in each split")
    arguments = parser.parse_args()
    if arguments.only == "speech_commands":
        write_speech_commands(arguments.root, *arguments.clips)
    else:
        write_all(arguments.root, arguments.small)
