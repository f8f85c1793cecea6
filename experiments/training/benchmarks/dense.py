"""NYUv2 and Cityscapes: SegNet on the dense-prediction datasets (the paper's Tables 1 and 2)."""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Sequence

import torch
from torch.utils.data import default_collate

from data import load_cityscapes, load_nyuv2, make_loader, meta_val_split, set_epoch
from data.cityscapes import conventions, detect_layout

from ..models import MultiTaskModel, SegNet
from ..tasks import Task
from .base import Batch, Benchmark, is_synthetic
from experiments.storage.results_io import metric_column


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
        self.make_dataset, self.augment = make_dataset, augment
        self.item_indices = {"train": train_idx, "meta": meta_idx}
        self.fresh_set = None  # the augmented training split for fresh_training_batch, made on first use
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

    def _fresh_set(self):
        if self.fresh_set is None:  # its own augmentation rng (saved), apart from the training stream's
            self.fresh_set = self.make_dataset(self.data_root, "train", augment=self.augment, seed=self.seed + 2)
        return self.fresh_set

    def fresh_training_batch(self, items: str = "train") -> Batch:
        """``batch_size`` distinct items of the training (or meta-validation) items, augmented as training
        batches are (the first batch of a freshly shuffled loader, as the official hyperstep's
        ``next(iter(train_loader))``), drawn with the benchmark's generator."""
        indices = self.item_indices[items]
        picks = torch.randperm(len(indices), generator=self.generator)[:self.batch_size].tolist()
        dataset = self._fresh_set()
        return self.to_device(default_collate([dataset[int(indices[i])] for i in picks]))

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
        return {"test": {metric_column(name, k): v for name, acc in accumulators.items()
                         for k, v in acc.result().items()}}

    def state_dict(self):
        state = {"generator": self.generator.get_state()}
        if self.fresh_set is not None:
            state["fresh_rng"] = self.fresh_set.rng.getstate()
        return state

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        if "fresh_rng" in state:
            self._fresh_set().rng.setstate(state["fresh_rng"])

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
CITYSCAPES_TASKS = (  # Auto-λ's (utils.py create_task_flags / compute_loss): part_seg 10 classes incl. background
    Task("seg", "segmentation", "segmentation", 19),
    Task("part_seg", "part_segmentation", "segmentation", 10),
    Task("disp", "disparity", "disparity", table_metrics=("abs_err",), invalid=-1.0),
)


def nyuv2_benchmark(data_root: str, **kwargs) -> DenseBenchmark:
    return DenseBenchmark("nyuv2", NYUV2_TASKS, load_nyuv2, data_root, **kwargs)


def cityscapes_benchmark(data_root: str, mtan_classes: int = 19, **kwargs) -> DenseBenchmark:
    """The paper's task set from the prepared layout; segmentation + depth from the MTAN release."""
    if detect_layout(data_root) == "parts":  # the disparity's invalid marker as the root was prepared
        invalid = conventions(data_root)["disparity_invalid"]
        tasks = tuple(dataclasses.replace(t, invalid=invalid) if t.kind == "disparity" else t
                      for t in CITYSCAPES_TASKS)
        return DenseBenchmark("cityscapes", tasks, load_cityscapes, data_root, **kwargs)
    tasks = (Task("seg", "segmentation", "segmentation", mtan_classes), Task("depth", "depth", "depth"))

    def make_dataset(root, split, **options):
        return load_cityscapes(root, split, mtan_classes=mtan_classes, **options)

    return DenseBenchmark(f"cityscapes_mtan{mtan_classes}", tasks, make_dataset, data_root, **kwargs)
