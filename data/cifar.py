"""Semi-supervised CIFAR-10 as ARML (Shi et al., 2020) and the AuxiNash paper use it.

Reads the standard ``cifar-10-batches-py/`` layout (pickled batches, unpickled by ``BatchUnpickler``, which admits
only what a batch holds; md5 sums not checked). Seeded splits:
45,000 train / 5,000 validation (early stopping) of the 50,000 training images, the 10,000 test images as test;
a seeded, class-balanced labelled subset of the train split (``n_labeled``, 5,000 by default; the paper also
uses 10,000). Every train image, labelled or not, feeds the self-supervised auxiliaries.

Two input pipelines (``pipeline``):

``"arml"`` (default; ARML's ``SSL/build_dataset.py``, ``SSL/lib/transform.py``, ``SSL/lib/algs/s4l.py``):

- every image is globally contrast-normalised (``gcn``: mean removed, scaled to norm 55) and ZCA-whitened
  (``fit_zca``: regularisation 0.1) with the whitening fitted on the 50,000 training images (build_dataset.py
  66–102; labels are not used, the test images only have the fitted map applied);
- a training batch holds only ``image`` (whitened, not augmented) and ``label`` (−1 for the unlabelled half);
  the augmentation happens in each training forward pass (``arml_augment``, ARML's ``transform`` applied
  inside ``WRN.forward``): a horizontal flip of the whole batch with probability ½, a 2-pixel reflect-pad random
  crop at one offset for the whole batch, Gaussian noise of std 0.15 per element (transform.py 15–23);
- the auxiliaries' inputs are made by the benchmark from the batch: ``rotate_all``/``rotate_batch``
  (s4l.py 19–27, 52–67) and ``student_view`` (Exemplar-MT's ``RandomAug``, s4l.py 43–107).

``"legacy"`` (this repository's earlier pipeline, kept for comparison) — a batch holds:

- ``image``: random crop with 4-pixel zero padding and horizontal flip, normalised;
- ``label``: the class, −1 for the unlabelled half (ignored by the main task);
- ``rotated`` / ``rotation``: the image rotated by 0/90/180/270° (one random angle per image) and the angle
  index (Rotation task);
- ``view``: the Exemplar-MT second view: horizontal flip, Gaussian noise (std 0.03 on [0, 1] pixels) and,
  with probability ½, a 16×16 cutout (set to the mean, 0 after normalisation).
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from .common import DatasetNotFoundError, MalformedDatasetError, import_torchvision, meta_val_split

log = logging.getLogger(__name__)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
N_CLASSES = 10
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
TASKS = ("classification", "rotation", "exemplar")
PIPELINES = ("arml", "legacy")
GCN_SCALE = 55.0  # ARML build_dataset.py gcn(multiplier=55)
ZCA_REGULARISATION = 0.1  # ARML build_dataset.py get_zca_normalization_param(scale=0.1)
AUGMENT_NOISE_STD = 0.15  # ARML lib/transform.py
STUDENT_NOISE_SCALE = 0.03  # ARML s4l.py MyGaussianNoise.scale
CUTOUT_SCALE = 0.5  # ARML s4l.py MyCutOut.scale: the square's side as a share of the image side (16 of 32)
HOW_TO_GET = ("CIFAR-10 ('python version', cifar-10-batches-py/) comes from www.cs.toronto.edu/~kriz/cifar.html "
              "or torchvision.datasets.CIFAR10(root, download=True); pass --download to fetch it with torchvision, "
              "or put cifar-10-batches-py/ under --data-root (or set CIFAR10_ROOT).")


def batches_dir(root: str) -> str:
    """``root`` itself when it is the batches folder, else ``root/cifar-10-batches-py``."""
    return root if os.path.exists(os.path.join(root, "data_batch_1")) else os.path.join(root, "cifar-10-batches-py")


class RefusedGlobal(pickle.UnpicklingError):
    """A pickled batch names a global that CIFAR-10 batches never hold."""


def _plain_dtype(*args):
    """``numpy.dtype`` as a pickle calls it, for dtypes without Python objects only (an object array's items would
    be unpickled as objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise RefusedGlobal(f"it holds an array of Python objects (dtype {dtype})")
    return dtype


def _batch_globals() -> Dict[tuple, object]:
    """The globals a CIFAR-10 batch is made of, under every name they are pickled with: NumPy's array
    reconstruction (``numpy.core.multiarray`` in the original release, pickled by Python 2 with NumPy 1.x;
    ``numpy._core.multiarray`` when NumPy 2 pickles a batch again, as ``data.synthetic.write_cifar10`` and
    ../shared/datasets/make_cifar10_batches.py do), ``ndarray`` and ``dtype``; ``_codecs.encode`` builds ``bytes``
    in a protocol-2 pickle written by Python 3 (torch's weights-only unpickler admits it for the same reason).
    Dicts, lists, strings, bytes and ints need no global."""
    import codecs
    reconstruct = np.zeros(0).__reduce__()[0]  # the function itself, under either module name
    return {("numpy.core.multiarray", "_reconstruct"): reconstruct, ("numpy._core.multiarray", "_reconstruct"):
            reconstruct, ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype,
            ("_codecs", "encode"): codecs.encode}


class BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch and nothing else: it looks up only ``_batch_globals()`` (Python's pickle
    documentation, "Restricting Globals"), so a crafted batch file cannot run code; any other global is
    ``RefusedGlobal``, naming it."""

    def find_class(self, module: str, name: str):
        found = _batch_globals().get((module, name))
        if found is None:
            raise RefusedGlobal(f"it needs {module}.{name}, which a CIFAR-10 batch never holds")
        return found


def read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N×32×32×3 uint8) and labels (N int64) of one pickled batch, checked."""
    if not os.path.exists(path):
        raise DatasetNotFoundError(f"CIFAR-10 batch file {path!r} not found.\n{HOW_TO_GET}")
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, encoding="bytes").load()
    except RefusedGlobal as error:
        raise MalformedDatasetError(f"{path!r} was refused and nothing in it ran: {error}; a CIFAR-10 batch holds "
                                    f"only a dict of bytes, numbers, lists and a uint8 numpy array. Get the batches "
                                    f"again.\n{HOW_TO_GET}") from None
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
        torchvision = import_torchvision()
        try:
            torchvision.datasets.CIFAR10(root, train=True, download=True)
        except Exception as error:  # no network, a refused or broken download
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


def gcn(images: torch.Tensor, scale: float = GCN_SCALE, eps: float = 1e-10) -> torch.Tensor:
    """Global contrast normalisation (ARML ``build_dataset.py`` ``gcn``): per image, subtract its mean over
    all pixels and channels, then scale to Euclidean norm ``scale`` (a norm below ``eps`` is left as 1)."""
    flat = images.reshape(len(images), -1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    norm = torch.where(norm < eps, torch.ones_like(norm), norm)
    return (scale * flat / norm).reshape(images.shape)


def fit_zca(images: torch.Tensor, regularisation: float = ZCA_REGULARISATION, eps: float = 1e-10
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """ZCA whitening fitted on ``images`` (N × …), as ARML's ``get_zca_normalization_param``: C = the
    unbiased covariance of the flattened images (``np.cov``), C + λI = U S Uᵀ, W = U diag(1/√(S + eps)) Uᵀ;
    returns (mean, W). With λ = 0 the whitened fitted data have identity covariance; with λ > 0 their
    covariance is U diag(S₀/(S₀ + λ)) Uᵀ (S₀ the eigenvalues of C). The product XᵀX runs in float64 on CUDA
    and float32 on the CPU (speed), the eigendecomposition always in float64."""
    flat = images.reshape(len(images), -1)
    work = torch.float64 if flat.device.type == "cuda" else torch.float32
    mean = flat.sum(dim=0, dtype=torch.float64) / len(flat)
    centred = flat.to(work) - mean.to(work)
    covariance = (centred.T @ centred).to(torch.float64) / (len(flat) - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance + regularisation * torch.eye(len(covariance),
                                                                                           dtype=torch.float64,
                                                                                           device=flat.device))
    matrix = (eigenvectors * (1.0 / torch.sqrt(eigenvalues.clamp(min=0) + eps))) @ eigenvectors.T
    return mean, matrix


def apply_zca(images: torch.Tensor, mean: torch.Tensor, matrix: torch.Tensor, chunk: int = 5000) -> torch.Tensor:
    """(x − mean) W per flattened image (ARML ``zca_normalization``), float32 out, in chunks (float64 products
    on CUDA, float32 on the CPU)."""
    flat = images.reshape(len(images), -1)
    work = torch.float64 if flat.device.type == "cuda" else torch.float32  # float32 on the CPU for speed
    out = torch.empty(flat.shape, dtype=torch.float32, device=flat.device)
    shift, transform = mean.to(work), matrix.to(work)
    for start in range(0, len(flat), chunk):
        out[start:start + chunk] = ((flat[start:start + chunk].to(work) - shift) @ transform).float()
    return out.reshape(images.shape)


_ZCA_MEMORY: Dict[str, tuple] = {}


def zca_cache_dir() -> str:
    return os.environ.get("AUXINASH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "auxinash"))


def _read_zca_cache(path: str, size: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, W) from a ZCA cache file, or None (with a warning naming the file) when it cannot be read with
    ``weights_only=True`` or holds anything but a float64 mean of ``size`` and a ``size``×``size`` W."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        mean, matrix = stored["mean"], stored["matrix"]
        if not (isinstance(mean, torch.Tensor) and isinstance(matrix, torch.Tensor) and mean.shape == (size,)
                and matrix.shape == (size, size) and mean.dtype == matrix.dtype == torch.float64):
            raise ValueError(f"expected a float64 mean of {size} and a {size}×{size} matrix")
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file: refit
        reason = str(error.__context__ if isinstance(error.__context__, pickle.UnpicklingError) else error)
        log.warning("ignoring the ZCA cache %s (%s: %s); fitting the whitening again and replacing it", path,
                    type(error).__name__, reason.strip().split(" Please use `torch.serialization")[0])
        return None
    return mean, matrix


def cached_zca(images: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``fit_zca(images)``, remembered in memory and in ``$AUXINASH_CACHE`` (default ``~/.cache/auxinash``)
    under ``key`` (a hash of the raw training images): the 3072×3072 eigendecomposition takes minutes on a CPU.
    An unwritable cache folder only costs the refit, and so does a cache file that is not two float64 tensors of
    the right shapes: it is read with ``weights_only=True`` (a file that would run code on loading stops before
    anything in it runs), and one that fails is named in a warning, fitted again and replaced."""
    if key not in _ZCA_MEMORY:
        path = os.path.join(zca_cache_dir(), f"zca-{key}.pt")
        stored = _read_zca_cache(path, images[0].numel()) if os.path.exists(path) else None
        if stored is not None:
            _ZCA_MEMORY[key] = stored
        else:
            log.info("fitting ZCA whitening on %d images (cached afterwards in %s)", len(images), path)
            mean, matrix = fit_zca(images)
            _ZCA_MEMORY[key] = (mean.cpu(), matrix.cpu())
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                torch.save({"mean": mean.cpu(), "matrix": matrix.cpu()}, path + ".tmp")
                os.replace(path + ".tmp", path)
            except OSError as error:
                log.warning("could not cache the ZCA whitening in %s: %s", path, error)
    mean, matrix = _ZCA_MEMORY[key]
    return mean.to(images.device), matrix.to(images.device)


def arml_augment(images: torch.Tensor, generator: torch.Generator, noise_std: float = AUGMENT_NOISE_STD
                 ) -> torch.Tensor:
    """ARML's training transform (``lib/transform.py``, applied in ``WRN.forward`` to every training forward
    pass): flip the whole batch with probability ½; reflect-pad by 2 and crop back at one random offset
    (top, left ∈ {0..4}) for the whole batch; add N(0, noise_std²) noise per element."""
    device = images.device
    draws = torch.rand(1, generator=generator, device=device)
    offsets = torch.randint(0, 5, (2,), generator=generator, device=device).tolist()
    if draws.item() > 0.5:
        images = images.flip(-1)
    h, w = images.shape[-2:]
    padded = torch.nn.functional.pad(images, [2, 2, 2, 2], mode="reflect")
    top, left = offsets
    images = padded[..., top:top + h, left:left + w]
    if noise_std:
        images = images + noise_std * torch.randn(images.shape, generator=generator, device=device)
    return images


def rotate_all(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The four rotations of every image (ARML ``s4l.py`` ``rotate_loss``): [x; rot90(x); rot180(x); rot270(x)]
    (counter-clockwise, ARML's ``MyRotationTransform``) and the targets [0…0, 1…1, 2…2, 3…3]."""
    n = len(images)
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    return rotated, torch.arange(4, device=images.device).repeat_interleave(n)


def student_view(images: torch.Tensor, generator: torch.Generator, noise_scale: float = STUDENT_NOISE_SCALE,
                 cutout_scale: float = CUTOUT_SCALE) -> torch.Tensor:
    """Exemplar-MT's student view as ARML's ``RandomAug`` (``s4l.py`` 43–107), on the whole batch at once:
    flip the batch with probability ½; add (ε·noise_scale + mean(x))·(max(x) − min(x))/2, ε ~ N(0, 1) per
    element and mean/min/max over the whole (flipped) batch (``MyGaussianNoise``); zero one square of side
    int(side·cutout_scale) (16 on 32×32), rows [cy − 8, cy + 8) × columns [cx − 8, cx + 8) clipped at the
    border, at one random centre (cy, cx) for the whole batch (``MyCutOut``)."""
    device = images.device
    flip = torch.rand(1, generator=generator, device=device).item() < 0.5
    h, w = images.shape[-2:]
    cy, cx = torch.randint(0, h, (1,), generator=generator, device=device).item(), \
        torch.randint(0, w, (1,), generator=generator, device=device).item()
    x = images.flip(-1) if flip else images
    low, high, mean = x.min(), x.max(), x.mean()
    x = x + (torch.randn(x.shape, generator=generator, device=device) * noise_scale + mean) * (high - low) / 2
    hcut, wcut = int(h * cutout_scale), int(w * cutout_scale)
    keep = torch.ones(h, w, device=device, dtype=x.dtype)
    keep[max(cy - hcut // 2, 0):min(cy + hcut // 2, h), max(cx - wcut // 2, 0):min(cx + wcut // 2, w)] = 0
    return x * keep


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
                 download: bool = False, pipeline: str = "arml") -> None:
        unknown = set(tasks) - set(TASKS)
        if unknown or "classification" not in tasks:
            raise ValueError(f"tasks must include 'classification' and come from {TASKS}, got {list(tasks)}")
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
        self.tasks = tuple(tasks)
        self.pipeline = pipeline
        self.n_labeled = n_labeled
        self.device = torch.device(device)
        arrays = read_cifar10(root, download)
        self.splits = make_splits(arrays["train_labels"], n_labeled, val_size, meta_val_size, seed)
        to_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self.device)
        self.images = to_tensor(arrays["train_images"])  # uint8, N × 3 × 32 × 32
        self.labels = torch.from_numpy(arrays["train_labels"]).to(self.device)
        self.test_images = to_tensor(arrays["test_images"])
        self.test_labels = torch.from_numpy(arrays["test_labels"]).to(self.device)
        self.whitened = pipeline != "arml"  # the ARML inputs are made on first use (``whiten``)
        digest = hashlib.sha1(np.ascontiguousarray(arrays["train_images"]).tobytes())
        self.zca_key = f"{digest.hexdigest()[:20]}-gcn{GCN_SCALE:g}-reg{ZCA_REGULARISATION:g}"
        self.positions = {name: torch.from_numpy(getattr(self.splits, name)).to(self.device)
                          for name in ("train", "val", "labeled", "meta_val")}
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def whiten(self) -> None:
        """ARML inputs: GCN, then ZCA fitted on the 50,000 training images (``build_dataset.py`` 98–102); done
        once, on first use (a few seconds on a GPU, minutes on a CPU)."""
        if self.whitened:
            return
        train = gcn(self.images.float())
        mean, matrix = cached_zca(train, self.zca_key)
        self.images = apply_zca(train, mean, matrix)
        del train
        self.test_images = apply_zca(gcn(self.test_images.float()), mean, matrix)
        self.whitened = True

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def _draw(self, pool: str, count: int, generator: Optional[torch.Generator] = None,
              distinct: bool = False) -> torch.Tensor:
        """``count`` positions of ``pool``: with replacement (the training stream), or ``distinct`` (the first
        ``count`` of a fresh permutation), drawn with ``generator`` (default: the data's own)."""
        generator = self.generator if generator is None else generator
        positions = self.positions[pool]
        if distinct:
            return positions[torch.randperm(len(positions), generator=generator, device=self.device)[:count]]
        return positions[torch.randint(0, len(positions), (count,), generator=generator, device=self.device)]

    def make_batch(self, labeled: torch.Tensor, unlabeled: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """The training batch of the given image positions (see the module docstring); the legacy pipeline's
        augmentation draws from ``generator`` (default: the data's own)."""
        generator = self.generator if generator is None else generator
        positions = labeled if unlabeled is None else torch.cat([labeled, unlabeled])
        if self.pipeline == "arml":  # augmented in the forward passes (see the module docstring)
            self.whiten()
            labels = self.labels[positions].clone()
            labels[len(labeled):] = -1
            return {"image": self.images[positions], "label": labels}
        pixels = crop_flip(self.images[positions].float() / 255.0, generator)
        labels = self.labels[positions].clone()
        labels[len(labeled):] = -1
        batch = {"image": normalise(pixels), "label": labels}
        if "rotation" in self.tasks:
            angles = torch.randint(0, 4, (len(positions),), generator=generator, device=self.device)
            batch["rotated"] = normalise(rotate_batch(pixels, angles))
            batch["rotation"] = angles
        if "exemplar" in self.tasks:
            batch["view"], _ = exemplar_view(pixels, generator)
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

    def fresh_batch(self, items: str, generator: torch.Generator, labeled_batch: int = 128,
                    unlabeled_batch: int = 128) -> Dict[str, torch.Tensor]:
        """A new batch drawn with ``generator`` alone (not the data's own, so the training stream is untouched):
        ``items="train"``: shaped as ``train_batches``' (``labeled_batch`` labelled + ``unlabeled_batch`` images
        of the train split, label −1), ``items="meta"``: ``labeled_batch`` labelled meta-validation images (the
        held-out ones if any). Each part holds distinct images, the first batch of a fresh shuffle (ARML's
        ``SSL/train.py`` ``RandomSampler`` samples without replacement); augmented as the training batches are
        (the legacy pipeline here, the ARML pipeline in the forward pass)."""
        if items == "train":
            labeled = self._draw("labeled", labeled_batch, generator, distinct=True)
            unlabeled = self._draw("train", unlabeled_batch, generator, distinct=True) if unlabeled_batch else None
            return self.make_batch(labeled, unlabeled, generator)
        if items == "meta":
            return self.make_batch(self._draw("meta_val", labeled_batch, generator, distinct=True), None, generator)
        raise ValueError(f"items must be 'train' or 'meta', got {items!r}")

    def eval_batches(self, split: str, batch_size: int = 1000) -> Iterator[Dict[str, torch.Tensor]]:
        """Un-augmented, normalised (or GCN + ZCA-whitened) batches of 'val' (the held-out 5,000) or 'test'."""
        self.whiten()
        if split == "test":
            images, labels = self.test_images, self.test_labels
        elif split == "val":
            images, labels = self.images[self.positions["val"]], self.labels[self.positions["val"]]
        else:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        for start in range(0, len(labels), batch_size):
            if self.pipeline == "arml":
                yield {"image": images[start:start + batch_size], "label": labels[start:start + batch_size]}
                continue
            pixels = images[start:start + batch_size].float() / 255.0
            yield {"image": normalise(pixels), "label": labels[start:start + batch_size]}
