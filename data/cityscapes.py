"""Cityscapes in two layouts, detected from what a root holds.

``parts`` (the paper's task set, built by ``python -m data.prepare cityscapes``):
``ROOT/{train,val}/{image,seg,part_seg,disp}/{i}.npy`` at 128×256: image 128×256×3 float in [0, 1]; seg
19 train ids, −1 void; part_seg 10 classes with background 0 and no ignore label; disp 128×256×1 disparity
(p − 1)/1024, −1 invalid (both Auto-λ's ``create_dataset.py``; see ``data.prepare``). ``ROOT/conventions.json``
says which conventions a root holds (``read_conventions``; without it the legacy ones: part_seg
−1 void, disparity in pixels of the stored image with 0 invalid), and the disparity target carries its invalid
marker. Tasks: ``segmentation``, ``part_segmentation``, ``disparity``.

``mtan`` (the MTAN release as is): ``ROOT/{train,val}/{image,label_7,label_19,depth}/{i}.npy``, 2,975 / 500
at 128×256, −1 ignored, depth = the raw disparity. No part labels: the tasks are ``segmentation`` (7 or 19
classes) and ``depth``.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

from .common import DatasetNotFoundError, MalformedDatasetError, require_dir
from .dense import DenseDataset, Target

SHAPE = (128, 256)
SPLITS = {"train": 2975, "val": 500}
PART_CLASSES = 10
HOW_TO_GET = ("Cityscapes: build the paper's task set from the official downloads (www.cityscapes-dataset.com: "
              "leftImg8bit_trainvaltest, gtFine_trainvaltest, disparity_trainvaltest and gtFinePanopticParts) with "
              "`python -m data.prepare cityscapes --raw RAW --out ROOT`, or unzip the MTAN release "
              "(github.com/lorenmt/mtan, README 'Datasets'; 7/19-class segmentation and depth, no parts) so that "
              "ROOT/train/image/0.npy exists. Pass --data-root ROOT (or set CITYSCAPES_ROOT).")
LAYOUTS = {
    "parts": (Target("image", "image", "image"),
              Target("segmentation", "seg", "label", 19),
              Target("part_segmentation", "part_seg", "label", PART_CLASSES),
              Target("disparity", "disp", "disparity")),
    "mtan": (Target("image", "image", "image"),
             Target("segmentation", "label_{n}", "label"),
             Target("depth", "depth", "depth")),
}
log = logging.getLogger(__name__)


def detect_layout(root: str) -> str:
    """'parts' or 'mtan', from the folders of ``root/train``; DatasetNotFoundError when neither is there."""
    require_dir(os.path.join(root, "train"), "Cityscapes", HOW_TO_GET)
    present = set(os.listdir(os.path.join(root, "train")))
    if {"seg", "part_seg", "disp"} <= present:
        return "parts"
    if "depth" in present and ({"label_7", "label_19"} & present):
        return "mtan"
    raise DatasetNotFoundError(f"{os.path.join(root, 'train')!r} holds {sorted(present)}: neither the prepared "
                               f"layout (image, seg, part_seg, disp) nor the MTAN release (image, label_7, "
                               f"label_19, depth).\n{HOW_TO_GET}")


def tasks_of(root: str) -> tuple:
    """The task names a Cityscapes root provides."""
    return tuple(t.name for t in LAYOUTS[detect_layout(root)][1:])


CONVENTIONS_FILE = "conventions.json"  # written by ``data.prepare`` into a prepared root


def conventions_record(part_seg_void: str, disparity: str) -> dict:
    """What ``ROOT/conventions.json`` holds: the two choices and the disparity's invalid marker."""
    return {"part_seg_void": part_seg_void, "disparity": disparity,
            "disparity_invalid": -1.0 if disparity == "auto-lambda" else 0.0}


def read_conventions(root: str) -> dict:
    """The conventions a prepared root was written with (legacy for roots written before the file existed)."""
    path = os.path.join(root, CONVENTIONS_FILE)
    if not os.path.exists(path):
        return {**conventions_record("ignore", "legacy"), "recorded": False}
    try:
        with open(path) as f:
            record = json.load(f)
        return {**conventions_record(record["part_seg_void"], record["disparity"]), "recorded": True}
    except (ValueError, KeyError) as error:
        raise MalformedDatasetError(f"{path!r} is unreadable ({error}); delete it and prepare the root again "
                                    f"with `python -m data.prepare cityscapes`") from None


def conventions(root: str) -> dict:
    """The prepared root's conventions (``read_conventions``); the MTAN release's depth is the raw
    disparity with 0 invalid."""
    if detect_layout(root) == "mtan":
        return {"part_seg_void": None, "disparity": "mtan", "disparity_invalid": 0.0, "recorded": False}
    return read_conventions(root)


_logged: set = set()


def _log_once(level: int, message: str, *args) -> None:
    """Log ``message % args`` the first time only: a run opens the same root for several splits and subsets."""
    if (message, args) not in _logged:
        _logged.add((message, args))
        log.log(level, message, *args)


def load_cityscapes(root: str, split: str = "train", augment: bool = False, indices: Optional[Sequence[int]] = None,
               mtan_classes: int = 19, seed: int = 0) -> DenseDataset:
    """Cityscapes ``split`` ('train' or 'val' = test) from either layout (logged)."""
    layout = detect_layout(root)
    if mtan_classes not in (7, 19):
        raise ValueError(f"the MTAN release has 7- or 19-class labels, not {mtan_classes}")
    targets = LAYOUTS[layout]
    if layout == "parts":
        found = conventions(root)
        if not found["recorded"]:
            _log_once(logging.WARNING, "%s has no conventions.json: assuming the legacy conventions (part_seg −1 "
                      "void, disparity in pixels of the stored image, 0 invalid); prepare it again for Auto-λ's", root)
        targets = tuple(Target(t.name, t.folder, t.kind, t.n_classes, found["disparity_invalid"])
                        if t.kind == "disparity" else t for t in targets)
    if layout == "mtan":
        targets = tuple(Target(t.name, t.folder.format(n=mtan_classes), t.kind, mtan_classes)
                        if t.kind == "label" else t for t in targets)
    _log_once(logging.INFO, "Cityscapes at %s: %s layout (tasks: %s)", root, layout,
              ", ".join(t.name for t in targets[1:]))
    return DenseDataset(root, split, targets, augment=augment, indices=indices, how_to_get=HOW_TO_GET, seed=seed)
