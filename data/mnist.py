"""MNIST in the IDX format of the original release (LeCun et al.), as torchvision lays it out.

    ROOT/MNIST/raw/train-images-idx3-ubyte[.gz]   60,000 training digits (28×28 uint8)
    ROOT/MNIST/raw/train-labels-idx1-ubyte[.gz]
    ROOT/MNIST/raw/t10k-images-idx3-ubyte[.gz]    10,000 test digits
    ROOT/MNIST/raw/t10k-labels-idx1-ubyte[.gz]

``ROOT`` may also be the ``raw`` folder itself, or a folder holding ``raw/`` (so the offline copy
``../shared/datasets/mnist`` and ``.../mnist/raw`` both work). IDX format: a big-endian header of magic
number 0x00000800 | dtype code (0x08 = uint8) << 8 ... in practice 2051 (images, 3 dimensions) and 2049
(labels, 1 dimension), then one big-endian uint32 per dimension, then the values.
"""
from __future__ import annotations

import gzip
import os
from typing import Dict, Optional, Tuple

import numpy as np

from .common import DatasetNotFoundError, MalformedDatasetError, import_torchvision, is_synthetic

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
COUNTS = {"train": 60_000, "test": 10_000}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
HOW_TO_GET = ("Get the original MNIST release files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
              "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into ROOT/MNIST/raw/, e.g. with "
              "`python experiments/train_multimnist.py --data-root ROOT --download` (torchvision), or point "
              "--data-root at a folder holding them (offline: ../shared/datasets/mnist/raw holds the 10K test "
              "digits only; use --offline-test-only).")


def raw_folder(root: str) -> Optional[str]:
    """The folder under ``root`` that holds the IDX files (ROOT/MNIST/raw, ROOT/raw or ROOT), or None."""
    for candidate in (os.path.join(root, "MNIST", "raw"), os.path.join(root, "raw"), root):
        if os.path.isdir(candidate) and any(n.startswith(("t10k-", "train-")) and "idx" in n
                                            for n in os.listdir(candidate)):
            return candidate
    return None


def is_synthetic_mnist(root: str) -> bool:
    """Whether the MNIST files under ``root`` were written by ``data.synthetic.write_mnist``: its SYNTHETIC marker
    lies in ``root`` or in the folder holding the IDX files (so ROOT and ROOT/MNIST/raw both tell)."""
    folder = raw_folder(root) if os.path.isdir(root) else None
    return is_synthetic(root) or (folder is not None and is_synthetic(folder))


def find_file(folder: str, stem: str) -> str:
    """``folder/stem`` or ``folder/stem.gz``; DatasetNotFoundError naming both otherwise."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise DatasetNotFoundError(f"MNIST file not found: expected {os.path.join(folder, stem)!r} or its .gz.\n"
                               f"{HOW_TO_GET}")


def read_idx(path: str, magic: int, item_shape: Tuple[int, ...]) -> np.ndarray:
    """Read one IDX file (gzip or plain) of uint8 values; check its magic number, sizes and length.

    ``item_shape`` is the expected shape of one item, e.g. (28, 28) for images, () for labels.
    """
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; a truncated .gz raises EOFError
        raise MalformedDatasetError(f"cannot read MNIST file {path!r}: {error}. {HOW_TO_GET}") from None
    n_dims = 1 + len(item_shape)
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise MalformedDatasetError(f"MNIST file {path!r} is {len(data)} bytes long, shorter than its IDX header "
                                    f"({header} bytes): a truncated or foreign file. {HOW_TO_GET}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise MalformedDatasetError(f"MNIST file {path!r} starts with magic number {found}, expected {magic} "
                                    f"(IDX uint8 with {n_dims} dimension(s)): not an MNIST "
                                    f"{'image' if magic == IMAGE_MAGIC else 'label'} file. {HOW_TO_GET}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims))
    if dims[1:] != tuple(item_shape):
        raise MalformedDatasetError(f"MNIST file {path!r} holds items of shape {dims[1:]}, expected {item_shape}")
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise MalformedDatasetError(f"MNIST file {path!r} is {len(data)} bytes long, but its header announces "
                                    f"{dims[0]} items ({expected} bytes): a truncated file? {HOW_TO_GET}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_mnist(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×28×28, labels int64 N) of MNIST's ``split`` ('train' or 'test') under ``root``."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    folder = raw_folder(root) if os.path.isdir(root) else None
    if folder is None:
        raise DatasetNotFoundError(f"no MNIST IDX files under {root!r} (looked in {root!r}/MNIST/raw, "
                                   f"{root!r}/raw and {root!r}).\n{HOW_TO_GET}")
    image_stem, label_stem = FILES[split]
    image_path, label_path = find_file(folder, image_stem), find_file(folder, label_stem)
    images = read_idx(image_path, IMAGE_MAGIC, (28, 28))
    labels = read_idx(label_path, LABEL_MAGIC, ())
    if len(images) != len(labels):
        raise MalformedDatasetError(f"{image_path!r} holds {len(images)} images but {label_path!r} "
                                    f"{len(labels)} labels: the two files must come from the same release")
    if labels.size and labels.max() > 9:
        raise MalformedDatasetError(f"{label_path!r} holds label {labels.max()}, expected digits 0..9")
    return images, labels.astype(np.int64)


def available_splits(root: str) -> Dict[str, bool]:
    """Which MNIST splits are present under ``root`` (both files, plain or .gz)."""
    folder = raw_folder(root) if os.path.isdir(root) else None
    result = {}
    for split, stems in FILES.items():
        result[split] = folder is not None and all(
            os.path.isfile(os.path.join(folder, s)) or os.path.isfile(os.path.join(folder, s + ".gz")) for s in stems)
    return result


def download_mnist(root: str) -> None:
    """Download MNIST into ``root/MNIST/raw`` with torchvision (needs the network)."""
    datasets = import_torchvision().datasets
    for train in (True, False):
        datasets.MNIST(root, train=train, download=True)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format (gzip if ``path`` ends with .gz): used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
