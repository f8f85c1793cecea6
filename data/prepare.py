"""Build datasets that have no shared preprocessed release.

    python -m data.prepare cityscapes --raw RAW --out ROOT [--workers N]

reads the official Cityscapes downloads under RAW,

    leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png           RGB, 1024×2048
    gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png            label ids (uint8)
    disparity/{train,val}/<city>/<stem>_disparity.png               16-bit disparity
    gtFinePanopticParts/{train,val}/<city>/<stem>_gtFinePanopticParts.tif   panoptic-parts ids

and writes ``ROOT/{train,val}/{image,seg,part_seg,disp}/{i}.npy`` at 128×256 (i in sorted file order; the
stems are listed in ``ROOT/{split}/files.txt``):

- image: 128×256×3 float32 in [0, 1], bilinear (antialiased) downscaling;
- seg: the 19 Cityscapes train ids, −1 for void, nearest-neighbour (float32, as the MTAN release stores labels);
- part_seg: 10 classes decoded from the panoptic-parts ids (our own decoding, no extra dependency):
  an id of ≤ 2 digits is a semantic id, 5 digits sid·1000 + instance, 7 digits sid·10⁵ + instance·100 + part.
  0 = background (any non-void pixel outside a part-annotated class), 1–4 = human parts (torso, head, arms,
  legs) of person and rider, 5–9 = vehicle parts (windows, wheels, lights, license plate, chassis) of car,
  truck and bus; −1 = void or an unlabelled part (part id 0) of those classes;
- disp: 128×256×1 float32 disparity (p − 1)/256 from the 16-bit value p (p = 0 invalid → 0), nearest-neighbour,
  divided by the downscaling factor 8 so that it is in pixels of the stored 256-pixel-wide image (as Auto-λ).

Writes are atomic and finished items are skipped, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import List, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from .common import DatasetNotFoundError, MalformedDatasetError
from .cityscapes import HOW_TO_GET, SHAPE

log = logging.getLogger(__name__)

# Cityscapes label id → train id (19 classes); every other id is void (−1)
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
HUMAN_IDS = (24, 25)  # person, rider: parts 1..4
VEHICLE_IDS = (26, 27, 28)  # car, truck, bus: parts 1..5
RAW_FOLDERS = {"image": ("leftImg8bit", "_leftImg8bit.png"), "labels": ("gtFine", "_gtFine_labelIds.png"),
               "disparity": ("disparity", "_disparity.png"),
               "parts": ("gtFinePanopticParts", "_gtFinePanopticParts.tif")}
OUTPUTS = ("image", "seg", "part_seg", "disp")


def train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes label ids to the 19 train ids, −1 for void."""
    lookup = np.full(256, -1, dtype=np.int64)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        lookup[label_id] = train_id
    return lookup[label_ids.astype(np.int64)]


def part_classes(panoptic_parts: np.ndarray) -> np.ndarray:
    """Decode panoptic-parts ids into the 10 part classes (see the module docstring)."""
    ids = panoptic_parts.astype(np.int64)
    semantic = np.where(ids >= 100000, ids // 100000, np.where(ids >= 1000, ids // 1000, ids))
    part = np.where(ids >= 100000, ids % 100, 0)
    out = np.where(train_ids(np.clip(semantic, 0, 255)) >= 0, 0, -1)
    human = np.isin(semantic, HUMAN_IDS)
    vehicle = np.isin(semantic, VEHICLE_IDS)
    out = np.where(human, np.where((part >= 1) & (part <= 4), part, -1), out)
    out = np.where(vehicle, np.where((part >= 1) & (part <= 5), part + 4, -1), out)
    return out


def disparity_from_png(values: np.ndarray, downscale: float) -> np.ndarray:
    """(p − 1)/256 for p > 0, 0 for p = 0 (invalid), divided by the downscaling factor."""
    values = values.astype(np.float64)
    return np.where(values > 0, (values - 1.0) / 256.0, 0.0) / downscale


def nearest_resize(array: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize that samples the source pixel under each target pixel's centre."""
    rows = ((np.arange(shape[0]) + 0.5) * array.shape[0] / shape[0]).astype(np.int64)
    cols = ((np.arange(shape[1]) + 0.5) * array.shape[1] / shape[1]).astype(np.int64)
    return array[rows][:, cols]


def raw_path(raw: str, split: str, kind: str, city: str, stem: str) -> str:
    folder, suffix = RAW_FOLDERS[kind]
    return os.path.join(raw, folder, split, city, stem + suffix)


def list_stems(raw: str, split: str) -> List[Tuple[str, str]]:
    """(city, stem) of every left image of ``split``, sorted; checks the other three files exist."""
    image_root = os.path.join(raw, "leftImg8bit", split)
    if not os.path.isdir(image_root):
        raise DatasetNotFoundError(f"raw Cityscapes images not found: expected {image_root!r}.\n{HOW_TO_GET}")
    stems = []
    for city in sorted(os.listdir(image_root)):
        for name in sorted(os.listdir(os.path.join(image_root, city))):
            if name.endswith(RAW_FOLDERS["image"][1]):
                stems.append((city, name[: -len(RAW_FOLDERS["image"][1])]))
    if not stems:
        raise DatasetNotFoundError(f"no *_leftImg8bit.png files under {image_root!r}.\n{HOW_TO_GET}")
    for kind in ("labels", "disparity", "parts"):
        missing = [raw_path(raw, split, kind, c, s) for c, s in stems if not os.path.exists(raw_path(raw, split, kind, c, s))]
        if missing:
            raise DatasetNotFoundError(f"{len(missing)} raw {kind} file(s) missing for the {split!r} split, first "
                                       f"{missing[0]!r}.\n{HOW_TO_GET}")
    return stems


def save_atomic(path: str, array: np.ndarray) -> None:
    tmp = path + ".tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def prepare_item(job: Tuple[str, str, str, str, str, int]) -> None:
    """Convert one raw item into its four .npy files (skipped when all four exist)."""
    raw, out, split, city, stem, index = job
    targets = [os.path.join(out, split, name, f"{index}.npy") for name in OUTPUTS]
    if all(os.path.exists(t) for t in targets):
        return
    height, width = SHAPE
    with Image.open(raw_path(raw, split, "image", city, stem)) as img:
        full_width, full_height = img.size
        image = np.asarray(img.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
    arrays = {kind: np.asarray(Image.open(raw_path(raw, split, kind, city, stem)))
              for kind in ("labels", "disparity", "parts")}
    for kind, array in arrays.items():
        if array.shape[:2] != (full_height, full_width):
            raise MalformedDatasetError(f"{raw_path(raw, split, kind, city, stem)!r} is {array.shape[:2]}, but its "
                                        f"image is {(full_height, full_width)}: the sizes must match")
    labels, disparity, parts = arrays["labels"], arrays["disparity"], arrays["parts"]
    seg = nearest_resize(train_ids(labels), SHAPE).astype(np.float32)
    part_seg = nearest_resize(part_classes(parts), SHAPE).astype(np.float32)
    disp = nearest_resize(disparity_from_png(disparity, full_width / width), SHAPE).astype(np.float32)[..., None]
    for path, array in zip(targets, (image, seg, part_seg, disp)):
        save_atomic(path, array)


def prepare_cityscapes(raw: str, out: str, workers: int = 1, splits=("train", "val")) -> None:
    """Build the 128×256 parts layout under ``out`` from the official downloads under ``raw``."""
    if os.path.exists(os.path.join(raw, "SYNTHETIC")):  # keep the synthetic marker (see data.synthetic)
        os.makedirs(out, exist_ok=True)
        shutil.copy(os.path.join(raw, "SYNTHETIC"), os.path.join(out, "SYNTHETIC"))
    for split in splits:
        stems = list_stems(raw, split)
        for name in OUTPUTS:
            os.makedirs(os.path.join(out, split, name), exist_ok=True)
        with open(os.path.join(out, split, "files.txt"), "w") as listing:
            listing.writelines(f"{i} {city}/{stem}\n" for i, (city, stem) in enumerate(stems))
        jobs = [(raw, out, split, city, stem, i) for i, (city, stem) in enumerate(stems)]
        progress = tqdm(total=len(jobs), desc=f"cityscapes {split}", unit="img")
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(prepare_item, jobs, chunksize=8):
                    progress.update()
        else:
            for job in jobs:
                prepare_item(job)
                progress.update()
        progress.close()
        log.info("wrote %d %s items under %s", len(jobs), split, os.path.join(out, split))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["cityscapes"])
    parser.add_argument("--raw", required=True, help="folder holding leftImg8bit/, gtFine/, disparity/, "
                                                     "gtFinePanopticParts/")
    parser.add_argument("--out", required=True, help="output root (ROOT/{train,val}/...)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        prepare_cityscapes(args.raw, args.out, args.workers)
    except (DatasetNotFoundError, MalformedDatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
