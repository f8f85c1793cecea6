"""Benchmarks: what the shared loop trains on. Each one builds its model, streams its training batches
round by round (an epoch, or a block of iterations), draws meta-validation batches, computes the K task
losses of a batch and evaluates. The loop never asks which benchmark it runs.
"""
from __future__ import annotations

import itertools
import math
import os
from typing import Any, Dict, Iterator, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from data import CifarSSL, load_cityscapes, load_nyuv2, make_loader, meta_val_split, set_epoch
from data.cityscapes import detect_layout

from .models import CifarSSLNet, MultiTaskModel, SegNet, SharedLinear
from .tasks import Task

Batch = Dict[str, torch.Tensor]


def is_synthetic(root: str) -> bool:
    """Roots written by ``data.synthetic`` carry a SYNTHETIC marker."""
    return os.path.exists(os.path.join(root, "SYNTHETIC"))


class Benchmark:
    """Interface used by ``experiments.loop.train``."""

    name: str
    tasks: Tuple[Task, ...]
    rounds: int
    round_unit: str = "epoch"
    selection: str = "last"  # how make_tables picks a run's result: mean of the last evaluations, or best val

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = torch.device(device)
        self.seed = seed

    @property
    def task_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def build_model(self) -> MultiTaskModel:
        raise NotImplementedError

    def round_batches(self, round_index: int) -> Iterator[Batch]:
        raise NotImplementedError

    def meta_val_batch(self) -> Batch:
        raise NotImplementedError

    def losses(self, model: MultiTaskModel, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """The K task losses (in task order) and the shared representation they were computed from."""
        raise NotImplementedError

    def evaluate(self, model: MultiTaskModel) -> Dict[str, Dict[str, float]]:
        """split → metric column → value."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def describe(self) -> Dict[str, Any]:
        return {}


class DenseBenchmark(Benchmark):
    """NYUv2 / Cityscapes: SegNet on ``ROOT/{train,val}/<task>/{i}.npy`` datasets, one round per epoch."""

    def __init__(self, name: str, tasks: Sequence[Task], make_dataset, data_root: str, batch_size: int,
                 epochs: int, meta_val_size: float, device: torch.device, seed: int, width: float = 1.0,
                 augment: bool = True, num_workers: int = 0, eval_batch_size: int = 8) -> None:
        super().__init__(device, seed)
        self.name, self.tasks, self.rounds = name, tuple(tasks), epochs
        self.width, self.batch_size, self.data_root = width, batch_size, data_root
        self.meta_val_size = meta_val_size
        full = make_dataset(data_root, "train")
        train_idx, meta_idx = meta_val_split(len(full), meta_val_size, seed)
        self.train_set = make_dataset(data_root, "train", augment=augment, indices=train_idx, seed=seed)
        self.meta_set = make_dataset(data_root, "train", indices=meta_idx)
        self.test_set = make_dataset(data_root, "val")
        self.train_loader = make_loader(self.train_set, batch_size, True, seed, self.device, num_workers)
        self.test_loader = make_loader(self.test_set, eval_batch_size, False, seed, self.device, num_workers)
        self.generator = torch.Generator().manual_seed(seed + 1)

    def build_model(self) -> MultiTaskModel:
        return SegNet({t.name: t.channels for t in self.tasks}, self.width)

    def to_device(self, batch: Batch) -> Batch:
        batch = super().to_device(batch)
        if self.device.type == "cuda":
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def round_batches(self, round_index: int) -> Iterator[Batch]:
        set_epoch(self.train_loader, self.seed, round_index)
        return (self.to_device(batch) for batch in self.train_loader)

    def meta_val_batch(self) -> Batch:
        """A random batch of the meta-validation set (the training images themselves unless held out),
        un-augmented, drawn with the benchmark's own generator (saved with the checkpoint)."""
        picks = torch.randint(len(self.meta_set), (self.batch_size,), generator=self.generator).tolist()
        return self.to_device(default_collate([self.meta_set[i] for i in picks]))

    def losses(self, model, batch):
        features = model.encode(batch["image"])
        losses = torch.stack([t.loss(model.heads[t.name](features), batch[t.key]) for t in self.tasks])
        return losses, features

    @torch.no_grad()
    def evaluate(self, model):
        model.eval()
        accumulators = {t.name: t.accumulator() for t in self.tasks}
        for batch in self.test_loader:
            batch = self.to_device(batch)
            predictions = model(batch["image"])
            for t in self.tasks:
                accumulators[t.name].update(predictions[t.name].float(), batch[t.key])
        model.train()
        return {"test": {f"{name}_{k}": v for name, acc in accumulators.items() for k, v in acc.result().items()}}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])

    def describe(self):
        return {"data_root": os.path.abspath(self.data_root), "synthetic_data": is_synthetic(self.data_root),
                "train_items": len(self.train_set), "test_items": len(self.test_set),
                "meta_val": (f"held-out {len(self.meta_set)} training items (size {self.meta_val_size})"
                             if self.meta_val_size else "batches drawn from the training set itself")}


NYUV2_TASKS = (
    Task("seg", "segmentation", "segmentation", 13),
    Task("depth", "depth", "depth"),
    Task("normal", "normal", "normal"),
)
CITYSCAPES_TASKS = (
    Task("seg", "segmentation", "segmentation", 19),
    Task("part_seg", "part_segmentation", "segmentation", 10),
    Task("disp", "disparity", "disparity", table_metrics=("abs_err",)),
)


def nyuv2_benchmark(data_root: str, **kwargs) -> DenseBenchmark:
    return DenseBenchmark("nyuv2", NYUV2_TASKS, load_nyuv2, data_root, **kwargs)


def cityscapes_benchmark(data_root: str, mtan_classes: int = 19, **kwargs) -> DenseBenchmark:
    """The paper's task set from the prepared layout; segmentation + depth from the MTAN release."""
    if detect_layout(data_root) == "parts":
        return DenseBenchmark("cityscapes", CITYSCAPES_TASKS, load_cityscapes, data_root, **kwargs)
    tasks = (Task("seg", "segmentation", "segmentation", mtan_classes), Task("depth", "depth", "depth"))

    def make_dataset(root, split, **options):
        return load_cityscapes(root, split, mtan_classes=mtan_classes, **options)

    return DenseBenchmark(f"cityscapes_mtan{mtan_classes}", tasks, make_dataset, data_root, **kwargs)


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


class ToyBenchmark(Benchmark):
    """The paper's illustrative example (Figure 1): y = Wᵀx with two shared parameters and three tasks.

    The main task and a helpful auxiliary share the optimum W* = (1, 1); a harmful auxiliary has (−1, −4).
    Label noise: std 5 for the main task, 0.25 for the helpful auxiliary (the paper's values), and 0.25 for
    the harmful one (not stated in the paper; our choice). x ~ N(0, I₂) (not stated; our choice).
    1,000 training samples, batch 256; the main-task test loss is measured on 10,000 fresh samples.
    """

    round_unit = "epoch"

    def __init__(self, device: torch.device, seed: int, epochs: int = 1000, eval_every: int = 10,
                 n_train: int = 1000, batch_size: int = 256, noise: Sequence[float] = (5.0, 0.25, 0.25)) -> None:
        super().__init__(device, seed)
        self.name = "toy"
        self.tasks = (Task("main", "main", "regression"), Task("helpful", "helpful", "regression"),
                      Task("harmful", "harmful", "regression"))
        self.epochs, self.eval_every, self.batch_size = epochs, eval_every, batch_size
        self.rounds = math.ceil(epochs / eval_every)
        self.optima = {"main": (1.0, 1.0), "helpful": (1.0, 1.0), "harmful": (-1.0, -4.0)}
        rng = np.random.default_rng(seed)
        self.train = self._sample(rng, n_train, noise)
        self.test = self._sample(rng, 10_000, noise)
        self.generator = torch.Generator().manual_seed(seed + 1)

    def _sample(self, rng: np.random.Generator, n: int, noise: Sequence[float]) -> Batch:
        x = rng.normal(size=(n, 2))
        batch = {"x": torch.tensor(x, dtype=torch.float32)}
        for (name, optimum), std in zip(self.optima.items(), noise):
            batch[name] = torch.tensor(x @ np.array(optimum) + std * rng.normal(size=n), dtype=torch.float32)
        return self.to_device(batch)

    def build_model(self) -> MultiTaskModel:
        return SharedLinear({t.name: 1 for t in self.tasks})

    def round_batches(self, round_index: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + round_index)
        n = len(self.train["x"])
        for _ in range(min(self.eval_every, self.epochs - round_index * self.eval_every)):
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n, self.batch_size):
                picks = order[start:start + self.batch_size]
                yield {k: v[picks] for k, v in self.train.items()}

    def meta_val_batch(self) -> Batch:
        picks = torch.randint(len(self.train["x"]), (self.batch_size,), generator=self.generator).to(self.device)
        return {k: v[picks] for k, v in self.train.items()}

    def losses(self, model, batch):
        predictions = model(batch["x"])
        return torch.stack([t.loss(predictions[t.name], batch[t.key]) for t in self.tasks]), predictions["main"]

    @torch.no_grad()
    def evaluate(self, model):
        predictions = model(self.test["x"])
        row = {f"{t.name}_mse": F.mse_loss(predictions[t.name], self.test[t.key]).item() for t in self.tasks}
        row.update({"w1": model.weight[0].item(), "w2": model.weight[1].item()})
        return {"test": row}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
