"""Dense-prediction datasets stored as ``ROOT/{train,val}/<folder>/{i}.npy`` (NYUv2, Cityscapes).

One item is a dict of channel-first tensors: ``image`` (3×H×W float) and one entry per task: labels H×W
int64 (−1 = ignored), depth 1×H×W (0 = invalid), disparity 1×H×W (invalid = the target's ``invalid`` marker:
−1 in Auto-λ's convention, 0 in the legacy one), normals 3×H×W (zero = invalid).

Augmentation (as MTAN, Nash-MTL and the official AuxiNash code): a random scale s ∈ {1.0, 1.2, 1.5}, a random
crop of size (H/s, W/s) resized back to H×W (image and normals bilinear, labels, depth and disparity nearest),
depth divided by s (the crop looks s times closer) and disparity multiplied by s (disparity ∝ 1/depth; negative
invalid markers are kept as they are, as Auto-λ's −1 must stay −1); then a
horizontal flip with probability ½, which also negates the x component of the normals. Once a loader's epoch is
set (``data.common.set_epoch``), item i's augmentation is seeded by (seed, epoch, i) alone, whatever the number
of DataLoader workers.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .common import MalformedDatasetError, check_labels, indexed_files, load_array, require_dir

SCALES = (1.0, 1.2, 1.5)


@dataclass(frozen=True)
class Target:
    """One stored array per item: ``folder`` on disk, ``name`` in the batch, its ``kind`` and class count."""

    name: str
    folder: str
    kind: str  # "image", "label", "depth", "disparity" or "normal"
    n_classes: int = 0
    invalid: float = 0.0  # depth / disparity value that marks an invalid pixel

    @property
    def channels(self) -> Optional[int]:
        return {"image": 3, "normal": 3, "depth": 1, "disparity": 1}.get(self.kind)


def to_tensor(array: np.ndarray, target: Target, path: str) -> torch.Tensor:
    """Stored array (H×W×C or H×W) → channel-first tensor, with the label checks."""
    if target.kind == "label":
        return torch.from_numpy(check_labels(array, target.n_classes, path))
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor[None]


def augment(item: Dict[str, torch.Tensor], kinds: Dict[str, str], rng: random.Random) -> Dict[str, torch.Tensor]:
    """Random scale-crop and horizontal flip applied consistently to every entry (see the module docstring)."""
    height, width = item["image"].shape[-2:]
    scale = rng.choice(SCALES)
    h, w = int(height / scale), int(width / scale)
    top, left = rng.randint(0, height - h), rng.randint(0, width - w)
    flip = rng.random() < 0.5
    out = {}
    for name, value in item.items():
        kind = kinds[name]
        crop = value[..., top:top + h, left:left + w]
        crop = crop[None, None] if kind == "label" else crop[None]
        if kind in ("image", "normal"):
            crop = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=True)
        else:
            crop = F.interpolate(crop.float(), size=(height, width), mode="nearest")
        crop = crop[0, 0].long() if kind == "label" else crop[0]
        if kind == "depth":
            crop = crop / scale
        elif kind == "disparity":
            crop = torch.where(crop < 0, crop, crop * scale)
        if flip:
            crop = crop.flip(-1)
            if kind == "normal":
                crop = crop * torch.tensor([-1.0, 1.0, 1.0])[:, None, None]
        out[name] = crop
    return out


class DenseDataset(Dataset):
    """Items {i}.npy of ``targets`` under ``root/split``; optional augmentation; optional index subset."""

    def __init__(self, root: str, split: str, targets: Sequence[Target], shape: Optional[tuple] = None,
                 augment: bool = False, indices: Optional[Sequence[int]] = None, how_to_get: str = "",
                 seed: int = 0) -> None:
        self.root, self.split, self.targets = root, split, list(targets)
        self.augment = augment
        self.shape = shape
        self.seed = seed
        self.rng = random.Random(seed)  # the augmentation stream of a dataset no loader epoch is set on
        self.epoch: Optional[int] = None  # set by ``set_epoch``: augmentation seeded per (seed, epoch, item)
        counts = {}
        for target in self.targets:
            folder = os.path.join(root, split, target.folder)
            require_dir(folder, f"the {split!r} split's {target.folder!r} folder", how_to_get)
            counts[target.folder] = indexed_files(folder)
        if len(set(counts.values())) != 1:
            raise MalformedDatasetError(f"the folders of {os.path.join(root, split)!r} hold different numbers of "
                                        f"items: {counts}; every folder needs the same indices 0..N-1")
        self.size = next(iter(counts.values()))
        self.indices = list(range(self.size)) if indices is None else list(indices)
        self.kinds = {"image" if t.kind == "image" else t.name: t.kind for t in self.targets}

    def __len__(self) -> int:
        return len(self.indices)

    def path(self, target: Target, index: int) -> str:
        return os.path.join(self.root, self.split, target.folder, f"{index}.npy")

    def load(self, index: int) -> Dict[str, torch.Tensor]:
        """The item with file index ``index``, checked against the layout, without augmentation."""
        item = {}
        for target in self.targets:
            path = self.path(target, index)
            height, width = self.shape if self.shape is not None else (None, None)
            shape = (height, width) if target.kind == "label" else (height, width, target.channels)
            tensor = to_tensor(load_array(path, shape, "fi" if target.kind == "label" else "f"), target, path)
            if self.shape is None:  # the first file fixes H×W for the rest
                self.shape = tuple(tensor.shape[-2:])
            item["image" if target.kind == "image" else target.name] = tensor
        return item

    def set_epoch(self, epoch: int) -> None:
        """From now on, augment item i of this epoch with a generator seeded by (seed, epoch, i) alone
        (``item_rng``): the same crops and flips whichever DataLoader worker, and however many, loads it."""
        self.epoch = epoch

    def item_rng(self, index: int) -> random.Random:
        """The augmentation generator of file index ``index``: the dataset's stream until ``set_epoch`` is called
        (the meta-update's fresh batches, drawn in the main process, keep a saved stream), then a generator
        seeded from (seed, epoch, index) only."""
        if self.epoch is None:
            return self.rng
        return random.Random(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))

    def __getitem__(self, position: int) -> Dict[str, torch.Tensor]:
        index = self.indices[position]
        item = self.load(index)
        if not self.augment:
            return item
        with one_thread():  # as in a DataLoader worker, which torch runs with one thread
            return augment(item, self.kinds, self.item_rng(index))


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread inside the block. CPU bilinear interpolation rounds differently with 1 and 2
    threads (1 ulp in about 40 % of the pixels), and DataLoader workers run with one, so the main process (0 workers)
    augments with one too: the batches are then the same bits for any number of workers and any OMP_NUM_THREADS."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
