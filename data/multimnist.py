"""Multi-MNIST: two overlapping digits per image, task 1 = the top-left digit, task 2 = the bottom-right one.

Construction (Sener & Koltun 2018, isl-org/MultiObjectiveOptimization ``multi_task/loaders/multi_mnist_loader.py``,
whose data Pareto MTL, Lin et al. 2019, Xi-L/ParetoMTL ``multiMNIST/``, and the paper reuse at 120K / 20K):
a 36×36 black canvas, the first digit's 28×28 image with its top-left corner at (u, v), the second's at
(8 − u′, 8 − v′), u, v, u′, v′ drawn uniformly from {0, …, ``shift``} (``shift`` = 2: the two corners lie 4 to 8
pixels apart, around Sener & Koltun's fixed 6), overlapping pixels taking the maximum of the two digits (as
Sener & Koltun), the canvas then resized to 28×28 (bilinear with antialiasing; Sener & Koltun resize with
nearest-neighbour). The two digits of a pair are different images drawn uniformly from the same pool.

Sources: training (and validation) pairs from MNIST's 60K training digits, test pairs from its 10K test digits
(``source='standard'``). ``source='test-digits'`` is the offline variant for machines holding only the 10K test
digits (../shared/datasets/mnist/raw): a seeded 8K of them form the training pool, the other 2K the test pool,
so no digit image is in both; the pair counts stay as asked. ``OFFLINE_NOTE`` says so in configs and captions.

The pairs are built once per (source, counts, shift, seed) and cached under ``cache_root/<key>/``::

    meta.json            construction parameters and counts
    {split}_images.npy   uint8 N×28×28 (split = train, test; the validation pairs are the training pairs'
    {split}_labels.npy   int64 N×2 (top-left digit, bottom-right digit)        seeded last ``n_val``)
    {split}_sources.npy  int64 N×2: indices of the two digits in their MNIST split
    {split}_corners.npy  int64 N×4: (row, column) of the first digit's corner, then of the second's, on the
                         36×36 canvas
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .common import DatasetNotFoundError, MalformedDatasetError
from .mnist import HOW_TO_GET, available_splits, download_mnist, is_synthetic_mnist, read_mnist

log = logging.getLogger("auxinash")

CANVAS, DIGIT, OUT = 36, 28, 28
SOURCES = ("auto", "standard", "test-digits")
OFFLINE_NOTE = "offline variant: pairs from the 10K MNIST test digits"
OFFLINE_TRAIN_DIGITS = 8000  # of the 10K test digits, the training pool; the other 2K form the test pool
SYNTHETIC_NOTE = "SYNTHETIC digits (data.synthetic.write_mnist), not MNIST; "  # prefixes the note of their pairs
MEAN, STD = 0.1307, 0.3081  # MNIST normalisation (Sener & Koltun's loader)


@dataclass(frozen=True)
class PairSpec:
    n_train: int = 120_000  # including the n_val validation pairs (the paper: 12K of 120K)
    n_val: int = 12_000
    n_test: int = 20_000
    shift: int = 2
    seed: int = 0  # the data's own seed: every run of a sweep sees the same pairs

    def check(self) -> None:
        if not 0 <= self.shift <= (CANVAS - DIGIT) // 2:
            raise ValueError(f"shift must be in [0, {(CANVAS - DIGIT) // 2}], got {self.shift}")
        if self.n_train <= self.n_val or self.n_val < 1 or self.n_test < 1:
            raise ValueError(f"need n_train > n_val >= 1 and n_test >= 1, got n_train={self.n_train}, "
                             f"n_val={self.n_val}, n_test={self.n_test}")


def split_test_digits(n_digits: int, seed: int, n_train_pool: int = OFFLINE_TRAIN_DIGITS
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (training pool, test pool) indices into the 10K test digits (the offline variant)."""
    if not 0 < n_train_pool < n_digits:
        raise ValueError(f"cannot take a training pool of {n_train_pool} from {n_digits} digits")
    order = np.random.default_rng([seed, 8]).permutation(n_digits)
    return np.sort(order[:n_train_pool]), np.sort(order[n_train_pool:])


def draw_pairs(pool: np.ndarray, n: int, shift: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of different digits from ``pool`` (indices) and their corners (N×4), see the module doc."""
    if len(pool) < 2:
        raise ValueError(f"a pool of {len(pool)} digit(s) cannot make pairs of two different digits")
    first = rng.integers(len(pool), size=n)
    second = rng.integers(len(pool) - 1, size=n)
    second = second + (second >= first)  # uniform over the pool without the first digit
    offsets = rng.integers(shift + 1, size=(n, 4))
    corners = np.stack([offsets[:, 0], offsets[:, 1], CANVAS - DIGIT - offsets[:, 2], CANVAS - DIGIT - offsets[:, 3]],
                       axis=1)
    return np.stack([pool[first], pool[second]], axis=1), corners


def place(digits: np.ndarray, sources: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """The 36×36 uint8 canvases of the pairs ``sources`` (N×2 indices into ``digits``) with their digits' top-left
    corners at ``corners`` (N×4: row, column of the first digit, then of the second); overlaps take the max."""
    canvas = np.zeros((len(sources), CANVAS, CANVAS), dtype=np.uint8)
    rows = np.arange(len(sources))[:, None, None]
    for k in range(2):
        r = corners[:, 2 * k, None, None] + np.arange(DIGIT)[None, :, None]
        c = corners[:, 2 * k + 1, None, None] + np.arange(DIGIT)[None, None, :]
        canvas[rows, r, c] = np.maximum(canvas[rows, r, c], digits[sources[:, k]])
    return canvas


def resize(canvas: np.ndarray) -> np.ndarray:
    """36×36 uint8 canvases → 28×28 uint8 images (bilinear, antialiased)."""
    resized = F.interpolate(torch.from_numpy(canvas).float()[:, None], size=(OUT, OUT), mode="bilinear",
                            align_corners=False, antialias=True)[:, 0]
    return resized.round().clamp(0, 255).to(torch.uint8).numpy()


def compose(digits: np.ndarray, sources: np.ndarray, corners: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The 28×28 uint8 images of the pairs: ``place`` then ``resize``, in chunks."""
    out = np.empty((len(sources), OUT, OUT), dtype=np.uint8)
    for start in range(0, len(sources), chunk):
        end = start + chunk
        out[start:end] = resize(place(digits, sources[start:end], corners[start:end]))
    return out


def resolve_source(mnist_root: str, source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    present = available_splits(mnist_root)
    if source == "auto":
        if present["train"] and present["test"]:
            return "standard"
        if present["test"]:
            log.warning("MNIST's training digits are absent under %s: building the %s", mnist_root, OFFLINE_NOTE)
            return "test-digits"
        raise DatasetNotFoundError(f"no MNIST under {mnist_root!r}.\n{HOW_TO_GET}")
    return source


def cache_key(source: str, spec: PairSpec, synthetic: bool = False) -> str:
    """The cache folder's name; pairs of synthetic digits (``data.synthetic``) get their own, so that they are never
    read back for the real MNIST at the same counts."""
    key = f"{source}_train{spec.n_train}_val{spec.n_val}_test{spec.n_test}_shift{spec.shift}_seed{spec.seed}"
    return key + ("_synthetic" if synthetic else "")


def build_pairs(mnist_root: str, source: str, spec: PairSpec) -> Dict[str, np.ndarray]:
    """Build every array of the cache (see the module doc) from the MNIST files under ``mnist_root``."""
    spec.check()
    rng = np.random.default_rng([spec.seed, 36])
    test_images, test_labels = read_mnist(mnist_root, "test")
    if source == "standard":
        train_images, train_labels = read_mnist(mnist_root, "train")
        train_pool, test_pool = np.arange(len(train_images)), np.arange(len(test_images))
    elif source == "test-digits":
        train_images, train_labels = test_images, test_labels
        train_pool, test_pool = split_test_digits(len(test_images), spec.seed)
    else:
        raise ValueError(f"source must be 'standard' or 'test-digits', got {source!r}")
    arrays = {}
    for split, images, labels, pool, n in (("train", train_images, train_labels, train_pool, spec.n_train),
                                           ("test", test_images, test_labels, test_pool, spec.n_test)):
        sources, corners = draw_pairs(pool, n, spec.shift, rng)
        arrays[f"{split}_images"] = compose(images, sources, corners)
        arrays[f"{split}_labels"] = labels[sources].astype(np.int64)
        arrays[f"{split}_sources"] = sources.astype(np.int64)
        arrays[f"{split}_corners"] = corners.astype(np.int64)
    return arrays


def load_or_build(mnist_root: str, cache_root: str, source: str = "auto", spec: PairSpec = PairSpec(),
                  download: bool = False) -> Tuple[Dict[str, np.ndarray], Dict[str, object]]:
    """The cached pairs (built and written on first use) and their meta.json."""
    if download and not available_splits(mnist_root)["train"]:
        download_mnist(mnist_root)
    source = resolve_source(mnist_root, source)
    synthetic = is_synthetic_mnist(mnist_root)
    folder = os.path.join(cache_root, cache_key(source, spec, synthetic))
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.exists(meta_path):
        log.info("building Multi-MNIST pairs into %s", folder)
        arrays = build_pairs(mnist_root, source, spec)
        os.makedirs(folder, exist_ok=True)
        for name, array in arrays.items():
            tmp = os.path.join(folder, f".{name}.tmp.npy")
            np.save(tmp, array)
            os.replace(tmp, os.path.join(folder, f"{name}.npy"))
        meta = {"source": source, **asdict(spec), "canvas": CANVAS, "size": OUT,
                "mnist_root": os.path.abspath(mnist_root), "synthetic": synthetic,
                "note": (SYNTHETIC_NOTE if synthetic else "") + (
                    OFFLINE_NOTE if source == "test-digits" else "standard: training pairs from the 60K "
                    "training digits, test pairs from the 10K test digits")}
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f, indent=2)
        os.replace(meta_path + ".tmp", meta_path)
    return read_cache(folder)


def read_cache(folder: str) -> Tuple[Dict[str, np.ndarray], Dict[str, object]]:
    """Read and check a cache folder written by ``load_or_build``."""
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.exists(meta_path):
        raise DatasetNotFoundError(f"no Multi-MNIST cache in {folder!r} (meta.json missing): it is built by "
                                   "`python experiments/train_multimnist.py` or `python -m data.check multimnist`")
    with open(meta_path) as f:
        meta = json.load(f)
    arrays = {}
    for split, n in (("train", meta["n_train"]), ("test", meta["n_test"])):
        for name, shape, kind in (("images", (n, OUT, OUT), "u"), ("labels", (n, 2), "i"), ("sources", (n, 2), "i"),
                                  ("corners", (n, 4), "i")):
            path = os.path.join(folder, f"{split}_{name}.npy")
            try:
                array = np.load(path, allow_pickle=False)
            except Exception as error:
                raise MalformedDatasetError(f"cannot read {path!r}: {error}; delete {folder!r} to rebuild it") from None
            if array.shape != shape or array.dtype.kind != kind:
                raise MalformedDatasetError(f"{path!r} has shape {array.shape} dtype {array.dtype}, expected "
                                            f"{shape} ({'uint8' if kind == 'u' else 'int64'}); delete {folder!r} "
                                            "to rebuild it")
            arrays[f"{split}_{name}"] = array
        labels = arrays[f"{split}_labels"]
        if labels.min() < 0 or labels.max() > 9:
            raise MalformedDatasetError(f"{folder!r}: {split} labels outside 0..9; delete the folder to rebuild it")
    return arrays, meta


class MultiMnist:
    """The pairs as normalised float tensors on ``device``: train / val / test splits, seeded batches.

    The validation pairs are a seeded ``n_val`` of the training pairs (the paper holds out 12K of 120K); they
    are never trained on. Meta-validation batches (AuxiNash with learned p, AuxiLearn) come from the training
    pairs, or from a held-out ``meta_val_size`` of them.
    """

    def __init__(self, mnist_root: str, cache_root: str, spec: PairSpec = PairSpec(), source: str = "auto",
                 device: torch.device | str = "cpu", seed: int = 0, download: bool = False,
                 meta_val_size: float = 0) -> None:
        from .common import meta_val_split
        arrays, self.meta = load_or_build(mnist_root, cache_root, source, spec, download)
        self.source = self.meta["source"]
        self.synthetic = is_synthetic_mnist(mnist_root)  # digits written by data.synthetic (SYNTHETIC marker)
        self.device = torch.device(device)
        order = np.random.default_rng([spec.seed, 12]).permutation(spec.n_train)
        train_index, val_index = np.sort(order[spec.n_val:]), np.sort(order[:spec.n_val])

        def tensors(images, labels):
            x = (torch.from_numpy(images).float().div_(255) - MEAN) / STD
            return {"image": x[:, None].to(self.device), "left": torch.from_numpy(labels[:, 0]).to(self.device),
                    "right": torch.from_numpy(labels[:, 1]).to(self.device)}

        self.train = tensors(arrays["train_images"][train_index], arrays["train_labels"][train_index])
        self.val = tensors(arrays["train_images"][val_index], arrays["train_labels"][val_index])
        self.test = tensors(arrays["test_images"], arrays["test_labels"])
        n = len(train_index)
        self.train_index, self.meta_val_index = meta_val_split(n, meta_val_size, seed)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + 1)

    @property
    def note(self) -> str:
        return str(self.meta["note"])

    def split(self, name: str) -> Dict[str, torch.Tensor]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[Dict[str, torch.Tensor]]:
        """One epoch of shuffled training batches; the order is a function of (seed, epoch) alone."""
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        index = torch.from_numpy(self.train_index)
        order = index[torch.randperm(len(index), generator=generator)].to(self.device)
        for start in range(0, len(order), batch_size):
            picks = order[start:start + batch_size]
            yield {k: v[picks] for k, v in self.train.items()}

    def meta_val_batch(self, batch_size: int) -> Dict[str, torch.Tensor]:
        picks = torch.from_numpy(self.meta_val_index)[
            torch.randint(len(self.meta_val_index), (batch_size,), generator=self.generator)].to(self.device)
        return {k: v[picks] for k, v in self.train.items()}

    def fresh_batch(self, items: str, batch_size: int) -> Dict[str, torch.Tensor]:
        """``batch_size`` distinct pairs (the first batch of a fresh shuffle) of the training pairs (``"train"``)
        or of the meta-validation pairs (``"meta"``), drawn with the meta generator (not the training stream's)."""
        if items not in ("train", "meta"):
            raise ValueError(f"items must be 'train' or 'meta', got {items!r}")
        index = torch.from_numpy(self.train_index if items == "train" else self.meta_val_index)
        picks = index[torch.randperm(len(index), generator=self.generator)[:batch_size]].to(self.device)
        return {k: v[picks] for k, v in self.train.items()}

    def eval_batches(self, split: str, batch_size: int = 1024) -> Iterator[Dict[str, torch.Tensor]]:
        data = self.split(split)
        for start in range(0, len(data["image"]), batch_size):
            yield {k: v[start:start + batch_size] for k, v in data.items()}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
