"""The paper's illustrative example (Figure 1): linear regression with a helpful and a harmful auxiliary."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models import MultiTaskModel, SharedLinear
from ..tasks import Task
from .base import Batch, Benchmark


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

    def fresh_training_batch(self, items: str = "train") -> Batch:
        """``batch_size`` distinct training samples (no augmentation here; the meta items are the training set)."""
        picks = torch.randperm(len(self.train["x"]), generator=self.generator)[:self.batch_size].to(self.device)
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
