"""Semi-supervised CIFAR-10 as ARML (Shi et al., 2020) and the AuxiNash paper use it.

Reads the standard ``cifar-10-batches-py/`` layout (pickled batches, md5 sums not checked). Seeded splits:
45,000 train / 5,000 validation (early stopping) of the 50,000 training images, the 10,000 test images as test;
a seeded, class-balanced labelled subset of the train split (``n_labeled``, 5,000 by default; the paper also
uses 10,000). Every train image, labelled or not, feeds the self-supervised auxiliaries.

A training batch (made on the target device with tensor ops, no per-image Python) holds ``labeled_batch``
labelled images (128) and ``unlabeled_batch`` images from the whole train split (128, label −1):

- ``image``: random crop with 4-pixel zero padding and horizontal flip, normalised;
- ``label``: the class, −1 for the unlabelled half (ignored by the main task);
- ``rotated`` / ``rotation``: the image rotated by 0/90/180/270° (one random angle per image) and the angle
  index (Rotation task);
- ``view``: the Exemplar-MT second view: horizontal flip, Gaussian noise (std 0.03 on [0, 1] pixels) and,
  with probability ½, a 16×16 cutout (set to the mean, 0 after normalisation).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from .common import DatasetNotFoundError, MalformedDatasetError, meta_val_split

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
N_CLASSES = 10
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
TASKS = ("classification", "rotation", "exemplar")
HOW_TO_GET = ("CIFAR-10 ('python version', cifar-10-batches-py/) comes from www.cs.toronto.edu/~kriz/cifar.html "
              "or torchvision.datasets.CIFAR10(root, download=True); pass --download to fetch it with torchvision, "
              "or put cifar-10-batches-py/ under --data-root (or set CIFAR10_ROOT).")


def batches_dir(root: str) -> str:
    """``root`` itself when it is the batches folder, else ``root/cifar-10-batches-py``."""
    return root if os.path.exists(os.path.join(root, "data_batch_1")) else os.path.join(root, "cifar-10-batches-py")


def read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N×32×32×3 uint8) and labels (N int64) of one pickled batch, checked."""
    if not os.path.exists(path):
        raise DatasetNotFoundError(f"CIFAR-10 batch file {path!r} not found.\n{HOW_TO_GET}")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as error:
        raise MalformedDatasetError(f"cannot unpickle {path!r}: {error}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise MalformedDatasetError(f"{path!r} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise MalformedDatasetError(f"{path!r}: b'data' is {data.dtype} {data.shape}, expected uint8 N×3072")
    if labels.shape != (data.shape[0],):
        raise MalformedDatasetError(f"{path!r}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise MalformedDatasetError(f"{path!r}: labels in [{labels.min()}, {labels.max()}], expected [0, 9]")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10(root: str, download: bool = False) -> Dict[str, np.ndarray]:
    """The 50,000 training and 10,000 test images and labels from the standard layout under ``root``."""
    folder = batches_dir(root)
    if not os.path.isdir(folder) and download:
        try:
            import torchvision

            torchvision.datasets.CIFAR10(root, train=True, download=True)
        except Exception as error:  # no network, no torchvision
            raise DatasetNotFoundError(f"CIFAR-10 not found at {folder!r} and the download failed ({error}).\n"
                                       f"{HOW_TO_GET}") from None
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"CIFAR-10 not found: expected the folder {folder!r}.\n{HOW_TO_GET}")
    train = [read_batch(os.path.join(folder, name)) for name in TRAIN_FILES]
    test = [read_batch(os.path.join(folder, name)) for name in TEST_FILES]
    return {"train_images": np.concatenate([x for x, _ in train]), "train_labels": np.concatenate([y for _, y in train]),
            "test_images": np.concatenate([x for x, _ in test]), "test_labels": np.concatenate([y for _, y in test])}


def balanced_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` positions into ``labels``, count/10 of each class, seeded."""
    if count % N_CLASSES:
        raise ValueError(f"n_labeled must be a multiple of {N_CLASSES} for a class-balanced subset, got {count}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(N_CLASSES):
        members = np.flatnonzero(labels == c)
        if len(members) < count // N_CLASSES:
            raise ValueError(f"class {c} has {len(members)} training images, fewer than {count // N_CLASSES}")
        chosen.append(rng.choice(members, count // N_CLASSES, replace=False))
    return np.sort(np.concatenate(chosen))


@dataclass
class Splits:
    """Positions into the 50,000 training images (train, val, labelled ⊂ train, meta-val ⊂ labelled)."""

    train: np.ndarray
    val: np.ndarray
    labeled: np.ndarray
    meta_val: np.ndarray


def make_splits(train_labels: np.ndarray, n_labeled: int = 5000, val_size: int = 5000, meta_val_size: float = 0,
                seed: int = 0) -> Splits:
    """Seeded train/val split, class-balanced labelled subset, optional held-out meta-validation part of it.

    With ``meta_val_size`` = 0 the meta-validation batches come from the labelled training images themselves.
    """
    order = np.random.default_rng(seed).permutation(len(train_labels))
    val, train = np.sort(order[:val_size]), np.sort(order[val_size:])
    labeled = train[balanced_subset(train_labels[train], n_labeled, seed + 1)]
    kept, held_out = meta_val_split(len(labeled), meta_val_size, seed + 2)
    return Splits(train=train, val=val, labeled=labeled[kept], meta_val=labeled[held_out])


def rotate_batch(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate image b by angles[b] × 90° (counter-clockwise), batch-wise."""
    out = images.clone()
    for k in range(1, 4):
        mask = angles == k
        if mask.any():
            out[mask] = torch.rot90(images[mask], k, dims=(2, 3))
    return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=images.device)[:, None, None]
    std = torch.tensor(STD, device=images.device)[:, None, None]
    return (images - mean) / std


def crop_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32×32 crop of the 4-pixel zero-padded image and a horizontal flip with probability ½."""
    n, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    top = torch.randint(0, 9, (n,), generator=generator, device=device)
    left = torch.randint(0, 9, (n,), generator=generator, device=device)
    rows = (top[:, None] + torch.arange(h, device=device))[:, None, :, None].expand(n, c, h, w + 8)
    cropped = padded.gather(2, rows)  # n × c × h × (w + 8)
    cols = (left[:, None] + torch.arange(w, device=device))[:, None, None, :].expand(n, c, h, w)
    cropped = cropped.gather(3, cols)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def cutout_mask(n: int, h: int, w: int, generator: torch.Generator, device: torch.device, prob: float = 0.5,
                size: int = 16) -> torch.Tensor:
    """n × 1 × h × w mask, 0 inside a size×size square at a random centre (clipped at the border) for a
    random ``prob`` share of the images, 1 elsewhere."""
    cy = torch.randint(0, h, (n,), generator=generator, device=device)[:, None, None]
    cx = torch.randint(0, w, (n,), generator=generator, device=device)[:, None, None]
    apply = (torch.rand(n, generator=generator, device=device) < prob)[:, None, None]
    ys = torch.arange(h, device=device)[None, :, None] - cy + size // 2
    xs = torch.arange(w, device=device)[None, None, :] - cx + size // 2
    inside = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
    return (~(inside & apply))[:, None].float()


def exemplar_view(images: torch.Tensor, generator: torch.Generator, noise_std: float = 0.03,
                  cutout_prob: float = 0.5, cutout_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Exemplar-MT's second view of [0, 1] images: flip, Gaussian noise, cutout (to the mean).

    Returns the normalised view and the cutout mask (1 where pixels are kept)."""
    n, _, h, w = images.shape
    noisy = images.flip(3) + noise_std * torch.randn(images.shape, generator=generator, device=images.device)
    keep = cutout_mask(n, h, w, generator, images.device, cutout_prob, cutout_size)
    return normalise(noisy) * keep, keep


class CifarSSL:
    """Semi-supervised CIFAR-10 held in memory on ``device``, with seeded, resumable batch streams."""

    def __init__(self, root: str, n_labeled: int = 5000, val_size: int = 5000, meta_val_size: float = 0,
                 tasks: Sequence[str] = TASKS, seed: int = 0, device: torch.device | str = "cpu",
                 download: bool = False) -> None:
        unknown = set(tasks) - set(TASKS)
        if unknown or "classification" not in tasks:
            raise ValueError(f"tasks must include 'classification' and come from {TASKS}, got {list(tasks)}")
        self.tasks = tuple(tasks)
        self.n_labeled = n_labeled
        self.device = torch.device(device)
        arrays = read_cifar10(root, download)
        self.splits = make_splits(arrays["train_labels"], n_labeled, val_size, meta_val_size, seed)
        to_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self.device)
        self.images = to_tensor(arrays["train_images"])  # uint8, N × 3 × 32 × 32
        self.labels = torch.from_numpy(arrays["train_labels"]).to(self.device)
        self.test_images = to_tensor(arrays["test_images"])
        self.test_labels = torch.from_numpy(arrays["test_labels"]).to(self.device)
        self.positions = {name: torch.from_numpy(getattr(self.splits, name)).to(self.device)
                          for name in ("train", "val", "labeled", "meta_val")}
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def _draw(self, pool: str, count: int) -> torch.Tensor:
        positions = self.positions[pool]
        return positions[torch.randint(0, len(positions), (count,), generator=self.generator, device=self.device)]

    def make_batch(self, labeled: torch.Tensor, unlabeled: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The training batch of the given image positions (see the module docstring)."""
        positions = labeled if unlabeled is None else torch.cat([labeled, unlabeled])
        pixels = crop_flip(self.images[positions].float() / 255.0, self.generator)
        labels = self.labels[positions].clone()
        labels[len(labeled):] = -1
        batch = {"image": normalise(pixels), "label": labels}
        if "rotation" in self.tasks:
            angles = torch.randint(0, 4, (len(positions),), generator=self.generator, device=self.device)
            batch["rotated"] = normalise(rotate_batch(pixels, angles))
            batch["rotation"] = angles
        if "exemplar" in self.tasks:
            batch["view"], _ = exemplar_view(pixels, self.generator)
        return batch

    def train_batches(self, labeled_batch: int = 128, unlabeled_batch: int = 128) -> Iterator[Dict[str, torch.Tensor]]:
        """Endless training batches: labelled images plus images from the whole train split."""
        while True:
            yield self.make_batch(self._draw("labeled", labeled_batch),
                                  self._draw("train", unlabeled_batch) if unlabeled_batch else None)

    def meta_val_batches(self, batch_size: int = 128) -> Iterator[Dict[str, torch.Tensor]]:
        """Endless labelled batches for the meta-update (from the labelled train images unless held out)."""
        while True:
            yield self.make_batch(self._draw("meta_val", batch_size))

    def eval_batches(self, split: str, batch_size: int = 1000) -> Iterator[Dict[str, torch.Tensor]]:
        """Un-augmented, normalised batches of 'val' (the held-out 5,000) or 'test' (the 10,000)."""
        if split == "test":
            images, labels = self.test_images, self.test_labels
        elif split == "val":
            images, labels = self.images[self.positions["val"]], self.labels[self.positions["val"]]
        else:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        for start in range(0, len(labels), batch_size):
            pixels = images[start:start + batch_size].float() / 255.0
            yield {"image": normalise(pixels), "label": labels[start:start + batch_size]}
