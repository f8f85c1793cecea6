"""NYUv2 as MTAN, Nash-MTL and the official AuxiNash code use it (795 train / 654 test at 288×384).

Layout: ``ROOT/{train,val}/{image,label,depth,normal}/{i}.npy`` with image 288×384×3 float in [0, 1],
label 288×384 (13 classes, −1 unlabelled, stored as floats), depth 288×384×1 (0 invalid), normal 288×384×3
unit vectors (zero invalid). ``val`` is the test split, as in those repositories.
Tasks: ``segmentation`` (13 classes), ``depth``, ``normal``.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .dense import DenseDataset, Target

TASKS = ("segmentation", "depth", "normal")
N_CLASSES = 13
SHAPE = (288, 384)
SPLITS = {"train": 795, "val": 654}
TARGETS = (
    Target("image", "image", "image"),
    Target("segmentation", "label", "label", N_CLASSES),
    Target("depth", "depth", "depth"),
    Target("normal", "normal", "normal"),
)
HOW_TO_GET = ("NYUv2 is the preprocessed release of MTAN (github.com/lorenmt/mtan, README section 'Datasets': "
              "the nyuv2.zip download), also used by Nash-MTL and AuxiNash. Unzip it so that ROOT/train/image/0.npy "
              "exists and pass --data-root ROOT (or set NYUV2_ROOT). `python -m data.check nyuv2 --root ROOT` "
              "validates it.")


def load_nyuv2(root: str, split: str = "train", augment: bool = False, indices: Optional[Sequence[int]] = None,
          seed: int = 0) -> DenseDataset:
    """The NYUv2 ``split`` ('train' or 'val' = test) under ``root``."""
    return DenseDataset(root, split, TARGETS, augment=augment, indices=indices, how_to_get=HOW_TO_GET, seed=seed)
