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
  1–4 = human parts (torso, head, arms, legs) of person (24) and rider (25), 5–9 = vehicle parts (windows,
  wheels, lights, license plate, chassis) of car (26), truck (27) and bus (28); **every other pixel is
  background 0**: void pixels, unlabelled parts (part id 0) of those five classes and all other classes. There
  is no ignore label (Auto-λ ``create_dataset.py``, ``CityScapes.map_part_seg_label``: ``np.zeros_like``,
  then the classes 1–9 from sid·100 + pid). ``--part-seg-void ignore`` writes the earlier convention instead:
  −1 for void pixels and unlabelled parts of the five part classes, 0 for the other non-void classes;
- disp: 128×256×1 float32 disparity, nearest-neighbour, from the 16-bit value p: −1 where p = 0 (invalid),
  else (p − 1)/(256·4) (Auto-λ ``create_dataset.py``, ``CityScapes.map_disparity``), i.e. in pixels of a
  512-pixel-wide image (Auto-λ's stored resolution), kept so at our 128×256; p = 1 gives 0.0, a valid value
  (sky, infinitely far). ``--disparity legacy`` writes the earlier unit instead: (p − 1)/256 divided by the
  downscaling factor (pixels of the stored 256-pixel-wide image), 0 for invalid.

The two conventions are recorded in ``ROOT/conventions.json``, which the loaders read (a root without it is
taken to hold the legacy conventions, as written before the file existed).

Writes are atomic and finished items are skipped, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
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
from .cityscapes import CONVENTIONS_FILE, HOW_TO_GET, SHAPE, conventions_record, read_conventions

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
PART_SEG_VOID = ("background", "ignore")  # Auto-λ's (default), the earlier one
DISPARITY = ("auto-lambda", "legacy")  # (p − 1)/1024 with −1 invalid (default); (p − 1)/256/downscale, 0 invalid


def train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes label ids to the 19 train ids, −1 for void."""
    lookup = np.full(256, -1, dtype=np.int64)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        lookup[label_id] = train_id
    return lookup[label_ids.astype(np.int64)]


def part_classes(panoptic_parts: np.ndarray, void: str = "background") -> np.ndarray:
    """Decode panoptic-parts ids into the 10 part classes (see the module docstring).

    ``void="background"`` (Auto-λ ``map_part_seg_label``): only sid·100 + pid ∈ {2401..2404, 2501..2504} (1–4)
    and {2601..2605, 2701..2705, 2801..2805} (5–9) are parts, every other pixel is 0. ``void="ignore"``: the
    earlier convention, −1 for void pixels and unlabelled parts of person/rider/car/truck/bus."""
    if void not in PART_SEG_VOID:
        raise ValueError(f"void must be one of {PART_SEG_VOID}, got {void!r}")
    ids = panoptic_parts.astype(np.int64)
    semantic = np.where(ids >= 100000, ids // 100000, np.where(ids >= 1000, ids // 1000, ids))
    part = np.where(ids >= 100000, ids % 100, 0)
    human = np.isin(semantic, HUMAN_IDS)
    vehicle = np.isin(semantic, VEHICLE_IDS)
    human_part = human & (part >= 1) & (part <= 4)
    vehicle_part = vehicle & (part >= 1) & (part <= 5)
    if void == "background":
        out = np.zeros_like(ids)
    else:
        out = np.where(train_ids(np.clip(semantic, 0, 255)) >= 0, 0, -1)
        out = np.where(human | vehicle, -1, out)
    out = np.where(human_part, part, out)
    return np.where(vehicle_part, part + 4, out)


def disparity_from_png(values: np.ndarray, downscale: float, unit: str = "auto-lambda") -> np.ndarray:
    """``unit="auto-lambda"``: −1 for p = 0 (invalid), else (p − 1)/(256·4) (Auto-λ ``map_disparity``;
    ``downscale`` unused). ``unit="legacy"``: (p − 1)/256 for p > 0, 0 for p = 0, divided by ``downscale``."""
    values = values.astype(np.float64)
    if unit == "auto-lambda":
        return np.where(values > 0, (values - 1.0) / (256.0 * 4.0), -1.0)
    if unit == "legacy":
        return np.where(values > 0, (values - 1.0) / 256.0, 0.0) / downscale
    raise ValueError(f"unit must be one of {DISPARITY}, got {unit!r}")


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


def prepare_item(job: Tuple[str, str, str, str, str, int, str, str]) -> None:
    """Convert one raw item into its four .npy files (skipped when all four exist)."""
    raw, out, split, city, stem, index, part_seg_void, disparity_unit = job
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
    part_seg = nearest_resize(part_classes(parts, part_seg_void), SHAPE).astype(np.float32)
    disp = nearest_resize(disparity_from_png(disparity, full_width / width, disparity_unit),
                          SHAPE).astype(np.float32)[..., None]
    for path, array in zip(targets, (image, seg, part_seg, disp)):
        save_atomic(path, array)


def prepare_cityscapes(raw: str, out: str, workers: int = 1, splits=("train", "val"),
                       part_seg_void: str = "background", disparity: str = "auto-lambda") -> None:
    """Build the 128×256 parts layout under ``out`` from the official downloads under ``raw``, with Auto-λ's
    conventions by default (see the module docstring for ``part_seg_void`` and ``disparity``)."""
    if part_seg_void not in PART_SEG_VOID or disparity not in DISPARITY:
        raise ValueError(f"part_seg_void must be one of {PART_SEG_VOID} and disparity one of {DISPARITY}, got "
                         f"{part_seg_void!r}, {disparity!r}")
    record = conventions_record(part_seg_void, disparity)
    existing = os.path.join(out, splits[0], "seg") if splits else out
    if os.path.isdir(existing) and os.listdir(existing):  # resuming: the root must hold the same conventions
        found = read_conventions(out)
        if {k: found[k] for k in record} != record:
            raise MalformedDatasetError(
                f"{out!r} was prepared with part_seg_void={found['part_seg_void']!r}, disparity="
                f"{found['disparity']!r}{'' if found['recorded'] else ' (no conventions.json: the legacy ones)'}; "
                f"asked for {part_seg_void!r}, {disparity!r}: pass the same flags to resume, or a new --out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, CONVENTIONS_FILE), "w") as f:
        json.dump(record, f, indent=1)
    if os.path.exists(os.path.join(raw, "SYNTHETIC")):  # keep the synthetic marker (see data.synthetic)
        os.makedirs(out, exist_ok=True)
        shutil.copy(os.path.join(raw, "SYNTHETIC"), os.path.join(out, "SYNTHETIC"))
    for split in splits:
        stems = list_stems(raw, split)
        for name in OUTPUTS:
            os.makedirs(os.path.join(out, split, name), exist_ok=True)
        with open(os.path.join(out, split, "files.txt"), "w") as listing:
            listing.writelines(f"{i} {city}/{stem}\n" for i, (city, stem) in enumerate(stems))
        jobs = [(raw, out, split, city, stem, i, part_seg_void, disparity) for i, (city, stem) in enumerate(stems)]
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
    parser.add_argument("--part-seg-void", choices=PART_SEG_VOID, default="background",
                        help="part_seg outside the 9 part classes: 'background' = 0 everywhere, no ignore label "
                             "(Auto-λ create_dataset.py map_part_seg_label, the paper's); 'ignore' = −1 for void "
                             "pixels and unlabelled parts (this repository's earlier convention)")
    parser.add_argument("--disparity", choices=DISPARITY, default="auto-lambda",
                        help="disparity unit: 'auto-lambda' = (p − 1)/1024, −1 invalid (Auto-λ create_dataset.py "
                             "map_disparity: pixels of a 512-wide image, the unit of the paper's disparity "
                             "errors); 'legacy' = (p − 1)/256/8 (pixels of the stored 256-wide image), 0 invalid")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        prepare_cityscapes(args.raw, args.out, args.workers, part_seg_void=args.part_seg_void,
                           disparity=args.disparity)
    except (DatasetNotFoundError, MalformedDatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
