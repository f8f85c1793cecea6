"""Shared pieces of the data module: errors that say what to do, file checks, splits and loaders."""
from __future__ import annotations

import os
import random
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class DatasetNotFoundError(FileNotFoundError):
    """A dataset (or one of its folders) is not where it was expected."""


class MalformedDatasetError(ValueError):
    """A dataset file exists but does not hold what the layout promises."""


def import_torchvision():
    """torchvision, which only ``--download`` of MNIST and CIFAR-10 needs: pyproject.toml's optional extra
    ``download``. Raises DatasetNotFoundError saying how to install it when it is absent."""
    try:
        import torchvision
    except ImportError:
        raise DatasetNotFoundError('--download needs torchvision: pip install -e ".[download]" (or pip install '
                                   'torchvision), or put the dataset files in place by hand') from None
    return torchvision


SYNTHETIC_MARKER = "SYNTHETIC"  # the file data/synthetic.py leaves in every root it writes


def is_synthetic(root: str) -> bool:
    """Roots written by ``data.synthetic`` carry a SYNTHETIC marker."""
    return os.path.exists(os.path.join(root, SYNTHETIC_MARKER))


def require_dir(path: str, what: str, how_to_get: str) -> None:
    """Raise DatasetNotFoundError naming ``path``, the expected ``what`` and ``how_to_get`` it."""
    if not os.path.isdir(path):
        raise DatasetNotFoundError(f"{what} not found: expected the folder {path!r}.\n{how_to_get}")


def indexed_files(folder: str) -> int:
    """Number N of files {0..N-1}.npy in ``folder``; raise if one index is missing or a name is foreign."""
    names = [n for n in os.listdir(folder) if not n.startswith(".")]
    indices = []
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext != ".npy" or not stem.isdigit():
            raise MalformedDatasetError(f"unexpected file {os.path.join(folder, name)!r}: the layout holds only "
                                        f"files named {{i}}.npy with i = 0, 1, ..., N-1")
        indices.append(int(stem))
    if not indices:
        raise MalformedDatasetError(f"{folder!r} holds no {{i}}.npy files")
    missing = sorted(set(range(max(indices) + 1)) - set(indices))
    if missing:
        raise MalformedDatasetError(f"{folder!r} lacks {len(missing)} index file(s), first "
                                    f"{os.path.join(folder, f'{missing[0]}.npy')!r}: indices must run 0..N-1")
    return len(indices)


def load_array(path: str, shape: Tuple[Optional[int], ...], kind: str) -> np.ndarray:
    """Load ``path`` and check its shape (None = any size) and dtype kind ('f' float, 'fi' float or int)."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MalformedDatasetError(f"missing file {path!r}") from None
    except Exception as error:  # a truncated or foreign file
        raise MalformedDatasetError(f"cannot read {path!r} as a .npy array: {error}") from None
    if array.ndim != len(shape) or any(s is not None and a != s for a, s in zip(array.shape, shape)):
        expected = "×".join("*" if s is None else str(s) for s in shape)
        raise MalformedDatasetError(f"{path!r} has shape {array.shape}, expected {expected}")
    if array.dtype.kind not in kind:
        raise MalformedDatasetError(f"{path!r} has dtype {array.dtype}, expected "
                                    f"{'a float' if kind == 'f' else 'a float or integer'} array")
    return array


def check_labels(labels: np.ndarray, n_classes: int, path: str) -> np.ndarray:
    """Integer labels in {-1, 0..n_classes-1} (-1 = ignore) as int64; raise naming ``path`` otherwise."""
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise MalformedDatasetError(f"{path!r} holds non-integer labels; expected integers in "
                                        f"[-1, {n_classes - 1}] (-1 = ignored)")
    labels = labels.astype(np.int64)
    low, high = int(labels.min()), int(labels.max())
    if low < -1 or high >= n_classes:
        raise MalformedDatasetError(f"{path!r} holds labels in [{low}, {high}], expected [-1, {n_classes - 1}] "
                                    f"(-1 = ignored, {n_classes} classes)")
    return labels


def meta_val_split(n: int, size: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (train, meta-validation) indices.

    ``size`` < 1 is a fraction, ≥ 1 a count; 0 holds nothing out: the meta-validation batches are then drawn
    from the training set itself (the paper's and the official code's default), and both arrays are range(n).
    """
    if size < 0:
        raise ValueError(f"meta-validation size must be >= 0, got {size}")
    count = int(round(size * n)) if size < 1 else int(size)
    if count == 0:
        everything = np.arange(n)
        return everything, everything
    if count >= n:
        raise ValueError(f"meta-validation size {size} leaves no training data out of {n} examples")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[count:]), np.sort(order[:count])


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: numpy's and random's global generators from torch's per-worker seed.

    Only code outside our datasets would draw from these: our datasets' augmentation is seeded per (seed, epoch,
    item) (``set_epoch``), so that it does not depend on the number of workers, which is no part of a run's
    identity."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device,
                num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A seeded DataLoader; worker processes and pinned memory when ``device`` is CUDA."""
    cuda = torch.device(device).type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=cuda, worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(seed))


def set_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make epoch ``epoch`` of ``loader`` a function of (seed, epoch) alone: order and augmentation.

    Reseeds the loader's generator (the shuffled order, drawn in the main process whatever the number of
    workers) and tells a dataset with ``set_epoch`` (``DenseDataset``) the epoch, whose augmentation of each
    item is then seeded by (dataset seed, epoch seed, item) alone: the same batches with 0, 2 or 8 workers, and a
    run resumed at an epoch boundary sees exactly the batches of an uninterrupted one. The workers read the
    epoch from the dataset copy they are started with, so this is called before each epoch's ``iter(loader)``.
    """
    epoch_seed = seed * 100003 + epoch
    loader.generator.manual_seed(epoch_seed)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch_seed)

