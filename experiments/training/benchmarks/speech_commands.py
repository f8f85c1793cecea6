"""Speech Commands (the paper's Sec. 6.6, Tables 5–7): ten one-vs-all keyword tasks on a shared spectrogram CNN."""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Sequence

import torch
from torch import nn

from data.speech_commands import WORDS, SpeechCommands

from ..models import MultiTaskModel, scaled
from ..tasks import Task
from .base import Batch, Benchmark

SPEECH_TASKS = tuple(Task(word, word, "classification", 2) for word in WORDS)
CHANNELS = (32, 64, 128)


class SpeechCNN(MultiTaskModel):
    """The paper's "CNN of 3 convolutional layers with a linear classifier" (App. D.3 gives no sizes): three
    conv3×3 (padding 1) → BatchNorm → ReLU → MaxPool 2×2 blocks of ``channels`` (default 32, 64, 128), an
    adaptive average pool to 4×4 (the identity on the default 32×32 input), flattened; per task a linear head to
    two logits (word / not the word).

    The 32 → 64 channel progression and the Flatten → Dense classifier follow TensorFlow's "Simple audio
    recognition" tutorial model (Conv2D(32) → Conv2D(64) → MaxPool → Dense), with a third block of 128 channels
    for the paper's three layers; BatchNorm as in the repository's other CNNs. ``width`` scales the channels.
    """

    def __init__(self, tasks: Sequence[str], channels: Sequence[int] = CHANNELS, width: float = 1.0) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"the paper's CNN has 3 convolutional layers: give 3 channel counts, got {list(channels)}")
        sizes = [scaled(c, width) for c in channels]
        blocks, c_in = [], 1
        for c_out in sizes:
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c_out
        self.trunk = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.features = sizes[-1] * 16
        self.heads = nn.ModuleDict({name: nn.Linear(self.features, 2) for name in tasks})

    def last_shared_parameters(self) -> List[nn.Parameter]:
        """The third conv → BatchNorm block (the last shared layer with parameters)."""
        convs = [i for i, m in enumerate(self.trunk) if isinstance(m, nn.Conv2d)]
        return [*self.trunk[convs[-1]].parameters(), *self.trunk[convs[-1] + 1].parameters()]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1 or min(x.shape[-2:]) < 8:
            raise ValueError(f"SpeechCNN takes N×1×F×T spectrograms with F, T ≥ 8, got {tuple(x.shape)}")
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.encode(x)
        return {name: head(features) for name, head in self.heads.items()}


class BinaryCounts:
    """Accuracy and the positive-class recall of one binary task (90 % of each task's clips are negatives, so
    accuracy alone hides a model that never says the word)."""

    def __init__(self) -> None:
        self.totals = None

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        predicted = logits.argmax(1)
        positive = target == 1
        totals = torch.stack([(predicted == target).sum(), torch.tensor(target.numel(), device=target.device),
                              (predicted[positive] == 1).sum(), positive.sum()])
        self.totals = totals if self.totals is None else self.totals + totals

    def result(self) -> Dict[str, float]:
        correct, count, found, positives = self.totals.tolist()
        return {"acc": 100 * correct / count if count else math.nan,
                "recall": 100 * found / positives if positives else math.nan}


class SpeechCommandsBenchmark(Benchmark):
    """Speech Commands, one-vs-all: rounds of ``eval_every`` epochs of shuffled batches; after each round the
    validation and test accuracy and positive-class recall of all ten tasks (``<word>_acc``, ``<word>_recall``).
    The tables (``experiments/tables_speech_commands.py``) pick the round by the validation accuracy."""

    selection = "best_val"

    def __init__(self, data: SpeechCommands, n_train: int, epochs: int, batch_size: int, device: torch.device,
                 seed: int, eval_every: int = 1, channels: Sequence[int] = CHANNELS, width: float = 1.0) -> None:
        super().__init__(device, seed)
        self.data, self.channels, self.width = data, tuple(channels), width
        self.name = f"speech_commands_{n_train}"
        self.tasks = tuple(t for t in SPEECH_TASKS if t.name in data.words)
        self.epochs, self.eval_every, self.batch_size = epochs, eval_every, batch_size
        self.rounds = math.ceil(epochs / eval_every)
        self.round_unit = "epoch" if eval_every == 1 else "round"

    def build_model(self) -> MultiTaskModel:
        return SpeechCNN([t.name for t in self.tasks], self.channels, self.width)

    def round_batches(self, round_index: int) -> Iterator[Batch]:
        for epoch in range(round_index * self.eval_every, min((round_index + 1) * self.eval_every, self.epochs)):
            yield from self.data.train_batches(epoch, self.batch_size)

    def meta_val_batch(self) -> Batch:
        return self.data.meta_val_batch(self.batch_size)

    def epoch_steps(self) -> int:
        """A round is ``eval_every`` epochs of ``train_batches``, each of ⌈training clips / batch size⌉ batches."""
        return math.ceil(len(self.data.train_index) / self.batch_size)

    def fresh_training_batch(self, items: str = "train") -> Batch:
        """For ``--meta-batches official``: ``batch_size`` distinct training clips (``"train"``) or meta-validation
        clips (``"meta"``), drawn with the data's meta generator (saved in ``state_dict``)."""
        return self.data.fresh_batch(items, self.batch_size)

    def losses(self, model, batch):
        features = model.encode(batch["spec"])
        losses = [t.loss(model.heads[t.name](features), batch[t.key]) for t in self.tasks]
        return torch.stack(losses), features

    def evaluate(self, model):  # accuracy and positive-class recall per task
        return self.evaluate_heads(model, self.data, "spec", accumulator=lambda task: BinaryCounts())

    def state_dict(self):
        return self.data.state_dict()

    def load_state_dict(self, state):
        self.data.load_state_dict(state)

    def describe(self):
        data, transform = self.data, self.data.transform
        return {"data_source": "synthetic" if data.synthetic else "speech_commands", "data_note": data.note,
                "synthetic_data": data.synthetic, "n_train": len(data.clips["train"]),
                "n_val": len(data.clips["val"]), "n_test": len(data.clips["test"]),
                "available_clips": data.available, "subset_seed": data.subset_seed, "epochs": self.epochs,
                "epochs_per_round": self.eval_every, "batch_size": self.batch_size,
                "steps_per_epoch": math.ceil(len(data.train_index) / self.batch_size),
                "stft_n_fft": transform.n_fft, "stft_hop": transform.hop, "log_eps": transform.log_eps,
                "resize": transform.resize, "normalise": data.normalise, "norm_mean": data.mean,
                "norm_std": data.std, "channels": list(self.channels)}
