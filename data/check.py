"""Validate a dataset on disk and summarise it.

    python -m data.check nyuv2 --root ROOT
    python -m data.check cityscapes --root ROOT
    python -m data.check cifar10 --root ROOT
    python -m data.check multimnist --root MNIST_ROOT [--cache-root DIR]   (builds the pair cache if absent)
    python -m data.check speech_commands --root ROOT      (the digit words: per-split, per-word counts, durations)

Reads every file through the same loaders the training scripts use, checks shapes, dtypes and value ranges
(finite values, images in [0, 1], labels in [−1, C−1], depth / disparity ≥ 0 or the invalid marker, normals unit
length or zero; Cityscapes part_seg without −1 where the root's conventions.json says Auto-λ's background
convention) and prints
counts, shapes, value ranges and the class histogram, and names the items whose target has no valid pixel at all
(reported, not rejected: such a batch trains that task with loss 0). Exits with status 1 and the error on a
malformed dataset.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict

import numpy as np
from tqdm import tqdm

from . import cifar, cityscapes, nyuv2
from .common import DatasetNotFoundError, MalformedDatasetError
from .dense import DenseDataset


def summarise_dense(dataset: DenseDataset, expected_count: int, no_ignore: tuple = ()) -> Dict[str, str]:
    """Counts, ranges and histograms of every item; ``no_ignore`` names label targets that may hold no −1."""
    lines = {}
    stats: Dict[str, list] = {}
    histograms: Dict[str, np.ndarray] = {}
    without_valid: Dict[str, list] = {}  # items of a target with no valid entry: reported, not rejected
    for index in tqdm(range(dataset.size), desc=f"{dataset.split}", unit="item", leave=False):
        item = dataset.load(index)
        for target in dataset.targets:
            key = "image" if target.kind == "image" else target.name
            value = item[key].numpy()
            path = dataset.path(target, index)
            if target.kind == "label":
                if key in no_ignore and (value < 0).any():
                    raise MalformedDatasetError(f"{path!r}: {int((value < 0).sum())} pixels of {key} are −1, but "
                                                "the root's conventions.json says background 0 with no ignore label "
                                                "(prepare it again with `python -m data.prepare cityscapes`)")
                if not (value >= 0).any():
                    without_valid.setdefault(key, []).append(path)
                counts = np.bincount(value[value >= 0].ravel(), minlength=target.n_classes)
                histograms[key] = histograms.get(key, 0) + counts
                stats.setdefault(key, []).append(((value < 0).mean(),))
                continue
            if not np.isfinite(value).all():
                raise MalformedDatasetError(f"{path!r}: {int((~np.isfinite(value)).sum())} non-finite {target.kind} "
                                            "values (NaN or inf); mark invalid pixels with 0 instead")
            if target.kind == "image" and (value.min() < 0 or value.max() > 1):
                raise MalformedDatasetError(f"{path!r}: image values in [{value.min():.3g}, {value.max():.3g}], "
                                            "expected [0, 1]")
            if target.kind in ("depth", "disparity") and (value[value != target.invalid] < 0).any():
                raise MalformedDatasetError(f"{path!r}: negative {target.kind} {value.min():.3g} "
                                            f"({target.invalid:g} marks invalid)")
            if target.kind == "normal":
                norms = np.linalg.norm(value, axis=0)
                valid = norms > 0
                if valid.any() and np.abs(norms[valid] - 1).max() > 1e-2:
                    raise MalformedDatasetError(f"{path!r}: normals of length {norms[valid].min():.3g}.."
                                                f"{norms[valid].max():.3g}, expected unit vectors (zero = invalid)")
            invalid = target.invalid if target.kind in ("depth", "disparity") else 0
            valid = value[value != invalid] if target.kind != "image" else value
            if target.kind != "image" and not valid.size:
                without_valid.setdefault(key, []).append(path)
            stats.setdefault(key, []).append((valid.min() if valid.size else 0, valid.max() if valid.size else 0,
                                              (value == invalid).mean()))
    note = "" if dataset.size == expected_count else f" (the release has {expected_count})"
    lines["items"] = f"{dataset.size}{note}, each {tuple(dataset.shape)}"
    for key, rows in stats.items():
        if key in histograms:
            total = histograms[key].sum()
            shares = " ".join(f"{c}:{100 * n / max(total, 1):.1f}%" for c, n in enumerate(histograms[key]))
            lines[key] = f"ignored {100 * np.mean([r[0] for r in rows]):.1f}%; classes {shares}"
        else:
            low, high = min(r[0] for r in rows), max(r[1] for r in rows)
            invalid = 100 * np.mean([r[2] for r in rows])
            lines[key] = f"range [{low:.4g}, {high:.4g}]" + ("" if key == "image" else f", invalid {invalid:.1f}%")
        if key in without_valid:
            paths = without_valid[key]
            shown = ", ".join(repr(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            lines[key] += (f"; {len(paths)} item(s) without any valid {key} pixel (kept: in a batch of their own they "
                           f"train {key} with loss 0): {shown}")
    return lines


def check_multimnist(root: str, cache_root: str, counts=None) -> None:
    """Build (or read) the Multi-MNIST pair cache (the paper's counts, or ``counts`` = (train, val, test)) and
    check its invariants."""
    from .multimnist import CANVAS, DIGIT, PairSpec, load_or_build
    spec = PairSpec() if counts is None else PairSpec(n_train=counts[0], n_val=counts[1], n_test=counts[2])
    arrays, meta = load_or_build(root, cache_root, spec=spec)
    print(f"source: {meta['source']} ({meta['note']}); shift {meta['shift']}, seed {meta['seed']}")
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        sources, corners = arrays[f"{split}_sources"], arrays[f"{split}_corners"]
        if np.any(sources[:, 0] == sources[:, 1]):
            raise MalformedDatasetError(f"{split}: a pair repeats one digit image; delete the cache to rebuild it")
        if corners.min() < 0 or corners.max() > CANVAS - DIGIT:
            raise MalformedDatasetError(f"{split}: digit corners outside the {CANVAS}×{CANVAS} canvas")
        histograms = [" ".join(str(n) for n in np.bincount(labels[:, k], minlength=10)) for k in range(2)]
        print(f"[{split}] {len(images)} pairs {images.shape[1:]} {images.dtype}, pixel range [{images.min()}, "
              f"{images.max()}]; top-left digits {histograms[0]}; bottom-right digits {histograms[1]}")
    if meta["source"] == "test-digits":
        shared = np.intersect1d(arrays["train_sources"], arrays["test_sources"])
        if shared.size:
            raise MalformedDatasetError(f"{shared.size} digit images appear in both training and test pairs")
        print(f"training pairs use {np.unique(arrays['train_sources']).size} digits, test pairs "
              f"{np.unique(arrays['test_sources']).size}; none shared")


def check_speech_commands(root: str) -> None:
    """Read every digit clip of Speech Commands; print per split and word the counts, the sample rate and the
    durations, and whether the validation / test counts are v0.02's (3,643 / 4,107); name every malformed file."""
    from .speech_commands import LISTS, SAMPLE_RATE, V002_COUNTS, WORDS, read_layout, read_wav
    layout = read_layout(root)
    bad = []
    for split, clips in layout.items():
        lengths = {w: [] for w in WORDS}
        for relative, word in tqdm(clips, desc=split, unit="clip", leave=False):
            try:
                lengths[word].append(len(read_wav(os.path.join(root, relative))) / SAMPLE_RATE)
            except MalformedDatasetError as error:
                bad.append(str(error))
        counts = " ".join(f"{w}:{len(lengths[w])}" for w in WORDS)
        durations = [d for w in WORDS for d in lengths[w]]
        expected = ""
        if split in V002_COUNTS:
            expected = (f" = v0.02's {V002_COUNTS[split]:,} ({LISTS[split]})" if len(clips) == V002_COUNTS[split]
                        else f" (v0.02's {LISTS[split]} has {V002_COUNTS[split]:,}: not v0.02?)")
        print(f"[{split}] {len(clips)} clips{expected}; per word {counts}")
        if durations:
            print(f"  sample rate {SAMPLE_RATE} Hz mono integer PCM (every readable clip); duration "
                  f"{min(durations):.3f}..{max(durations):.3f} s, mean {np.mean(durations):.3f} s, "
                  f"{sum(d < 1 for d in durations)} shorter than 1 s (zero-padded)")
    if bad:
        raise MalformedDatasetError(f"{len(bad)} malformed WAV file(s):\n  " + "\n  ".join(bad))


def check(name: str, root: str, cache_root: str = "data_cache/multimnist", counts=None) -> None:
    if name == "nyuv2":
        for split, expected in nyuv2.SPLITS.items():
            print(f"[{split}]")
            for key, line in summarise_dense(nyuv2.load_nyuv2(root, split), expected).items():
                print(f"  {key}: {line}")
    elif name == "cityscapes":
        print(f"layout: {cityscapes.detect_layout(root)} (tasks: {', '.join(cityscapes.tasks_of(root))})")
        found = cityscapes.conventions(root)
        print(f"conventions: part_seg void → {found['part_seg_void']}, disparity {found['disparity']} (invalid = "
              f"{found['disparity_invalid']:g}){'' if found['recorded'] else ' (no conventions.json)'}")
        no_ignore = ("part_segmentation",) if found["part_seg_void"] == "background" else ()
        for split, expected in cityscapes.SPLITS.items():
            print(f"[{split}]")
            for key, line in summarise_dense(cityscapes.load_cityscapes(root, split), expected, no_ignore).items():
                print(f"  {key}: {line}")
    elif name == "multimnist":
        check_multimnist(root, cache_root, counts)
    elif name == "speech_commands":
        check_speech_commands(root)
    else:
        arrays = cifar.read_cifar10(root)
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            histogram = " ".join(f"{c}:{n}" for c, n in enumerate(np.bincount(labels, minlength=10)))
            print(f"[{split}] {len(labels)} images {images.shape[1:]} {images.dtype}, pixel range "
                  f"[{images.min()}, {images.max()}]; classes {histogram}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["nyuv2", "cityscapes", "cifar10", "multimnist", "speech_commands"])
    parser.add_argument("--root", required=True, help="the dataset's root folder (multimnist: MNIST's)")
    parser.add_argument("--cache-root", default="data_cache/multimnist", help="multimnist: the pair cache")
    parser.add_argument("--pairs", type=int, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
                        help="multimnist: pair counts (default: the paper's 120000 12000 20000)")
    args = parser.parse_args(argv)
    try:
        check(args.name, args.root, args.cache_root, args.pairs)
    except (DatasetNotFoundError, MalformedDatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
