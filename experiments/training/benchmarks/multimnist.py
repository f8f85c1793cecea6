"""Multi-MNIST (the paper's Sec. 6.2, Figure 2): two digit-classification tasks, both "main"."""
from __future__ import annotations

import math
from typing import Iterator

import torch

from data.multimnist import MultiMnist

from ..models import MultiLeNet, MultiTaskModel
from ..tasks import Task
from .base import Batch, Benchmark

MULTIMNIST_TASKS = (Task("left", "left", "classification", 10), Task("right", "right", "classification", 10))


class MultiMnistBenchmark(Benchmark):
    """Multi-MNIST with the LeNet variant: epochs of shuffled batches, validation and test accuracy of both
    tasks after each epoch; the table and Figure 2 read both tasks' test accuracy at the epoch of the best mean
    validation accuracy (``selection = "best_val"``, the mean over the tasks' ``*_acc`` columns)."""

    round_unit = "epoch"
    selection = "best_val"

    def __init__(self, data: MultiMnist, epochs: int, batch_size: int, device: torch.device, seed: int,
                 width: float = 1.0, preset: str = "paper") -> None:
        super().__init__(device, seed)
        self.data, self.width, self.preset = data, width, preset
        self.name = "multimnist"
        self.tasks = MULTIMNIST_TASKS
        self.epochs = self.rounds = epochs
        self.batch_size = batch_size

    def build_model(self) -> MultiTaskModel:
        return MultiLeNet({t.name: t.n_classes for t in self.tasks}, width=self.width)

    def round_batches(self, round_index: int) -> Iterator[Batch]:
        return self.data.train_batches(round_index, self.batch_size)

    def meta_val_batch(self) -> Batch:
        return self.data.meta_val_batch(self.batch_size)

    def fresh_training_batch(self, items: str = "train") -> Batch:
        """For ``--meta-batches official`` (AvivSham/auxinash ``methods/auxinash/hyperstep.py`` ~27, ~42: the
        first batch of a freshly shuffled loader): ``batch_size`` distinct training pairs (``"train"``) or
        meta-validation pairs (``"meta"``: the held-out ones with ``--meta-val-size``, else the training pairs);
        no augmentation, as the training batches. Drawn with the data's meta generator (saved in
        ``state_dict``); the training stream's order is a function of (seed, epoch) alone, so it is untouched."""
        return self.data.fresh_batch(items, self.batch_size)

    def losses(self, model, batch):
        features = model.encode(batch["image"])
        losses = [t.loss(model.heads[t.name](features), batch[t.key]) for t in self.tasks]
        return torch.stack(losses), features

    def evaluate(self, model):
        return self.evaluate_heads(model, self.data, "image")

    def state_dict(self):
        return self.data.state_dict()

    def load_state_dict(self, state):
        self.data.load_state_dict(state)

    def describe(self):
        meta = self.data.meta
        return {"preset": self.preset, "data_source": self.data.source, "data_note": self.data.note,
                "synthetic_data": self.data.synthetic, "n_train": len(self.data.train["image"]),
                "n_val": len(self.data.val["image"]), "n_test": len(self.data.test["image"]),
                "pair_shift": meta["shift"], "pair_seed": meta["seed"], "epochs": self.epochs,
                "batch_size": self.batch_size, "steps_per_epoch": math.ceil(len(self.data.train_index) / self.batch_size)}
