"""Semi-supervised CIFAR-10 (the ARML protocol, the paper's Table 4).

With the default ``pipeline="arml"`` the losses are formed as ARML's ``SSL/train.py`` and ``SSL/lib/algs/s4l.py``
form them, each forward pass of the student drawing its own ARML augmentation (``data.cifar.arml_augment``,
ARML's ``transform`` inside ``WRN.forward``):

- classification: cross-entropy of the labelled images (−1 ignored) from one pass over the labelled and
  unlabelled images (``train.py`` 164–177; ARML divides by the whole batch, we by the labelled images);
- rotation: its own pass over the rotated images, cross-entropy against the angle index; ``rotation="random"``
  (default, the paper's text) rotates each image by one random angle of {0°, 90°, 180°, 270°},
  ``rotation="all4"`` feeds all four rotations of every image (``s4l.py`` ``rotate_loss``, 19–27);
- Exemplar-MT: 1 − mean cosine between the student's pooled features of ``student_view(x)`` (its own pass,
  with the BatchNorm running statistics frozen, ``s4l.py`` 118–124) and the EMA teacher's features of x
  (ARML: −mean cosine; the constant 1 keeps the loss ≥ 0 and changes no gradient).

``auxiliary_forward=False`` (set for methods whose class says ``needs_auxiliary_losses = False``, i.e. STL):
only the labelled images are forwarded, so that the auxiliaries' images neither share the main task's BN
batch nor move the BN running statistics (ARML's ``--alg supervised``); the auxiliary losses are then reported
as 0. ``pipeline="legacy"``: the earlier single pass over [images; rotated; views] prepared by the data
(``data.cifar``, legacy pipeline).
"""
from __future__ import annotations

import itertools
import math
import os
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from data import CifarSSL
from data.cifar import arml_augment, rotate_all, rotate_batch, student_view

from ..models import CifarSSLNet, MultiTaskModel, batch_stats_frozen
from ..tasks import Task
from .base import Batch, Benchmark, is_synthetic


CIFAR_TASKS = {
    "classification": Task("cls", "label", "classification", 10),
    "rotation": Task("rot", "rotation", "classification", 4),
    "exemplar": Task("exemplar", "view", "exemplar"),
}

VIEW_OF_TASK = {"rot": "rotated", "exemplar": "view"}  # legacy pipeline: the batch entry each auxiliary feeds
ROTATIONS = ("random", "all4")
FRESH_SEED_OFFSET = 1_000_003  # the fresh-batch generator's seed is seed + this (apart from the data's, seeded seed)


class CifarSSLBenchmark(Benchmark):
    """Semi-supervised CIFAR-10 (ARML protocol): WRN-28-2, rounds of ``eval_every`` iterations, validation
    and test accuracy after each round; the table reports test accuracy at the best validation accuracy."""

    round_unit = "iteration"
    selection = "best_val"

    def __init__(self, data: CifarSSL, iterations: int, eval_every: int, labeled_batch: int, unlabeled_batch: int,
                 device: torch.device, seed: int, width: float = 1.0, data_root: str = "",
                 rotation: str = "random", auxiliary_forward: bool = True) -> None:
        super().__init__(device, seed)
        if rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
        if data.pipeline == "legacy" and rotation != "random":
            raise ValueError("the legacy pipeline rotates each image by one random angle; rotation='all4' needs "
                             "the ARML pipeline")
        self.pipeline, self.rotation, self.auxiliary_forward = data.pipeline, rotation, auxiliary_forward
        self.data, self.width, self.data_root = data, width, data_root
        n = data.n_labeled
        self.name = f"cifar10_ssl_{n // 1000}k" if n % 1000 == 0 else f"cifar10_ssl_{n}"
        self.tasks = tuple(CIFAR_TASKS[t] for t in data.tasks)
        self.iterations, self.eval_every = iterations, eval_every
        self.rounds = math.ceil(iterations / eval_every)
        self.labeled_batch, self.unlabeled_batch = labeled_batch, unlabeled_batch
        # draws the --meta-batches official batches; its own, so that the training stream (data.generator) is untouched
        self.fresh_generator = torch.Generator(device=data.device).manual_seed(seed + FRESH_SEED_OFFSET)

    def build_model(self) -> MultiTaskModel:
        return CifarSSLNet(width=self.width, pipeline=self.pipeline)

    def round_batches(self, round_index: int) -> Iterator[Batch]:
        count = min(self.eval_every, self.iterations - round_index * self.eval_every)
        return itertools.islice(self.data.train_batches(self.labeled_batch, self.unlabeled_batch), count)

    def meta_val_batch(self) -> Batch:
        return next(self.data.meta_val_batches(self.labeled_batch))

    def epoch_steps(self) -> int:
        """ARML's training is a stream of iterations (images drawn with replacement) without epochs, and a round is
        an ``eval_every`` block of it. Our declaration of an epoch, for the methods' ``end_of_epoch`` hook: as many
        iterations as draw the train split's number of images into the unlabelled parts (the labelled subset's,
        when there are no unlabelled parts), ⌈images / images per iteration⌉."""
        if self.unlabeled_batch:
            return math.ceil(len(self.data.splits.train) / self.unlabeled_batch)
        return math.ceil(len(self.data.splits.labeled) / self.labeled_batch)

    def fresh_training_batch(self, items: str = "train") -> Batch:
        """For ``--meta-batches official`` (AvivSham/auxinash ``methods/auxinash/hyperstep.py`` ~27, ~42:
        ``next(iter(loader))``, the first batch of a freshly shuffled loader): ``"train"``, a new batch shaped as
        ``round_batches``' (``labeled_batch`` distinct labelled + ``unlabeled_batch`` distinct train-split images,
        label −1 on the unlabelled part); ``"meta"``, ``labeled_batch`` distinct labelled meta-validation images
        (the held-out ones with ``--meta-val-size``). Drawn with the benchmark's own ``fresh_generator`` (saved in
        ``state_dict``), never the data's, so the training batches stay those of the same run without it. As the
        training batches: with the ARML pipeline un-augmented here, augmented in each forward pass (``losses``,
        with the data's generator, as every forward pass); with the legacy pipeline augmented here (with
        ``fresh_generator``), with its rotated copies and Exemplar-MT views."""
        return self.data.fresh_batch(items, self.fresh_generator, self.labeled_batch, self.unlabeled_batch)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """One ARML training augmentation (per forward pass), drawn from the data's generator."""
        return arml_augment(images, self.data.generator)

    def losses(self, model, batch):
        if self.pipeline == "legacy":
            return self.legacy_losses(model, batch)
        images, labels = batch["image"], batch["label"]
        names = [t.name for t in self.tasks]
        if not self.auxiliary_forward:  # STL: the labelled images only, nothing else through the trunk
            labeled = labels >= 0
            features = model.encode(self.augment(images[labeled]))
            main = self.tasks[0].loss(model.heads["classification"](features), labels[labeled])
            return torch.stack([main] + [torch.zeros_like(main) for _ in names[1:]]), features
        features = model.encode(self.augment(images))
        losses = [self.tasks[0].loss(model.heads["classification"](features), labels)]
        for task in self.tasks[1:]:
            if task.name == "rot":
                if self.rotation == "all4":
                    rotated, angles = rotate_all(images)
                else:
                    angles = torch.randint(0, 4, (len(images),), generator=self.data.generator, device=images.device)
                    rotated = rotate_batch(images, angles)
                logits = model.heads["rotation"](model.encode(self.augment(rotated)))
                losses.append(task.loss(logits, angles))
            else:  # Exemplar-MT: the teacher sees x, the student its RandomAug view with BN statistics frozen
                teacher = model.teacher_features(self.augment(images)).float()
                view = self.augment(student_view(images, self.data.generator))
                with batch_stats_frozen(model.trunk):
                    student = model.student_exemplar_features(model.encode(view)).float()
                losses.append(1 - F.cosine_similarity(student, teacher, dim=1).mean())
        return torch.stack(losses), features

    def legacy_losses(self, model, batch):
        """The earlier form: one trunk pass over the images, their rotated copies and their Exemplar-MT views."""
        if not self.auxiliary_forward:  # STL: the labelled images only
            labeled = batch["label"] >= 0
            batch = {"image": batch["image"][labeled], "label": batch["label"][labeled]}
        views = ["image"] + [VIEW_OF_TASK[t.name] for t in self.tasks if t.name in VIEW_OF_TASK]
        if not self.auxiliary_forward:
            views = ["image"]
        features = model.encode(torch.cat([batch[v] for v in views]))
        chunks = dict(zip(views, features.split(len(batch["image"]))))
        losses = []
        for task in self.tasks:
            if task.name == "cls":
                losses.append(task.loss(model.heads["classification"](chunks["image"]), batch["label"]))
            elif not self.auxiliary_forward:
                losses.append(torch.zeros_like(losses[0]))
            elif task.name == "rot":
                losses.append(task.loss(model.heads["rotation"](chunks["rotated"]), batch["rotation"]))
            else:  # Exemplar-MT: pull the student's view features towards the EMA teacher's
                student = model.student_exemplar_features(chunks["view"]).float()
                teacher = model.teacher_features(batch["image"]).float()
                losses.append(1 - F.cosine_similarity(student, teacher, dim=1).mean())
        return torch.stack(losses), features

    def evaluate(self, model):
        return self.evaluate_one_head(model, self.data, self.tasks[0], "classification")

    def state_dict(self):
        return {**self.data.state_dict(), "fresh_generator": self.fresh_generator.get_state()}

    def load_state_dict(self, state):
        self.data.load_state_dict(state)
        if "fresh_generator" in state:  # checkpoints written before it existed never drew with it
            self.fresh_generator.set_state(state["fresh_generator"])

    def describe(self):
        s = self.data.splits
        return {"data_root": os.path.abspath(self.data_root), "synthetic_data": is_synthetic(self.data_root),
                "cifar_pipeline": self.pipeline, "rotation": self.rotation,
                "auxiliary_forward": self.auxiliary_forward,
                "train": len(s.train), "val": len(s.val), "labeled": len(s.labeled),
                "meta_val": (f"held-out {len(s.meta_val)} labelled images" if not np.array_equal(s.meta_val, s.labeled)
                             else "batches drawn from the labelled training images themselves")}
