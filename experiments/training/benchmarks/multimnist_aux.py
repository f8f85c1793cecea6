"""Multi-MNIST in auxiliary mode (issue 23, part 2): does learned bargaining power find a harmful auxiliary?

The main task is ``left`` (the top-left digit); the auxiliaries, chosen by name, are

- ``right``: the bottom-right digit (the other task of Figure 2);
- ``noise``: a 10-way classification of labels drawn uniformly at random once per training pair, independent of
  its digits, seeded by the run's seed and fixed for the run (``noise_labels``); with ``noise_tasks`` = N > 1 it
  is N tasks ``noise1`` … ``noiseN``, each with its own head and its own labels (one task is named ``noise``);
- ``rotation``: self-supervised rotation prediction on the pair image, as the CIFAR-10 SSL benchmark
  (``cifar_ssl.py``, rotation="random"): each image of the batch is rotated by one random angle of
  {0°, 90°, 180°, 270°} (counter-clockwise, ``data.cifar.rotate_batch``), its own pass through the trunk, and a
  4-way head predicts the angle index. The angles are drawn per forward pass from the benchmark's own generator
  (saved in ``state_dict``, so ``--resume`` replays them).

Validation and test measure the main task only (``left_acc``); model selection: the test accuracy at the epoch of
the best validation accuracy (``selection = "best_val"``). Methods whose class says
``needs_auxiliary_losses = False`` (STL) skip the rotated pass; their auxiliary losses are then reported as 0.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch

from data.cifar import rotate_batch
from data.multimnist import MultiMnist

from ..tasks import Task
from .base import Batch
from .multimnist import MultiMnistBenchmark

MAIN_TASK = Task("left", "left", "classification", 10)
AUXILIARIES = ("right", "noise", "rotation")
ROTATION_SEED_OFFSET = 2_000_003  # the rotation angles' generator: seed + this (apart from the data's generators)
NOISE_SEED_TAG = 23  # noise labels of task k: numpy default_rng([seed, NOISE_SEED_TAG, k])


def noise_task_names(noise_tasks: int) -> Tuple[str, ...]:
    if noise_tasks < 1:
        raise ValueError(f"noise_tasks must be >= 1, got {noise_tasks}")
    return ("noise",) if noise_tasks == 1 else tuple(f"noise{k}" for k in range(1, noise_tasks + 1))


def auxiliary_tasks(auxiliaries: Sequence[str], noise_tasks: int = 1) -> Tuple[Task, ...]:
    """The tasks of a run: ``left`` first, then the auxiliaries in the order given (see the module doc)."""
    unknown = [a for a in auxiliaries if a not in AUXILIARIES]
    if unknown:
        raise ValueError(f"unknown auxiliaries {unknown}: choose from {AUXILIARIES} (or none)")
    if len(set(auxiliaries)) != len(auxiliaries):
        raise ValueError(f"an auxiliary is named twice in {list(auxiliaries)} (repeat noise with --noise-tasks)")
    tasks = [MAIN_TASK]
    for name in auxiliaries:
        if name == "right":
            tasks.append(Task("right", "right", "classification", 10))
        elif name == "noise":
            tasks += [Task(n, n, "classification", 10) for n in noise_task_names(noise_tasks)]
        else:
            tasks.append(Task("rotation", "rotation", "classification", 4))
    return tuple(tasks)


def auxiliary_set_label(auxiliaries: Sequence[str], noise_tasks: int = 1) -> str:
    """A folder-safe name of the auxiliary set: ``right``, ``noise``, ``noise3``, ``right-noise3-rotation``,
    ``none``."""
    parts = [("noise" if noise_tasks == 1 else f"noise{noise_tasks}") if a == "noise" else a for a in auxiliaries]
    return "-".join(parts) or "none"


def noise_labels(n: int, names: Sequence[str], seed: int) -> dict:
    """For each noise task, ``n`` labels uniform on 0..9 drawn once from its own seeded generator: fixed for a
    (seed, task) and independent of the images' digits (nothing of the pairs enters the draw)."""
    return {name: np.random.default_rng([seed, NOISE_SEED_TAG, k]).integers(10, size=n).astype(np.int64)
            for k, name in enumerate(names)}


class MultiMnistAuxBenchmark(MultiMnistBenchmark):
    """Multi-MNIST with main task ``left`` and the chosen auxiliaries (see the module doc)."""

    selection = "best_val"

    def __init__(self, data: MultiMnist, epochs: int, batch_size: int, device: torch.device, seed: int,
                 auxiliaries: Sequence[str] = AUXILIARIES, noise_tasks: int = 1, width: float = 1.0,
                 preset: str = "few", auxiliary_forward: bool = True) -> None:
        super().__init__(data, epochs=epochs, batch_size=batch_size, device=device, seed=seed, width=width,
                         preset=preset)
        self.name = "multimnist_aux"
        self.auxiliaries, self.noise_tasks = tuple(auxiliaries), int(noise_tasks)
        self.tasks = auxiliary_tasks(self.auxiliaries, self.noise_tasks)
        self.auxiliary_forward = auxiliary_forward
        self.noise_names = tuple(t.name for t in self.tasks if t.name.startswith("noise"))
        n = len(data.train["left"])  # every training pair (the validation pairs are apart and need none)
        for name, labels in noise_labels(n, self.noise_names, seed).items():
            data.train[name] = torch.from_numpy(labels).to(data.device)
        self.rotation_generator = torch.Generator().manual_seed(seed + ROTATION_SEED_OFFSET)

    def rotate(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Each image rotated by a random multiple of 90° (counter-clockwise) and the multiples (0..3)."""
        angles = torch.randint(0, 4, (len(images),), generator=self.rotation_generator).to(images.device)
        return rotate_batch(images, angles), angles

    def losses(self, model, batch: Batch):
        features = model.encode(batch["image"])
        losses = []
        for task in self.tasks:
            if task.name != "rotation":
                losses.append(task.loss(model.heads[task.name](features), batch[task.key]))
            elif not self.auxiliary_forward:
                losses.append(torch.zeros((), device=features.device))
            else:
                rotated, angles = self.rotate(batch["image"])
                losses.append(task.loss(model.heads["rotation"](model.encode(rotated)), angles))
        return torch.stack(losses), features

    def evaluate(self, model):
        return self.evaluate_one_head(model, self.data, MAIN_TASK, "left")

    def state_dict(self):
        return {**self.data.state_dict(), "rotation_generator": self.rotation_generator.get_state()}

    def load_state_dict(self, state):
        self.data.load_state_dict(state)
        self.rotation_generator.set_state(state["rotation_generator"])

    def describe(self):
        return {**super().describe(), "auxiliaries": list(self.auxiliaries), "noise_tasks": self.noise_tasks,
                "auxiliary_set": auxiliary_set_label(self.auxiliaries, self.noise_tasks),
                "auxiliary_forward": self.auxiliary_forward, "main_task_fixed": "left"}
