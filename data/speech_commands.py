"""Google Speech Commands v0.02 (Warden 2018, CC BY 4.0), the ten digit keywords, for the paper's Sec. 6.6.

Layout of the extracted official archive (``speech_commands_v0.02.tar.gz``, 105,829 clips of 35 words)::

    ROOT/<word>/<speaker>_nohash_<n>.wav     16 kHz, 16-bit mono PCM, at most 1 s
    ROOT/validation_list.txt                 one ``<word>/<file>.wav`` per line
    ROOT/testing_list.txt

Only the ten digit words ``zero`` … ``nine`` are kept (the other words and ``_background_noise_`` are
ignored). Validation and test clips are the digit entries of the two lists (in v0.02: 3,643 and 4,107 clips,
the counts the paper gives); every other digit clip is a training candidate, and a run trains on a seeded,
class-balanced subset of ``n_train`` of them (``balanced_subset``: 50 or 100 clips per word for the paper's
500 / 1,000). The subset's seed is the run's seed unless ``--subset-seed`` fixes it: every method of one seed
trains on the same clips, and the three seeds draw three different subsets.

Each clip is read with ``scipy.io.wavfile`` (a file with another sample rate, more than one channel, a
non-integer-PCM format or a truncated header is named in the error), scaled to [−1, 1), zero-padded at the end
or cropped to 1 s (16,000 samples) and turned into a log-magnitude STFT spectrogram (``Spectrogram``).

``--download`` (``download``) fetches the official archive with a progress bar, resumes a partial download
(``<archive>.part``, HTTP Range), checks its size and SHA-256 against the published ones (``V002_ARCHIVE``) and
only then extracts it into ROOT; a member that would land outside ROOT stops the extraction before anything is
written.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .common import DatasetNotFoundError, MalformedDatasetError, is_synthetic, meta_val_split

log = logging.getLogger("auxinash")

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # 1 s
LISTS = {"val": "validation_list.txt", "test": "testing_list.txt"}
V002_COUNTS = {"val": 3_643, "test": 4_107}  # the digit clips of v0.02's lists (the paper's counts)
URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
ARCHIVE = "speech_commands_v0.02.tar.gz"
# (bytes, SHA-256) of the v0.02 archive as published: TensorFlow Datasets,
# tensorflow_datasets/url_checksums/speech_commands.txt (the line for URL); the same SHA-256 is torchaudio's,
# torchaudio/datasets/speechcommands.py _CHECKSUMS
V002_ARCHIVE = (2_428_923_189, "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58")
HOW_TO_GET = (f"Get Google Speech Commands v0.02 ({URL}, about 2.3 GB) and extract it into ROOT, so that ROOT holds "
              f"the word folders (ROOT/zero/*.wav ... ROOT/nine/*.wav) and ROOT/validation_list.txt, "
              f"ROOT/testing_list.txt; or pass --download to fetch and extract it there (resumes a partial "
              f"download). Set ROOT with --data-root or SPEECH_COMMANDS_ROOT.")

Clip = Tuple[str, str]  # (path relative to ROOT as the lists write it, word)


# --------------------------------------------------------------------------------------------------------------
# the layout
# --------------------------------------------------------------------------------------------------------------

def _read_list(root: str, split: str) -> List[str]:
    path = os.path.join(root, LISTS[split])
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"Speech Commands split list not found: expected {path!r}.\n{HOW_TO_GET}")
    with open(path) as f:
        return [line.strip().replace("\\", "/") for line in f if line.strip()]


def read_layout(root: str, words: Sequence[str] = WORDS) -> Dict[str, List[Clip]]:
    """split ("train", "val", "test") → sorted [(relative path, word)] of the clips of ``words``.

    Validation and test: the list entries whose folder is one of ``words``; training: every other ``.wav`` in
    those folders. A listed clip that is missing, or one listed in both lists, is named in the error."""
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"Speech Commands not found: expected the folder {root!r}.\n{HOW_TO_GET}")
    listed = {split: [p for p in _read_list(root, split) if p.split("/", 1)[0] in words] for split in LISTS}
    both = sorted(set(listed["val"]) & set(listed["test"]))
    if both:
        raise MalformedDatasetError(f"{len(both)} clip(s) are in both {LISTS['val']} and {LISTS['test']} of "
                                    f"{root!r}, first {both[0]!r}")
    held_out = set(listed["val"]) | set(listed["test"])
    layout: Dict[str, List[Clip]] = {"train": [], "val": [], "test": []}
    for word in words:
        folder = os.path.join(root, word)
        if not os.path.isdir(folder):
            raise DatasetNotFoundError(f"Speech Commands word folder not found: expected {folder!r}.\n{HOW_TO_GET}")
        for name in sorted(os.listdir(folder)):
            relative = f"{word}/{name}"
            if name.endswith(".wav") and relative not in held_out:
                layout["train"].append((relative, word))
    for split in LISTS:
        for relative in sorted(listed[split]):
            if not os.path.isfile(os.path.join(root, relative)):
                raise MalformedDatasetError(f"{LISTS[split]} lists {relative!r}, but {os.path.join(root, relative)!r} "
                                            f"does not exist (an incomplete extraction?).\n{HOW_TO_GET}")
            layout[split].append((relative, relative.split("/", 1)[0]))
    return layout


def balanced_subset(clips: Sequence[Clip], n: int, seed: int, words: Sequence[str] = WORDS) -> List[Clip]:
    """``n`` clips spread uniformly over ``words`` (n // len(words) each; a remainder goes one each to words
    drawn at random), drawn with ``seed``; sorted. Raises when a word has too few clips."""
    if n < 1:
        raise ValueError(f"the training subset needs at least one clip, got {n}")
    rng = np.random.default_rng([seed, 22])
    per_word = {w: n // len(words) for w in words}
    for w in rng.permutation(len(words))[:n % len(words)]:
        per_word[words[w]] += 1
    chosen: List[Clip] = []
    for word in words:
        pool = [c for c in clips if c[1] == word]
        if len(pool) < per_word[word]:
            raise MalformedDatasetError(f"{per_word[word]} training clips of {word!r} asked for, only {len(pool)} "
                                        f"available outside the validation and test lists")
        picks = rng.choice(len(pool), size=per_word[word], replace=False)
        chosen += [pool[i] for i in sorted(picks)]
    return sorted(chosen)


# --------------------------------------------------------------------------------------------------------------
# WAV files
# --------------------------------------------------------------------------------------------------------------

def read_wav(path: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One clip as float32 in [−1, 1): 16 kHz mono integer PCM (the release's 16-bit, or 8/32-bit), else an error
    naming the file."""
    from scipy.io import wavfile
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", wavfile.WavFileWarning)
            rate, data = wavfile.read(path)
        for warning in caught:  # scipy only warns when the data chunk runs past the end of the file
            if "EOF" in str(warning.message) or "prematurely" in str(warning.message):
                raise ValueError(f"truncated data ({warning.message})")
    except FileNotFoundError:
        raise MalformedDatasetError(f"missing WAV file {path!r}") from None
    except Exception as error:  # scipy raises ValueError for a foreign or truncated header, EOFError and others
        raise MalformedDatasetError(f"cannot read WAV file {path!r}: {error} (a truncated or non-WAV file?)") from None
    if rate != sample_rate:
        raise MalformedDatasetError(f"WAV file {path!r} has sample rate {rate} Hz, expected {sample_rate} Hz")
    if data.ndim != 1:
        raise MalformedDatasetError(f"WAV file {path!r} has {data.shape[1]} channels, expected mono")
    if data.dtype.kind == "u" and data.dtype.itemsize == 1:
        return (data.astype(np.float32) - 128) / 128
    if data.dtype.kind != "i":
        raise MalformedDatasetError(f"WAV file {path!r} holds {data.dtype} samples, not integer PCM "
                                    f"(the release is 16-bit PCM)")
    return data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))


def fit_length(wave: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Zero-pad at the end, or crop, to ``length`` samples."""
    if len(wave) >= length:
        return wave[:length]
    return np.pad(wave, (0, length - len(wave)))


def load_waves(root: str, clips: Sequence[Clip], progress: bool = False) -> np.ndarray:
    """N × 16,000 float32 waveforms of ``clips``."""
    from tqdm import tqdm
    waves = np.zeros((len(clips), CLIP_SAMPLES), dtype=np.float32)
    for i, (relative, _) in enumerate(tqdm(clips, desc="reading WAVs", unit="clip", disable=not progress,
                                           leave=False)):
        waves[i] = fit_length(read_wav(os.path.join(root, relative)))
    return waves


# --------------------------------------------------------------------------------------------------------------
# spectrograms
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spectrogram:
    """Log-magnitude STFT, log(|STFT| + eps), of shape (1, n_fft // 2 + 1, frames), optionally resized.

    The paper states only "an STFT spectrogram". Defaults from TensorFlow's "Simple audio recognition" tutorial
    (tensorflow.org/tutorials/audio/simple_audio), the standard Speech Commands keyword example:
    ``tf.signal.stft(waveform, frame_length=255, frame_step=128)`` (FFT length 256, Hann window, no centring:
    1 + (16000 − 256) // 128 = 124 frames of 129 bins) and a ``Resizing(32, 32)`` layer in front of the CNN.
    Ours: n_fft 256 with a periodic Hann window of 256 samples (the tutorial's 255-sample window, zero-padded
    to 256, differs by one sample), hop 128, ``center=False``; the log of the magnitude (the tutorial feeds the
    magnitude itself; the log is the usual choice for a CNN, e.g. torchaudio's AmplitudeToDB); then a bilinear
    resize to ``resize`` × ``resize`` (0 keeps 129 × 124). Normalisation is separate (``SpeechCommands``).
    """

    n_fft: int = 256
    hop: int = 128
    log_eps: float = 1e-6
    resize: int = 32

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        """waves: N × samples → N × 1 × F × T float32."""
        window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)
        stft = torch.stft(waves.double(), n_fft=self.n_fft, hop_length=self.hop, win_length=self.n_fft,
                          window=window, center=False, return_complex=True)
        spectra = torch.log(stft.abs() + self.log_eps).float()[:, None]
        if self.resize:
            spectra = torch.nn.functional.interpolate(spectra, size=(self.resize, self.resize), mode="bilinear",
                                                      align_corners=False, antialias=False)
        return spectra

    def shape(self, samples: int = CLIP_SAMPLES) -> Tuple[int, int, int]:
        if self.resize:
            return (1, self.resize, self.resize)
        return (1, self.n_fft // 2 + 1, 1 + (samples - self.n_fft) // self.hop)


def spectrograms(waves: np.ndarray, transform: Spectrogram, chunk: int = 512) -> torch.Tensor:
    return torch.cat([transform(torch.from_numpy(waves[i:i + chunk])) for i in range(0, len(waves), chunk)]) \
        if len(waves) else torch.zeros((0, *transform.shape()))


def binary_labels(clips: Sequence[Clip], words: Sequence[str] = WORDS) -> Dict[str, torch.Tensor]:
    """word → int64 labels of its one-vs-all task: 1 for the word's clips, 0 for the other nine words'."""
    spoken = [c[1] for c in clips]
    return {w: torch.tensor([int(s == w) for s in spoken], dtype=torch.int64) for w in words}


# --------------------------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------------------------

def download(root: str, url: str = URL, opener: Callable = urllib.request.urlopen, chunk: int = 1 << 20,
             keep_archive: bool = False, expected: Optional[Tuple[int, str]] = None) -> str:
    """Fetch ``url`` into ``root/<archive>.part`` with a progress bar, resuming a partial download with an HTTP
    Range request (a server that ignores it sends everything, and the download starts over), then extract it
    into ``root`` and remove the archive (unless ``keep_archive``). Returns ``root``.

    ``expected`` = (bytes, SHA-256) of the archive (``--download`` passes ``V002_ARCHIVE``): a part file shorter
    than that is kept for the next run to resume; an archive of another size or digest is named in the error and
    removed before anything is extracted. Every member is checked with tarfile's ``data`` filter (no path
    outside ``root``, no links out of it, no devices) before the first one is written, so a refused archive is
    never half-extracted; it is removed too."""
    from tqdm import tqdm
    os.makedirs(root, exist_ok=True)
    archive = os.path.join(root, os.path.basename(url.split("?")[0]) or ARCHIVE)
    partial = archive + ".part"
    if not os.path.exists(archive):
        start = os.path.getsize(partial) if os.path.exists(partial) else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
        try:
            response = opener(request)
        except Exception as error:
            raise DatasetNotFoundError(f"cannot download {url} ({error}); {HOW_TO_GET}") from None
        with response:
            status = getattr(response, "status", None) or (response.getcode() if hasattr(response, "getcode") else None)
            headers = getattr(response, "headers", {}) or {}
            length = headers.get("Content-Length")
            if start and status == 206:
                total = start + int(length) if length is not None else None
                mode = "ab"
                log.info("resuming the download of %s at byte %d", url, start)
            elif start and status == 416:  # asked for bytes past the end: the part file is complete
                total, mode = start, None
            else:
                if start:
                    log.info("the server ignored the Range request: downloading %s again from the start", url)
                start, mode = 0, "wb"
                total = int(length) if length is not None else None
            if mode is not None:
                with open(partial, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                    desc=os.path.basename(archive)) as bar:
                    while True:
                        block = response.read(chunk)
                        if not block:
                            break
                        f.write(block)
                        bar.update(len(block))
        size = os.path.getsize(partial)
        if expected is not None and size < expected[0]:
            total = expected[0]
        if total is not None and size != total:
            raise DatasetNotFoundError(f"the download of {url} stopped at {size} of {total} bytes; run again with "
                                       f"--download to resume it ({partial!r} is kept)")
        os.replace(partial, archive)
    if expected is not None:
        check_archive(archive, *expected)
    _extract(archive, root)
    if not keep_archive:
        os.remove(archive)
    return root


def check_archive(archive: str, size: int, sha256: str, chunk: int = 1 << 20) -> None:
    """Remove ``archive`` and raise ``MalformedDatasetError`` naming it unless it has ``size`` bytes and SHA-256
    ``sha256``."""
    actual = os.path.getsize(archive)
    digest = hashlib.sha256()
    if actual == size:
        with open(archive, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                digest.update(block)
    if actual != size or digest.hexdigest() != sha256:
        found = f"{actual} bytes" if actual != size else f"SHA-256 {digest.hexdigest()}"
        os.remove(archive)
        raise MalformedDatasetError(f"{archive!r} is not the published archive ({size} bytes, SHA-256 {sha256}; "
                                    f"this one has {found}): it is truncated or altered, removed without "
                                    f"extracting anything; run again with --download")


def _extract(archive: str, root: str) -> None:
    """Extract ``archive`` into ``root`` with tarfile's ``data`` filter, after checking every member with it: an
    archive that cannot be read or holds a refused member is removed before anything is written."""
    log.info("extracting %s into %s", archive, root)
    tar = None
    try:
        tar = tarfile.open(archive)
        members = tar.getmembers()
        for member in members:
            tarfile.data_filter(member, root)  # FilterError for a path or link out of root, a device
    except (tarfile.TarError, EOFError) as error:
        if tar is not None:
            tar.close()
        os.remove(archive)
        raise MalformedDatasetError(f"{archive!r} was refused ({type(error).__name__}: {error}): removed without "
                                    f"extracting anything; run again with --download") from None
    try:
        with tar:
            tar.extractall(root, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise MalformedDatasetError(f"cannot extract {archive!r} ({error}): delete it and download again") from None


# --------------------------------------------------------------------------------------------------------------
# the dataset as tensors
# --------------------------------------------------------------------------------------------------------------

class SpeechCommands:
    """The ten one-vs-all tasks as tensors on ``device``: ``split(name)`` → {"spec": N×1×F×T, word: N labels}.

    Training clips: ``balanced_subset`` of ``n_train`` (seed ``subset_seed``); validation and test: the lists'
    digit clips (``n_val`` / ``n_test`` cap them, for tests and quick runs: the first ones of a seeded
    shuffle). Spectrograms are normalised by the training subset's mean and standard deviation over every
    value (``normalise="global"``; "none" leaves them), as the tutorial's ``Normalization`` layer adapted on the
    training spectrograms does. Meta-validation batches come from the training clips, or from a held-out
    ``meta_val_size`` of them.
    """

    def __init__(self, root: str, n_train: int, seed: int = 0, subset_seed: Optional[int] = None,
                 transform: Spectrogram = Spectrogram(), normalise: str = "global", device="cpu",
                 download_missing: bool = False, meta_val_size: float = 0, n_val: Optional[int] = None,
                 n_test: Optional[int] = None, words: Sequence[str] = WORDS) -> None:
        if normalise not in ("global", "none"):
            raise ValueError(f"normalise must be 'global' or 'none', got {normalise!r}")
        if download_missing and not os.path.isfile(os.path.join(root, LISTS["val"])):
            download(root, expected=V002_ARCHIVE)
        self.root, self.words, self.transform, self.normalise = root, tuple(words), transform, normalise
        self.subset_seed = seed if subset_seed is None else subset_seed
        self.synthetic = is_synthetic(root)
        self.device = torch.device(device)
        layout = read_layout(root, self.words)
        self.available = {split: len(clips) for split, clips in layout.items()}
        self.clips = {"train": balanced_subset(layout["train"], n_train, self.subset_seed, self.words)}
        for split, cap in (("val", n_val), ("test", n_test)):
            clips = layout[split]
            if cap is not None and cap < len(clips):
                order = np.random.default_rng([22, len(clips)]).permutation(len(clips))[:cap]
                clips = [clips[i] for i in sorted(order)]
            if not clips:
                raise MalformedDatasetError(f"{root!r}: no {split} clips of the words {', '.join(self.words)} in "
                                            f"{LISTS[split]}")
            self.clips[split] = clips
        data = {}
        for split, clips in self.clips.items():
            data[split] = spectrograms(load_waves(root, clips, progress=len(clips) > 1000), transform)
        if normalise == "global":
            self.mean, self.std = data["train"].mean().item(), data["train"].std().item()
        else:
            self.mean, self.std = 0.0, 1.0
        self._splits = {}
        for split, spectra in data.items():
            self._splits[split] = {"spec": ((spectra - self.mean) / max(self.std, 1e-12)).to(self.device),
                                   **{w: y.to(self.device) for w, y in binary_labels(self.clips[split], self.words).items()}}
        self.train_index, self.meta_val_index = meta_val_split(len(self.clips["train"]), meta_val_size, seed)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + 1)

    @property
    def note(self) -> str:
        return ("SYNTHETIC tree written by data/synthetic.py (tones, not speech)" if self.synthetic else
                "Google Speech Commands (digit words)")

    def split(self, name: str) -> Dict[str, torch.Tensor]:
        return self._splits[name]

    def train_batches(self, epoch: int, batch_size: int) -> Iterator[Dict[str, torch.Tensor]]:
        """One epoch of shuffled training batches; the order is a function of (seed, epoch) alone."""
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        index = torch.from_numpy(self.train_index)
        order = index[torch.randperm(len(index), generator=generator)].to(self.device)
        train = self._splits["train"]
        for start in range(0, len(order), batch_size):
            picks = order[start:start + batch_size]
            yield {k: v[picks] for k, v in train.items()}

    def meta_val_batch(self, batch_size: int) -> Dict[str, torch.Tensor]:
        picks = torch.from_numpy(self.meta_val_index)[
            torch.randint(len(self.meta_val_index), (batch_size,), generator=self.generator)].to(self.device)
        return {k: v[picks] for k, v in self._splits["train"].items()}

    def fresh_batch(self, items: str, batch_size: int) -> Dict[str, torch.Tensor]:
        """``batch_size`` distinct training clips (``"train"``) or meta-validation clips (``"meta"``), drawn with
        the meta generator (not the training stream's)."""
        if items not in ("train", "meta"):
            raise ValueError(f"items must be 'train' or 'meta', got {items!r}")
        index = torch.from_numpy(self.train_index if items == "train" else self.meta_val_index)
        picks = index[torch.randperm(len(index), generator=self.generator)[:batch_size]].to(self.device)
        return {k: v[picks] for k, v in self._splits["train"].items()}

    def eval_batches(self, split: str, batch_size: int = 512) -> Iterator[Dict[str, torch.Tensor]]:
        data = self._splits[split]
        for start in range(0, len(data["spec"]), batch_size):
            yield {k: v[start:start + batch_size] for k, v in data.items()}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
