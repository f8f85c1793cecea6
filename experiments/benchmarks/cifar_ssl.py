"""Semi-supervised CIFAR-10 (the ARML protocol, the paper's Table 4)."""
from __future__ import annotations

import itertools
import math
import os
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from data import CifarSSL

from ..models import CifarSSLNet, MultiTaskModel
from ..tasks import Task
from .base import Batch, Benchmark, is_synthetic


CIFAR_TASKS = {
    "classification": Task("cls", "label", "classification", 10),
    "rotation": Task("rot", "rotation", "classification", 4),
    "exemplar": Task("exemplar", "view", "exemplar"),
}

VIEW_OF_TASK = {"rot": "rotated", "exemplar": "view"}  # the batch entry each auxiliary feeds the trunk


class CifarSSLBenchmark(Benchmark):
    """Semi-supervised CIFAR-10 (ARML protocol): WRN-28-2, rounds of ``eval_every`` iterations, validation
    and test accuracy after each round; the table reports test accuracy at the best validation accuracy."""

    round_unit = "iteration"
    selection = "best_val"

    def __init__(self, data: CifarSSL, iterations: int, eval_every: int, labeled_batch: int, unlabeled_batch: int,
                 device: torch.device, seed: int, width: float = 1.0, data_root: str = "") -> None:
        super().__init__(device, seed)
        self.data, self.width, self.data_root = data, width, data_root
        n = data.n_labeled
        self.name = f"cifar10_ssl_{n // 1000}k" if n % 1000 == 0 else f"cifar10_ssl_{n}"
        self.tasks = tuple(CIFAR_TASKS[t] for t in data.tasks)
        self.iterations, self.eval_every = iterations, eval_every
        self.rounds = math.ceil(iterations / eval_every)
        self.labeled_batch, self.unlabeled_batch = labeled_batch, unlabeled_batch

    def build_model(self) -> MultiTaskModel:
        return CifarSSLNet(width=self.width)

    def round_batches(self, round_index: int) -> Iterator[Batch]:
        count = min(self.eval_every, self.iterations - round_index * self.eval_every)
        return itertools.islice(self.data.train_batches(self.labeled_batch, self.unlabeled_batch), count)

    def meta_val_batch(self) -> Batch:
        return next(self.data.meta_val_batches(self.labeled_batch))

    def losses(self, model, batch):
        # one trunk pass over the images, their rotated copies and their Exemplar-MT views
        views = ["image"] + [VIEW_OF_TASK[t.name] for t in self.tasks if t.name in VIEW_OF_TASK]
        features = model.encode(torch.cat([batch[v] for v in views]))
        chunks = dict(zip(views, features.split(len(batch["image"]))))
        losses = []
        for task in self.tasks:
            if task.name == "cls":
                losses.append(task.loss(model.heads["classification"](chunks["image"]), batch["label"]))
            elif task.name == "rot":
                losses.append(task.loss(model.heads["rotation"](chunks["rotated"]), batch["rotation"]))
            else:  # Exemplar-MT: pull the student's view features towards the EMA teacher's
                student = model.heads["exemplar"](chunks["view"]).float()
                teacher = model.teacher_features(batch["image"]).float()
                losses.append(1 - F.cosine_similarity(student, teacher, dim=1).mean())
        return torch.stack(losses), features

    @torch.no_grad()
    def evaluate(self, model):
        model.eval()
        results = {}
        for split in ("val", "test"):
            accuracy = self.tasks[0].accumulator()
            for batch in self.data.eval_batches(split):
                accuracy.update(model.heads["classification"](model.encode(batch["image"])).float(), batch["label"])
            results[split] = {f"cls_{k}": v for k, v in accuracy.result().items()}
        model.train()
        return results

    def state_dict(self):
        return self.data.state_dict()

    def load_state_dict(self, state):
        self.data.load_state_dict(state)

    def describe(self):
        s = self.data.splits
        return {"data_root": os.path.abspath(self.data_root), "synthetic_data": is_synthetic(self.data_root),
                "train": len(s.train), "val": len(s.val), "labeled": len(s.labeled),
                "meta_val": (f"held-out {len(s.meta_val)} labelled images" if not np.array_equal(s.meta_val, s.labeled)
                             else "batches drawn from the labelled training images themselves")}
